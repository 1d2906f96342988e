"""The plan's eval time uses the lm-eval backend that will run (sftcore.eval_backend's rule), and
vLLM's decode rate is the published figure it cites (launcher/data/workloads.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher import catalog
from launcher.cli import cli
from launcher.estimate.memory import _shape
from launcher.estimate.timing import eval_backend, eval_workload, timing
from sftcore.recipe import load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[2]
QLORA_8B = REPO / "recipes" / "llama3.1-8b-qlora.yaml"  # eval: leaderboard-v2, lora r 16


def _with_eval(path: Path, **ev):
    r = load_recipe(path)
    data = r.resolved_dict()
    data["eval"] = {**data["eval"], **ev}
    return recipe_from_dict(data)


def test_vllm_decode_mfu_is_the_published_throughput():
    # Lambda's vLLM benchmark report (github.com/LambdaLabsML/vllm-benchmark, benchmark_v0.md,
    # "vLLM v0.5.4 v.s. v0.6.0"): Llama 3.1 8B, tp=1, 5,000 prompts, max-num-seqs 256, vLLM v0.6.0
    # with 10 scheduler steps: 8,088.35 output tokens/s; read against an H100 SXM's 989 TFLOP/s.
    n = _shape(load_recipe(QLORA_8B))["params_b"] * 1e9
    assert n == pytest.approx(8.03e9, rel=0.01)  # Llama 3.1 8B
    mfu = 8088.35 * 2 * n / (catalog.gpu_tflops("H100-SXM") * 1e12)
    assert catalog.workloads()["mfu"]["eval_decode_vllm"] == pytest.approx(mfu, abs=0.005)


def test_auto_prices_vllm_on_a_gpu_and_hf_where_vllm_cannot_run():
    r = load_recipe(QLORA_8B)
    assert eval_backend(r, "H100-SXM") == ("vllm", "auto: vLLM on this GPU")
    assert eval_backend(r, "CPU")[0] == "hf"
    assert eval_backend(r, "T4") == ("hf", "auto: vLLM's bf16 kernels need compute capability 8.0+ (Ampere or newer)")
    assert eval_backend(_with_eval(QLORA_8B, load_4bit=True), "H100-SXM")[0] == "hf"
    assert eval_backend(_with_eval(QLORA_8B, backend="hf"), "H100-SXM") == ("hf", "eval.backend hf")


def test_only_the_generated_tokens_change_with_the_backend():
    w = catalog.workloads()
    auto, hf = load_recipe(QLORA_8B), _with_eval(QLORA_8B, backend="hf")
    t_vllm, t_hf = timing(auto, "runpod", "H100-SXM", 1), timing(hf, "runpod", "H100-SXM", 1)
    n = _shape(auto)["params_b"] * 1e9
    peak = catalog.gpu_tflops("H100-SXM", "runpod", 1) * 1e12
    _, generated, _ = eval_workload(auto)
    saved = 2 * n * generated / peak * (1 / w["mfu"]["eval_decode"] - 1 / w["mfu"]["eval_decode_vllm"]) / 3600
    assert t_hf.eval_hours - t_vllm.eval_hours == pytest.approx(saved)
    assert t_vllm.train_hours == t_hf.train_hours and "lm-eval backend vllm" in t_vllm.eval_what
    # Log-likelihood tasks (leaderboard-v1 generates nothing here) take the same time either way.
    v1 = {"preset": "leaderboard-v1"}
    assert timing(_with_eval(QLORA_8B, **v1), "runpod", "H100-SXM", 1).eval_hours == pytest.approx(
        timing(_with_eval(QLORA_8B, backend="hf", **v1), "runpod", "H100-SXM", 1).eval_hours)


def test_plan_explain_names_the_backend_its_eta_assumes():
    res = CliRunner().invoke(cli, ["plan", str(QLORA_8B), "--explain", "--gpu", "H100-SXM:1"])
    assert res.exit_code == 0, res.output
    assert "lm-eval backend vllm (auto: vLLM on this GPU)" in " ".join(res.output.split())
