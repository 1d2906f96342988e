"""Models of today: shapes against published parameter counts, and each new recipe validates,
plans on the expected class of GPU, renders for every cloud it allows and SkyPilot accepts it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher import catalog
from launcher.cli import cli
from launcher.estimate.candidates import plan
from launcher.estimate.memory import logits_bytes, memory, param_count, quantized_split
from sftcore.clouds import CLOUDS
from sftcore.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]

# Published parameter counts: the "Model size" each model page on the Hub shows (from the
# safetensors index), and the model cards' own figures where they state them.
PUBLISHED = {
    # https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct: "8.03B params"
    "meta-llama/Llama-3.1-8B-Instruct": (8.03e9, None),
    # https://huggingface.co/meta-llama/Llama-3.1-70B-Instruct: "70.6B params"
    "meta-llama/Llama-3.1-70B-Instruct": (70.6e9, None),
    # https://huggingface.co/Qwen/Qwen2.5-7B-Instruct model card: "Number of Parameters: 7.61B"
    "Qwen/Qwen2.5-7B-Instruct": (7.61e9, None),
    # https://huggingface.co/Qwen/Qwen2.5-72B-Instruct model card: "Number of Parameters: 72.7B"
    "Qwen/Qwen2.5-72B-Instruct": (72.7e9, None),
    # https://huggingface.co/google/gemma-2-9b-it: "9.24B params"
    "google/gemma-2-9b-it": (9.24e9, None),
    # https://huggingface.co/mistralai/Mistral-Small-24B-Instruct-2501: "23.6B params"
    "mistralai/Mistral-Small-24B-Instruct-2501": (23.6e9, None),
    # https://huggingface.co/Qwen/Qwen3-30B-A3B model card: "Number of Parameters: 30.5B in total
    # and 3.3B activated"
    "Qwen/Qwen3-30B-A3B": (30.5e9, 3.3e9),
}

# recipe -> (model, smallest and largest GPU memory the plan may pick, GPUs). Lambda sells B200
# only as 2x ($10.38/h at skypilot-catalog commit 95eaf484), which beats one RunPod B200 or L40S
# on total cost for the 24B-72B QLoRA recipes: they plan on 2×B200.
NEW_RECIPES = {
    "llama3.1-8b-qlora": ("meta-llama/Llama-3.1-8B-Instruct", 24, 48, 1),
    "llama3.1-8b-full": ("meta-llama/Llama-3.1-8B-Instruct", 80, 80, 8),
    "llama3.1-70b-qlora": ("meta-llama/Llama-3.1-70B-Instruct", 80, 192, 2),
    "qwen2.5-7b-qlora": ("Qwen/Qwen2.5-7B-Instruct", 24, 48, 1),
    "qwen2.5-72b-qlora": ("Qwen/Qwen2.5-72B-Instruct", 80, 192, 2),
    "gemma2-9b-qlora": ("google/gemma-2-9b-it", 24, 48, 1),
    "mistral-small-24b-qlora": ("mistralai/Mistral-Small-24B-Instruct-2501", 24, 192, 2),
    "qwen3-30b-a3b-qlora": ("Qwen/Qwen3-30B-A3B", 80, 192, 1),
}


@pytest.mark.parametrize("model", sorted(PUBLISHED))
def test_parameter_count_from_the_shape_matches_the_published_one(model):
    shape = catalog.models()[model]
    total, active = param_count(shape)
    published, published_active = PUBLISHED[model]
    assert abs(total - published) / published < 0.01, (model, total / 1e9)
    # The planner's params_b is that count (to the rounding the table keeps).
    assert abs(shape["params_b"] * 1e9 - total) / total < 0.002, (model, shape["params_b"], total / 1e9)
    if published_active:
        # "3.3B" is rounded to a tenth: within half a tenth.
        assert abs(active - published_active) <= 0.06e9, active / 1e9
        assert abs(shape["active_params_b"] * 1e9 - active) / active < 0.005
    else:
        assert "active_params_b" not in shape and active == total
    assert shape["source"].startswith(f"https://huggingface.co/{model}/")


def test_every_new_model_has_its_config_shape():
    table = catalog.models()
    for model in PUBLISHED:
        s = table[model]
        q = s["linear"]["q_proj"]
        kv = s["linear"]["k_proj"]
        assert q[0] == s["hidden"] and kv[0] == s["hidden"]
        # GQA: k/v project to kv_heads × head_dim, q to heads × head_dim.
        assert q[1] // s["heads"] == kv[1] // s["kv_heads"], model
        assert s["kv_heads"] < s["heads"], model


def test_large_vocabulary_logits_are_their_own_term():
    gemma, llama2 = catalog.models()["google/gemma-2-9b-it"], catalog.models()["meta-llama/Llama-2-7b-hf"]
    # Gemma 2 at 2048 tokens: 256,000 × 2048 × (2 bf16 + 4 fp32 + 4 grad + 2×2 softcap) bytes = 7.3 GB,
    # eight times Llama 2's 32k vocabulary (no softcap).
    assert logits_bytes(gemma, 2048, 2) / 1e9 == pytest.approx(256000 * 2048 * 14 / 1e9)
    assert logits_bytes(gemma, 2048, 2) > 8 * logits_bytes(llama2, 2048, 2)
    m = memory(load_recipe(REPO / "recipes/gemma2-9b-qlora.yaml"))
    assert m.logits > m.activations  # at seq 2048 × micro-batch 2, the logits outweigh the layers
    assert m.total == pytest.approx(m.weights + m.trainable + m.activations + m.logits + m.fixed)
    assert any("sliding-window" in n for n in m.notes) and any("tied" in n for n in m.notes)


def test_moe_memory_holds_all_experts_and_flops_use_the_active():
    shape = catalog.models()["Qwen/Qwen3-30B-A3B"]
    quantized, experts_16bit = quantized_split(shape)
    assert experts_16bit / 1e9 == pytest.approx(48 * 128 * 3 * 2048 * 768 / 1e9)
    r = load_recipe(REPO / "recipes/qwen3-30b-a3b-qlora.yaml")
    m = memory(r)
    assert m.weights > experts_16bit * 2 / 1e9  # bf16 experts, + the 4-bit attention and embeddings
    c = plan(r).chosen
    assert c.timing.terms["flops_per_token"] < 6 * 4e9 + 1e10  # 6·N with N the ~3.35B active (+ attention)


@pytest.mark.parametrize("stem", sorted(NEW_RECIPES))
def test_new_recipe_plans_on_the_expected_class_of_gpu(stem):
    model, low, high, gpus = NEW_RECIPES[stem]
    r = load_recipe(REPO / f"recipes/{stem}.yaml")
    assert r.model.id == model and r.data.template == "tokenizer"
    assert r.eval is not None and r.eval.preset == "leaderboard-v2"
    c = plan(r).chosen
    assert c is not None and c.fits and not c.borderline, (stem, c and c.why_not)
    assert low <= c.mem_available_gb <= high and c.gpus == gpus, (stem, c.gpu, c.gpus)
    if r.method == "full":
        assert r.train.deepspeed == "zero3"
    # Every GPU a recipe names is spelled as SkyPilot's catalog spells it.
    if r.resources.gpu != "auto":
        assert catalog.canonical_gpu(r.resources.gpu.split(":")[0]) == r.resources.gpu.split(":")[0]


def test_new_recipes_render_for_every_allowed_cloud_and_skypilot_accepts_them(tmp_path):
    runner = CliRunner()
    rendered = []
    for stem in sorted(NEW_RECIPES):
        r = load_recipe(REPO / f"recipes/{stem}.yaml")
        for cloud in [c for c in r.resources.clouds if c in CLOUDS]:
            out = tmp_path / f"{stem}.{cloud}.yaml"
            res = runner.invoke(cli, ["render", str(REPO / f"recipes/{stem}.yaml"), "--cloud", cloud, "-o", str(out)])
            if res.exit_code == 2 and "nothing fits" in res.output:
                continue  # e.g. Lambda offers A100-80GB only ×8: the plan says so, no render
            assert res.exit_code == 0, (stem, cloud, res.output)
            rendered.append(str(out))
        assert any(p.startswith(str(tmp_path / stem) + ".") for p in rendered), stem
    # SkyPilot's own parser, in a fresh process isolated from any real SkyPilot state.
    home = tmp_path / "sky-home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "SKY_RUNTIME_DIR": str(home / ".sky-runtime"),
           "SKYPILOT_API_SERVER_ENDPOINT": "http://127.0.0.1:9", "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}
    code = ("import json, sys, yaml, sky\n"
            "out = []\n"
            "for p in sys.argv[1:]:\n"
            "    t = sky.Task.from_yaml_config(yaml.safe_load(open(p)))\n"
            "    out.append([p, t.num_nodes, sorted(str(r.accelerators) for r in t.resources)])\n"
            "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code, *rendered], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    accepted = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [a[0] for a in accepted] == rendered
    assert all(a[2] and a[2][0] != "None" for a in accepted)


def test_explain_shows_the_logits_line_and_the_eval_term_per_preset():
    runner = CliRunner()
    out = runner.invoke(cli, ["plan", str(REPO / "recipes/gemma2-9b-qlora.yaml"), "--explain"]).output
    logits = [line for line in out.splitlines() if line.strip().startswith("logits (+ fp32, grad)")]
    assert len(logits) == 2  # training and post-training eval
    assert float(logits[0].split()[-2]) > 5  # 2 × 2048 tokens × 256k vocab × 14 bytes ≈ 14.7 GB
    eval_line = next(line for line in out.splitlines() if line.strip().startswith("eval ") and " h" in line)
    assert "leaderboard-v2: 44.0M prefill tokens + 2.05M generated" in eval_line
    v1 = runner.invoke(cli, ["plan", str(REPO / "recipes/llama2-70b-qlora.yaml"), "--explain"]).output
    assert "(leaderboard-v1: 97.0M prefill tokens;" in v1 and "lm-eval backend" in v1


def test_v2_eval_time_counts_generated_tokens_at_the_decode_rate():
    from launcher.estimate.timing import eval_hours, eval_workload

    w = catalog.workloads()
    r = load_recipe(REPO / "recipes/llama3.1-8b-qlora.yaml")
    prefill, generated, _ = eval_workload(r)
    assert (prefill, generated) == (w["eval_tokens"]["leaderboard-v2"]["prefill"], w["eval_tokens"]["leaderboard-v2"]["generated"])
    n = catalog.models()[r.model.id]["params_b"] * 1e9
    peak = catalog.gpu_tflops("H100-SXM", "runpod", 1) * 1e12
    from launcher.estimate.timing import eval_backend

    assert eval_backend(r, "H100-SXM")[0] == "vllm"  # auto: vLLM decodes on an H100
    expect = (2 * n * prefill / (peak * w["mfu"]["eval"]) + 2 * n * generated / (peak * w["mfu"]["eval_decode_vllm"])) / 3600
    assert eval_hours(r, "runpod", "H100-SXM", 1) == pytest.approx(expect)
    # Decoding 2M tokens costs over a quarter as much as prefilling 44M: generation is not free.
    assert 2 * n * generated / w["mfu"]["eval_decode"] > 0.25 * 2 * n * prefill / w["mfu"]["eval"]
