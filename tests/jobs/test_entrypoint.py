"""docker/entrypoint.sh end to end on CPU: DeepSpeed ZeRO-2/ZeRO-3 full fine-tunes and a ZeRO-2
LoRA adapter with 2 gloo processes under torchrun, two "nodes" on loopback training together from
SkyPilot's env, and bad invocations (exit 2, one line)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.jobs.test_train_support import build_tiny_model, recipe_dict, write_data

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "docker" / "entrypoint.sh"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("entry")
    return build_tiny_model(root / "model"), write_data(root / "d.jsonl", n=24), root


def _recipe(tiny, name, method="full", bucket=None, max_usd=None, **train) -> Path:
    d = recipe_dict(tiny[0], tiny[1], **{"max_steps": 2, "micro_batch_size": 2, "grad_accum": 1, **train})
    d["method"] = method
    d["output"] = {"bucket": bucket}  # the job's bucket and budget are the recipe's
    if max_usd is not None:
        d["resources"]["max_usd"] = max_usd
    d["data"]["eval_fraction"] = 0.1
    if method == "lora":
        d["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    path = tiny[2] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(step, recipe, out, wait=True, **env):
    full = {**os.environ, "SFTLAUNCH_RECIPE": str(recipe), "SFTLAUNCH_OUT": str(out),
            "SFTLAUNCH_RUN_ID": "sftl-t-e0e0", "SFTLAUNCH_MASTER_PORT": str(_port()), **env}
    proc = subprocess.Popen(["bash", str(ENTRY), step], env=full, cwd="/", stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    log, _ = proc.communicate(timeout=600)
    return proc.returncode, log


def test_bad_invocations_exit_2_with_one_line(tmp_path):
    proc = subprocess.run(["bash", str(ENTRY), "dance"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: usage: entrypoint.sh")
    env = {k: v for k, v in os.environ.items() if k != "SFTLAUNCH_RECIPE"}
    proc = subprocess.run(["bash", str(ENTRY), "train"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "SFTLAUNCH_RECIPE is not set" in proc.stderr
    proc = subprocess.run(["bash", str(ENTRY), "train"], capture_output=True, text=True,
                          env={**env, "SFTLAUNCH_RECIPE": str(tmp_path / "none.yaml")})
    assert proc.returncode == 2 and "no such file" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_full_fine_tune_on_two_cpu_processes(tiny, tmp_path, stage):
    from safetensors.torch import load_file

    recipe = _recipe(tiny, stage, deepspeed=stage)
    rc, log = _entry("train", recipe, tmp_path / "out", SFTLAUNCH_CPU_PROCS="2", DS_ACCELERATOR="cpu")
    assert rc == 0, log[-3000:]
    assert "torch.distributed.run" in log and "--nproc_per_node 2" in log
    meta = json.loads((tmp_path / "out" / "final" / "sftlaunch.json").read_text())
    assert meta["world_size"] == 2
    final = load_file(str(tmp_path / "out" / "final" / "model.safetensors"))
    base = load_file(str(tiny[0] / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert final[name].shape == base[name].shape  # gathered, not a ZeRO-3 shard placeholder
    assert not final[name].equal(base[name])


@pytest.mark.slow
def test_lora_adapter_saved_under_deepspeed_is_complete_and_reloads(tiny, tmp_path):
    """sftcore.recipe allows LoRA with zero2 only (zero3 is rejected at validation), so the
    sharded-save case a recipe can reach is ZeRO-2."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    recipe = _recipe(tiny, "z2lora", method="lora", deepspeed="zero2", learning_rate=1e-2)
    rc, log = _entry("train", recipe, tmp_path / "out", SFTLAUNCH_CPU_PROCS="2", DS_ACCELERATOR="cpu")
    assert rc == 0, log[-3000:]
    final = tmp_path / "out" / "final"
    weights = load_file(str(final / "adapter_model.safetensors"))
    assert weights and all(v.numel() > 0 for v in weights.values())
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny[0]), final)
    assert sum(1 for n, _ in model.named_modules() if n.endswith("lora_A")) > 0


@pytest.mark.slow
def test_two_nodes_on_loopback_train_together(tiny, tmp_path):
    recipe = _recipe(tiny, "twonode")
    port = _port()
    common = {"SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.1",
              "SKYPILOT_NUM_GPUS_PER_NODE": "0", "SFTLAUNCH_MASTER_PORT": str(port),
              "SFTLAUNCH_RENDEZVOUS_TIMEOUT": "120"}
    head = _entry("train", recipe, tmp_path / "n0", wait=False, SKYPILOT_NODE_RANK="0", **common)
    worker = _entry("train", recipe, tmp_path / "n1", wait=False, SKYPILOT_NODE_RANK="1", **common)
    log1, _ = worker.communicate(timeout=600)
    log0, _ = head.communicate(timeout=600)
    assert head.returncode == 0, log0[-3000:]
    assert worker.returncode == 0, log1[-3000:]
    assert "--nnodes 2 --node_rank 1 --master_addr 127.0.0.1" in log1
    meta = json.loads((tmp_path / "n0" / "final" / "sftlaunch.json").read_text())
    assert meta["world_size"] == 2
    # Eval and publish run on the head only.
    rc, log = _entry("eval", recipe, tmp_path / "n1", SKYPILOT_NODE_RANK="1")
    assert rc == 0 and "head node only" in log


CANARY = "hf_CANARYentryLOG0123456789abcdefgh"


def test_start_log_has_versions_gpus_and_the_masked_recipe(tiny, tmp_path):
    """The first lines of every run log (`python -m jobs.dist info`, which the entrypoint's train
    step runs first): versions, GPUs seen, the resolved recipe — with secret values masked even
    where they appear inside the recipe."""
    d = recipe_dict(tiny[0], tiny[1])
    d["output"] = {"hub_repo": f"me/{CANARY}"}
    path = tmp_path / "leaky.yaml"
    path.write_text(yaml.safe_dump(d))
    env = {**os.environ, "HF_TOKEN": CANARY}
    proc = subprocess.run([sys.executable, "-m", "jobs.dist", "info", str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    import torch
    import transformers

    assert out.startswith("python 3.")
    assert f"torch {torch.__version__}" in out and f"transformers {transformers.__version__}" in out
    assert "GPUs seen: " in out
    assert f"recipe {path} (resolved):" in out and "method: full" in out and "seq_len: 32" in out
    assert "hub_repo: me/****" in out and CANARY not in out + proc.stderr


@pytest.mark.slow
def test_all_with_a_bucket_tees_masked_logs_and_copies_them(tiny, tmp_path):
    bucket = tmp_path / "bucket"
    recipe = _recipe(tiny, "synced", bucket=str(bucket))
    out = tmp_path / "out"
    rc, log = _entry("all", recipe, out, SFTLAUNCH_STEPS="train",
                     SFTLAUNCH_SYNC_EVERY="1", HF_TOKEN=CANARY)
    assert rc == 0, log[-3000:]
    copy = bucket / "sftl-t-e0e0"
    train_log = (copy / "logs" / "train.log").read_text()
    assert train_log == (out / "logs" / "train.log").read_text()
    assert "GPUs seen:" in train_log and "step 2/2" in train_log and "final model saved" in train_log
    assert (copy / "metrics.jsonl").read_text() == (out / "metrics.jsonl").read_text()
    assert json.loads((copy / "exit.json").read_text())["exit_code"] == 0
    for root in (out, bucket):
        for p in root.rglob("*"):
            if p.is_file() and p.suffix in ("", ".log", ".json", ".jsonl", ".yaml", ".txt"):
                assert CANARY not in p.read_text(errors="replace"), p
    assert CANARY not in log


@pytest.mark.slow
def test_a_budget_stop_skips_eval_and_publish_and_exits_0(tiny, tmp_path):
    """The in-job guard: $1,000,000/h against max_usd $0.01 stops training at its first check,
    after a checkpoint; `all` then skips eval and publish and ends with 0 (so a managed job is
    not restarted), and the end record says it was a stop."""
    recipe = _recipe(tiny, "budget", max_steps=20, max_usd=0.01)
    out = tmp_path / "out"
    rc, log = _entry("all", recipe, out, SFTLAUNCH_USD_PER_HOUR="1000000")
    assert rc == 0, log[-3000:]
    assert "sftlaunch: run stopped before the end of training" in log
    assert (out / "STOPPED").exists() and not (out / "final").exists()
    assert not (out / "eval").exists() and not (out / "logs" / "eval.log").exists()
    assert not (out / "logs" / "publish.log").exists()
    end = json.loads((out / "exit.json").read_text())
    assert end["exit_code"] == 0 and end["stopped"]["reason"] == "budget"
