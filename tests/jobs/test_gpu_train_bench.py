"""bench/gpu_train.py off a GPU: the dry run builds every recipe through the recipe schema and
looks up the planner's per-GPU estimate; without CUDA a real run refuses with exit 2."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "gpu_train.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("gpu_train_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(*args, **env):
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, cwd=REPO)


def test_dry_run_prints_each_recipe_with_the_planner_estimate(tmp_path):
    proc = _run("--dry-run", "--gpus", "8", "--gpu", "A100-80GB", "--steps", "5", "--keep", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "1.10B params" in out and "A100-80GB (312 bf16 TFLOPs peak)" in out
    found = dict(re.findall(r"^(\S+): method .* estimate (\d+\.\d) GB/GPU$", out, re.M))
    assert set(found) == {"full-zero2", "full-zero3", "lora", "qlora"}
    bench = _bench_module()
    from launcher.estimate import memory as estimate
    from sftcore.recipe import recipe_from_dict

    model_dir = tmp_path / "llama-1b-random"
    assert f"--model-dir {model_dir}" in out and (model_dir / "config.json").is_file()  # all the estimate reads
    for method, printed in found.items():
        gpus = 8 if method.startswith("full") else 1
        recipe = recipe_from_dict(bench.recipe_dict(method, model_dir, 5, 8, 2048, gpus))
        assert recipe.train.max_steps == 5 and recipe.data.packing
        assert float(printed) == pytest.approx(estimate.memory(recipe, gpus=gpus).total, abs=0.06)
    assert float(found["full-zero3"]) < float(found["full-zero2"])  # ZeRO-3 shards the weights too
    full = [line for line in out.splitlines() if "--recipe-json" in line and "full-zero" in line]
    assert len(full) == 2 and all("torch.distributed.run --standalone --nproc_per_node 8" in line for line in full)
    adapters = [line for line in out.splitlines() if "--recipe-json" in line and "lora.json" in line]
    assert len(adapters) == 2 and not any("torch.distributed.run" in line for line in adapters)


def test_without_cuda_it_refuses_with_exit_2():
    proc = _run("--methods", "lora", CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: bench/gpu_train.py needs a CUDA GPU (none is visible); --dry-run prints the recipes and "
        "estimates without one"]
    proc = _run("--dry-run", "--methods", "full-zero4")
    assert proc.returncode == 2 and "unknown full-zero4" in proc.stderr


def test_mfu_counts_the_recompute_forward():
    bench = _bench_module()
    assert bench.mfu(10_000, 1.1e9, True, 989) == pytest.approx(8 * 1.1e9 * 10_000 / 989e12)
    assert bench.mfu(10_000, 1.1e9, False, 989) == pytest.approx(6 * 1.1e9 * 10_000 / 989e12)
    assert bench.gpu_spec("NVIDIA H100 80GB HBM3") == ("H100-SXM", 989.0)
    assert bench.gpu_spec("NVIDIA H100 PCIe") == ("H100", 756.0)
    assert bench.gpu_spec("NVIDIA H200") == ("H200", 989.0)


GPU_CHECK = REPO / "bench" / "gpu_check.py"


def test_gpu_check_prints_the_environment_facts_and_the_8b_plan_without_a_gpu():
    proc = subprocess.run([sys.executable, str(GPU_CHECK), "--dry-run"], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for fact in ("torch: driver", "bitsandbytes ", "deepspeed ", "accelerator now:", "SDPA backends enabled"):
        assert fact in out, fact
    assert "8.03B params, Llama-3.1-8B shape" in out and "micro 2 x seq_len 2048" in out
    assert re.search(r"^qlora: .* estimate \d+\.\d GB/GPU$", out, re.M) and re.search(r"^lora: .* estimate", out, re.M)


def test_gpu_check_refuses_a_real_run_without_cuda_after_the_facts():
    proc = subprocess.run([sys.executable, str(GPU_CHECK)], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr and "== environment" in proc.stdout


def test_bench_mfu_uses_the_planners_flops_per_token(tmp_path):
    bench = _bench_module()
    bench.write_model(tmp_path / "m", random_init=False, shape=bench.LLAMA3_8B)
    lora = bench.recipe_dict("lora", tmp_path / "m", 10, 1, 2048, 1)
    full = bench.recipe_dict("full-zero3", tmp_path / "m", 10, 1, 2048, 1)
    n = 8.03e9
    # launcher.estimate.timing: LoRA skips the weight gradients (6N with recompute), full needs 8N.
    assert 6 * n < bench.planner_flops_per_token(lora) < 6.5 * n
    assert 8 * n < bench.planner_flops_per_token(full) < 8.5 * n
