"""What serving costs: $/h of a replica and $ per 1M output tokens at a stated load.

Why a roofline and not a benchmark table: decoding is bound by memory bandwidth at the loads a
fine-tune sees (each step reads every weight once, plus each sequence's KV cache), and the
bandwidth of every GPU is published by its maker, while measured vLLM tokens/s exist only for a
few model x GPU pairs. So: step time = (weights + concurrency x context x KV bytes/token) /
(GPUs x datasheet bandwidth x ACHIEVED), capped by compute (2 x params FLOPs per token at
COMPUTE_MFU of the datasheet bf16 TFLOP/s in launcher/data/gpus.yaml); tokens/s = concurrency /
step time. ACHIEVED is an assumption, stated as one wherever the figure is shown, not a
measurement: it is the share of peak bandwidth a tuned decode kernel reaches (vLLM's paged
attention and cuBLAS GEMV reach 60-80% on A100/H100 in NVIDIA's and vLLM's own profiles; 0.6 is
the low end, so the $/1M figure errs high).

Bandwidth (GB/s), from each GPU's NVIDIA datasheet: H100 SXM 3,350; H100 PCIe 2,000; H100 NVL
3,900; H200 4,800; B200 8,000; GH200 (96 GB HBM3) 4,000; A100 80GB SXM 2,039; A100 40GB 1,555;
L40S 864; L40 864; L4 300; A10 600; RTX A6000 768; A40 696; RTX 4090 1,008; RTX 5090 1,792;
RTX A5000 768; RTX PRO 6000 Blackwell 1,792; V100 SXM2 900; Quadro RTX 6000 672; T4 320.
"""

from __future__ import annotations

from dataclasses import dataclass

BANDWIDTH_GBPS = {
    "H100": 2000, "H100-SXM": 3350, "H100-NVL": 3900, "H200": 4800, "H200-SXM": 4800, "B200": 8000,
    "GH200": 4000, "A100": 1555, "A100-80GB": 2039, "A100-80GB-SXM": 2039, "L40S": 864, "L40": 864, "L4": 300,
    "A10": 600, "A10G": 600, "A6000": 768, "RTXA6000": 768, "A40": 696, "RTX4090": 1008, "RTX5090": 1792,
    "RTXA5000": 768, "RTXPRO6000": 1792, "V100": 900, "RTX6000": 672, "T4": 320,
}
ACHIEVED = 0.6  # assumed share of datasheet bandwidth a decode step reaches (see the docstring)
COMPUTE_MFU = 0.5  # assumed share of datasheet bf16 TFLOP/s when compute binds
CONCURRENCY = 16  # the stated load: sequences decoding at once on one replica
CONTEXT_TOKENS = 1024  # their mean context (prompt + output so far) while decoding


@dataclass
class ServeCost:
    usd_per_hour: float
    tokens_per_s: float  # output tokens/s of one replica at the stated load (estimate)
    usd_per_million: float
    load: str  # the stated load, in words
    assumption: str

    def as_dict(self) -> dict:
        return {"usd_per_hour": self.usd_per_hour, "output_tokens_per_s": self.tokens_per_s,
                "usd_per_1m_output_tokens": self.usd_per_million, "load": self.load, "assumption": self.assumption}


def decode_tokens_per_s(gpu: str, gpus: int, weights_gb: float, kv_bytes_per_token: float,
                        concurrency: int = CONCURRENCY, context: int = CONTEXT_TOKENS) -> float | None:
    """Output tokens/s of one replica at the load; None for a GPU without a datasheet figure here."""
    bw = BANDWIDTH_GBPS.get(gpu)
    if bw is None:
        return None
    read_bytes = weights_gb * 1e9 + concurrency * context * kv_bytes_per_token
    step_s = read_bytes / (gpus * bw * 1e9 * ACHIEVED)
    from launcher import catalog

    try:
        tflops = catalog.gpu_tflops(gpu)
    except KeyError:
        tflops = None
    if tflops:
        params = weights_gb * 1e9 / 2
        step_s = max(step_s, 2 * params * concurrency / (gpus * tflops * 1e12 * COMPUTE_MFU))
    return concurrency / step_s


def serve_cost(gpu: str, gpus: int, usd_per_hour: float, weights_gb: float, kv_bytes_per_token: float,
               concurrency: int = CONCURRENCY, context: int = CONTEXT_TOKENS) -> ServeCost:
    tps = decode_tokens_per_s(gpu, gpus, weights_gb, kv_bytes_per_token, concurrency, context)
    per_m = usd_per_hour / (tps * 3600) * 1e6 if tps else float("nan")
    return ServeCost(usd_per_hour, tps or float("nan"), per_m,
                     f"{concurrency} concurrent sequences, {context}-token mean context, replica busy",
                     f"estimate: {int(ACHIEVED * 100)}% of {gpu}'s datasheet memory bandwidth "
                     f"({BANDWIDTH_GBPS.get(gpu, '?')} GB/s), not a measurement")
