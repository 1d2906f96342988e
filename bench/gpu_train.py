"""GPU training figures for a ~1B-parameter Llama through the real jobs.train path.

Why: the planner (launcher.estimate) promises per-GPU memory and assumes an MFU per method; this
measures both on the machine at hand. A random-init Llama with TinyLlama-1.1B's shape (no Hub
access) is trained for --steps optimizer steps on random tokens (rows of seq_len, packed layout)
with each recipe: full fine-tune with DeepSpeed ZeRO-2 and ZeRO-3 (torchrun, one process per
visible GPU), LoRA and QLoRA (one GPU). Printed per recipe: real tokens/s per GPU (median over
steps after the first three), peak memory (torch.cuda.max_memory_allocated, max over ranks; the
CUDA context is not in it) beside launcher.estimate.memory()'s per-GPU estimate for the same
recipe, and MFU = k·N·tokens/s per GPU / peak dense bf16 FLOP/s (launcher/data/gpus.yaml), with
N the parameter count and k = 6, or 8 with gradient checkpointing (the recompute forward) — the
same k for LoRA/QLoRA, whose skipped weight gradients make it an upper bound there.

    python bench/gpu_train.py                 # all four recipes within --time-limit (420 s) plus the model build
    python bench/gpu_train.py --dry-run       # recipes, estimates and commands only (no GPU needed)
    python bench/gpu_train.py --methods lora,qlora --steps 20 --seq-len 1024

Exits 2 with "needs a CUDA GPU" on a machine without one (unless --dry-run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METHODS = ("full-zero2", "full-zero3", "lora", "qlora")
# TinyLlama-1.1B's shape (config.json of TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T).
LLAMA_1B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632,
    "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "hidden_act": "silu",
    "bos_token_id": 1, "eos_token_id": 2, "rope_theta": 10000.0,
}
# Llama-3.1-8B's shape (config.json of meta-llama/Llama-3.1-8B), for bench/gpu_check.py.
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "hidden_act": "silu",
    "bos_token_id": 1, "eos_token_id": 2, "rope_theta": 500000.0,
}
SHAPES = {"1b": LLAMA_1B, "8b": LLAMA3_8B}
# torch.cuda.get_device_name() fragments → launcher/data/gpus.yaml keys (first match wins).
GPU_NAMES = (("GH200", "GH200"), ("H200", "H200"), ("H100 PCIe", "H100-PCIe"), ("H100", "H100-SXM"),
             ("A100-SXM4-80GB", "A100-80GB"), ("A100 80GB", "A100-80GB"), ("A100", "A100"), ("L40S", "L40S"),
             ("L4", "L4"), ("A10G", "A10G"), ("RTX 4090", "RTX4090"), ("A6000", "A6000"), ("A40", "A40"),
             ("T4", "T4"))
H100_PCIE_TFLOPS = 756  # gpus.yaml's figure for the PCIe card (tflops_by_cloud)


def recipe_dict(method: str, model_dir: Path, steps: int, micro: int, seq_len: int, gpus: int,
                checkpoint_minutes: float | None = None) -> dict:
    """The recipe one benchmark run trains (a plain sftlaunch recipe)."""
    from sftcore.recipe import WEEK_MINUTES

    base = method.split("-")[0]
    train = {"max_steps": steps, "micro_batch_size": micro, "grad_accum": 1, "learning_rate": 1e-4,
             "scheduler": "constant", "warmup_ratio": 0.0, "precision": "bf16", "gradient_checkpointing": True,
             "optimizer": "paged_adamw_32bit" if base == "qlora" else "adamw_torch", "checkpoint_minutes": checkpoint_minutes or WEEK_MINUTES,
             "keep_checkpoints": 1, "seed": 0}
    if base == "full":
        train["deepspeed"] = method.split("-")[1]
    d = {"name": f"bench-{method}", "model": {"id": str(model_dir)}, "method": base,
         "data": {"sources": [{"path": "bench/random-tokens", "format": "text"}], "template": "plain",
                  "seq_len": seq_len, "packing": True, "loss": "all", "eval_fraction": 0.0},
         "train": train, "resources": {"clouds": ["local"]}, "eval": None}
    if base in ("lora", "qlora"):
        d["lora"] = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
    if base == "qlora":
        d["quantization"] = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    return d


def gpus_for(method: str, visible: int) -> int:
    return visible if method.startswith("full") else 1


def estimate(recipe: dict, gpus: int) -> tuple[float, float]:
    """(per-GPU memory estimate in GB, parameters) from launcher.estimate for this recipe."""
    from launcher import catalog
    from launcher.estimate import memory as est
    from sftcore.recipe import recipe_from_dict

    r = recipe_from_dict(recipe)
    shape = catalog.model_shape(r.model.id)
    return est.memory(r, gpus=gpus).total, shape["params_b"] * 1e9


def gpu_spec(device_name: str) -> tuple[str, float]:
    """(catalog key, peak dense bf16 TFLOPs) of this GPU."""
    from launcher import catalog

    for fragment, key in GPU_NAMES:
        if fragment.lower() in device_name.lower():
            if key == "H100-PCIe":
                return "H100", float(H100_PCIE_TFLOPS)
            return key, catalog.gpu_tflops(key)
    raise SystemExit(f"error: GPU {device_name!r} is not in launcher/data/gpus.yaml; pass --gpu NAME")


def write_model(model_dir: Path, random_init: bool, shape: dict = LLAMA_1B) -> None:
    """config.json (all the estimate needs) and, for a real run, random-init bf16 weights and a
    small word-level tokenizer (ids only matter for pad/eos)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(shape, indent=1))
    if not random_init:
        return
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>"] + [f"w{i}" for i in range(96)])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>").save_pretrained(model_dir)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # an 8B model in fp32 would take 32 GB before the cast
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in shape.items()
                                                     if k not in ("architectures", "model_type")}))
    finally:
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(model_dir)
    del model
    torch.cuda.empty_cache()


def random_rows(n: int, seq_len: int, vocab: int, seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(4, vocab) for _ in range(seq_len)]
        rows.append({"input_ids": ids, "labels": [-100] + ids[1:], "position_ids": list(range(seq_len))})
    return rows


# -- worker: one recipe, inside torchrun or a plain process --------------------------------------
def worker(a: argparse.Namespace) -> int:
    import torch

    from jobs.train import train
    from sftcore.recipe import recipe_from_dict

    recipe = recipe_from_dict(json.loads(Path(a.recipe_json).read_text()))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    vocab = json.loads((Path(a.model_dir) / "config.json").read_text())["vocab_size"]
    rows = random_rows(recipe.train.max_steps * recipe.train.micro_batch_size * world + world,
                       recipe.data.seq_len, vocab)
    out = Path(a.out)
    saves = _time_checkpoints()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rc = train(recipe, out, run_id=None, datasets=(rows, []), model_path=a.model_dir)
    wall = time.perf_counter() - t0
    peak = torch.tensor([torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()], device="cuda")
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if int(os.environ.get("RANK", "0")) == 0:
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rates = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m]
        steady = rates[3:] or rates
        Path(a.result).write_text(json.dumps({
            "rc": rc, "world": world, "tokens_per_s": statistics.median(steady) if steady else None,
            "peak_bytes": int(peak[0].item()), "reserved_bytes": int(peak[1].item()), "train_wall_s": round(wall, 1),
            "steps": len(rates), "checkpoint_s": [round(x, 2) for x in saves],
            "final_mb": round(sum(f.stat().st_size for f in (out / "final").rglob("*") if f.is_file()) / 1e6, 1)}))
    return rc


def _time_checkpoints() -> list[float]:
    """Wall seconds of each Trainer checkpoint save (the model/adapter, optimizer and RNG state that
    jobs.callbacks then finalizes): the Trainer's own _save_checkpoint, timed in place."""
    from transformers import Trainer

    seconds: list[float] = []
    original = Trainer._save_checkpoint

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - t0)

    Trainer._save_checkpoint = timed
    return seconds


# -- parent ---------------------------------------------------------------------------------------
def command(method: str, gpus: int, recipe_json: Path, model_dir: Path, out: Path, result: Path) -> list[str]:
    job = [str(Path(__file__).resolve()), "--worker", "--recipe-json", str(recipe_json), "--model-dir",
           str(model_dir), "--out", str(out), "--result", str(result)]
    if method.startswith("full"):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus), *job]
    return [sys.executable, *job]


def run_one(cmd: list[str], gpus: int, timeout_s: float) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    env.pop("WANDB_API_KEY", None)
    if gpus == 1:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout_s)
        return proc.returncode, log
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers
        log, _ = proc.communicate()
        return 124, log


def plan_runs(a: argparse.Namespace, model_dir: Path, visible: int) -> list[dict]:
    runs = []
    for method in a.methods:
        gpus = gpus_for(method, visible)
        recipe = recipe_dict(method, model_dir, a.steps, a.micro, a.seq_len, gpus, a.checkpoint_minutes)
        est_gb, params = estimate(recipe, gpus)
        runs.append({"method": method, "gpus": gpus, "recipe": recipe, "estimate_gb": est_gb, "params": params,
                     "flops_per_token": planner_flops_per_token(recipe)})
    return runs


def mfu(tokens_per_s_per_gpu: float, params: float, checkpointing: bool, tflops: float) -> float:
    return (8 if checkpointing else 6) * params * tokens_per_s_per_gpu / (tflops * 1e12)


def planner_flops_per_token(recipe: dict) -> float | None:
    """FLOPs per trained token as launcher.estimate.timing counts them for this recipe (method,
    checkpointing, attention at seq_len): the MFU the bench prints is the planner's own measure."""
    import importlib

    from sftcore.recipe import recipe_from_dict

    timing = importlib.import_module("launcher.estimate.timing")
    return timing.timing(recipe_from_dict(recipe), "runpod", "H100-SXM", 1).terms["flops_per_token"]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--micro", type=int, default=8, help="micro batch size per GPU")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--shape", choices=sorted(SHAPES), default="1b",
                   help="model shape: 1b (TinyLlama-1.1B) or 8b (Llama-3.1-8B, vocab 128256); random weights")
    p.add_argument("--checkpoint-minutes", type=float, default=None,
                   help="checkpoint every N minutes during the run, to time saves (default: none)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs for the full fine-tunes (default: all visible)")
    p.add_argument("--gpu", default=None, help="catalog GPU name for peak TFLOPs (default: detected; dry run: H100-SXM)")
    p.add_argument("--time-limit", type=float, default=420,
                   help="seconds for all recipes together; a recipe still running then is stopped (default 420)")
    p.add_argument("--dry-run", action="store_true", help="print recipes, estimates and commands; needs no GPU")
    p.add_argument("--keep", default=None, help="keep the model and run dirs here (default: a temp dir, removed)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--recipe-json", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in a.methods if m not in METHODS]
    if bad:
        p.error(f"--methods: unknown {', '.join(bad)}; choose from {', '.join(METHODS)}")
    for name in ("steps", "micro", "seq_len"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.worker:
        return worker(a)
    cuda = False
    if not a.dry_run:
        try:
            import torch

            cuda = torch.cuda.is_available()
        except ImportError:
            cuda = False
        if not cuda:
            print("error: bench/gpu_train.py needs a CUDA GPU (none is visible); --dry-run prints the recipes "
                  "and estimates without one", file=sys.stderr)
            return 2
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="sftlaunch-gpu-bench-"))
    model_dir = work / f"llama-{a.shape}-random"
    try:
        write_model(model_dir, random_init=not a.dry_run, shape=SHAPES[a.shape])
        if a.dry_run:
            from launcher import catalog

            gpu, tflops = (a.gpu or "H100-SXM"), catalog.gpu_tflops(a.gpu or "H100-SXM")
            visible = a.gpus or 1
        else:
            import torch

            visible = a.gpus or torch.cuda.device_count()
            gpu, tflops = (a.gpu, 0.0) if a.gpu else gpu_spec(torch.cuda.get_device_name(0))
            if a.gpu:
                from launcher import catalog

                tflops = catalog.gpu_tflops(a.gpu)
        runs = plan_runs(a, model_dir, visible)
        name = "TinyLlama-1.1B" if a.shape == "1b" else "Llama-3.1-8B"
        print(f"random-init Llama ({runs[0]['params'] / 1e9:.2f}B params, {name} shape), "
              f"{a.steps} steps, micro {a.micro} x seq_len {a.seq_len}, bf16, gradient checkpointing; "
              f"{gpu} ({tflops:.0f} bf16 TFLOPs peak)")
        return dry_run(runs, work) if a.dry_run else measure(runs, work, model_dir, tflops, a.time_limit)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


def dry_run(runs: list[dict], work: Path) -> int:
    for r in runs:
        t = r["recipe"]["train"]
        print(f"\n{r['method']}: method {r['recipe']['method']}, deepspeed {t.get('deepspeed')}, {r['gpus']} GPU(s), "
              f"optimizer {t['optimizer']}, estimate {r['estimate_gb']:.1f} GB/GPU")
        print("  " + " ".join(command(r["method"], r["gpus"], work / f"{r['method']}.json", Path(r["recipe"]["model"]["id"]),
                                     work / r["method"], work / f"{r['method']}.result.json")))
    return 0


def measure(runs: list[dict], work: Path, model_dir: Path, tflops: float, time_limit: float) -> int:
    deadline = time.monotonic() + time_limit
    rows, failed = [], 0
    for r in runs:
        left = deadline - time.monotonic()
        if left < 30:
            rows.append((r, None, "skipped: --time-limit reached"))
            failed += 1
            continue
        recipe_json, out, result = work / f"{r['method']}.json", work / r["method"], work / f"{r['method']}.result.json"
        recipe_json.write_text(json.dumps(r["recipe"]))
        cmd = command(r["method"], r["gpus"], recipe_json, model_dir, out, result)
        t0 = time.monotonic()
        code, log = run_one(cmd, r["gpus"], left)
        wall = time.monotonic() - t0
        if code != 0 or not result.is_file():
            failed += 1
            rows.append((r, None, f"failed (exit {code}): " + " | ".join(log.strip().splitlines()[-3:])[-300:]))
        else:
            res = json.loads(result.read_text())
            res["wall_s"] = round(wall, 1)
            rows.append((r, res, None))
        shutil.rmtree(out, ignore_errors=True)  # checkpoints of a 1B full fine-tune are ~16 GB
    print(f"\n{'recipe':<11} {'GPUs':>4} {'tokens/s/GPU':>12} {'peak GB':>8} {'resv GB':>8} {'est GB':>7} "
          f"{'MFU':>6} {'ckpt s':>7} {'final MB':>9} {'wall s':>7}")
    for r, res, note in rows:
        if res is None:
            print(f"{r['method']:<11} {r['gpus']:>4} {note}")
            continue
        per_gpu = res["tokens_per_s"] / res["world"]
        fpt = r.get("flops_per_token") or 8 * r["params"]
        saves = res.get("checkpoint_s") or []
        ckpt = f"{max(saves):.1f}" if saves else "-"
        print(f"{r['method']:<11} {r['gpus']:>4} {per_gpu:>12.0f} {res['peak_bytes'] / 1e9:>8.1f} "
              f"{res.get('reserved_bytes', 0) / 1e9:>8.1f} {r['estimate_gb']:>7.1f} "
              f"{fpt * per_gpu / (tflops * 1e12):>6.1%} {ckpt:>7} {res.get('final_mb', 0):>9.1f} {res['wall_s']:>7.1f}")
    print("peak GB: torch.cuda.max_memory_allocated, resv GB: max_memory_reserved (max over ranks); est GB: "
          "launcher.estimate.memory().total (includes ~1.5 GB CUDA context); MFU: the planner's FLOPs per token "
          "(launcher.estimate.timing) x tokens/s per GPU / peak; ckpt s: slowest Trainer checkpoint save; "
          "final MB: DIR/final (adapter or model + tokenizer)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
