"""The planner's speed terms: gradient checkpointing decided per GPU for `auto` (memory, FLOPs,
the env the job reads, `plan --explain`), and the logits term under Liger's fused cross-entropy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import cli
from launcher.estimate.candidates import plan
from launcher.estimate.memory import liger_chunk_tokens, memory
from launcher.estimate.timing import timing
from launcher.render import render_task
from sftcore.contract import Env
from sftcore.recipe import recipe_from_dict

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _recipe(gc="auto", method="qlora", seq=2048, mb=1, kernels="auto"):
    data = {
        "name": "t", "model": {"id": MODEL}, "method": method,
        "data": {"sources": [{"path": "ehartford/dolphin", "format": "dolphin", "max_samples": 25000}], "seq_len": seq},
        "train": {"micro_batch_size": mb, "gradient_checkpointing": gc, "kernels": kernels},
        "resources": {"clouds": ["lambda", "runpod", "gcp"]}, "eval": None,
    }
    if method in ("lora", "qlora"):
        data["lora"] = {"r": 16, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
    if method == "qlora":
        data["quantization"] = {"double_quant": True}
    return recipe_from_dict(data)


def test_auto_is_the_default_and_true_false_still_force():
    from sftcore.recipe.schema import TrainSpec

    assert TrainSpec().gradient_checkpointing == "auto" and TrainSpec().kernels == "auto"
    r = _recipe(gc=True)
    assert plan(r, gpu="H100:1").chosen.gradient_checkpointing is True
    assert plan(_recipe(gc=False), gpu="H100:1").chosen.gradient_checkpointing is False


def test_auto_turns_checkpointing_off_where_activations_fit_and_on_where_not():
    r = _recipe(mb=4)
    off, on = memory(r, gradient_checkpointing=False), memory(r, gradient_checkpointing=True)
    assert off.activations > on.activations  # every layer's activations vs one layer's + the inputs
    roomy = plan(r, gpu="H100:1").chosen
    assert roomy.gradient_checkpointing is False and roomy.mem_needed_gb == pytest.approx(off.total)
    assert "auto: off" in roomy.checkpointing_why
    tight = plan(r, gpu="A10:1").chosen  # 24 GB: only with checkpointing
    assert off.total > 24 > on.total
    assert tight.gradient_checkpointing is True and tight.mem_needed_gb == pytest.approx(on.total)
    assert f"without it training needs {off.total:.1f} GB" in tight.checkpointing_why


@pytest.mark.parametrize(("method", "extra"), [("qlora", 2), ("lora", 2), ("full", 2)])
def test_recompute_flops_only_when_checkpointing_is_on(method, extra):
    """2·N more FLOPs per token with checkpointing (the forward again): 6N→8N full, 4N→6N adapters."""
    from launcher.estimate.memory import _shape

    r = _recipe(method=method)
    n = _shape(r).get("active_params_b", _shape(r)["params_b"]) * 1e9
    with_gc = timing(r, "lambda", "H100", 1, gradient_checkpointing=True)
    without = timing(r, "lambda", "H100", 1, gradient_checkpointing=False)
    assert with_gc.terms["flops_per_token"] - without.terms["flops_per_token"] == pytest.approx(extra * n)
    assert with_gc.train_hours > without.train_hours
    assert with_gc.terms["gradient_checkpointing"] is True and without.terms["gradient_checkpointing"] is False


def test_render_passes_the_plans_choice_to_the_job(tmp_path):
    r = _recipe(mb=4)
    roomy, tight = plan(r, gpu="H100:1").chosen, plan(r, gpu="A10:1").chosen
    env = render_task(r, roomy, "sftl-t-0001", str(tmp_path / "r.yaml"))["envs"]
    assert env[Env.GRADIENT_CHECKPOINTING] == "0"
    # Fallbacks share one env: on if any rendered choice needs it.
    assert render_task(r, roomy, "sftl-t-0001", str(tmp_path / "r.yaml"),
                       fallbacks=[tight])["envs"][Env.GRADIENT_CHECKPOINTING] == "1"
    forced = _recipe(gc=True, mb=4)
    assert Env.GRADIENT_CHECKPOINTING not in render_task(
        forced, plan(forced, gpu="H100:1").chosen, "sftl-t-0001", str(tmp_path / "r.yaml"))["envs"]


def test_plan_explain_shows_the_choice_and_the_terms(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(f"""name: t
model: {{id: {MODEL}}}
method: qlora
lora: {{r: 16, alpha: 16, dropout: 0.0, target_modules: all-linear}}
quantization: {{double_quant: true}}
data: {{sources: [{{path: ehartford/dolphin, format: dolphin, max_samples: 25000}}], seq_len: 2048}}
train: {{micro_batch_size: 4}}
resources: {{clouds: [lambda, runpod, gcp]}}
eval: null
""")
    roomy = CliRunner().invoke(cli, ["plan", str(path), "--explain", "--gpu", "H100:1"])
    assert roomy.exit_code == 0, roomy.output
    assert re.search(r"gradient checkpointing: off \(auto: off, all activations fit", roomy.output)
    assert "note: gradient checkpointing off" in roomy.output
    assert "with the recompute" not in roomy.output
    tight = CliRunner().invoke(cli, ["plan", str(path), "--explain", "--gpu", "A10:1"])
    assert tight.exit_code == 0, tight.output
    assert re.search(r"gradient checkpointing: on \(auto: on, without it training needs", tight.output)
    assert "(with the recompute of gradient checkpointing)" in tight.output


def test_forced_liger_counts_chunked_logits():
    plain, fused = memory(_recipe(mb=4)), memory(_recipe(mb=4, kernels="liger"))
    # 8192 tokens × 128k vocab: bf16 logits + fp32 upcast + fp32 grad ≈ 10.5 GB; fused: one chunk.
    assert plain.logits > 10 and fused.logits < 0.2
    assert any("fused linear cross-entropy" in n for n in fused.notes)


def test_liger_chunk_size_is_ligers_own_formula():
    """Mirrors liger_kernel's fused_linear_cross_entropy chunking; checked against its source and
    triton's own helpers where the wheel is installed (the image), skipped otherwise (CI)."""
    triton = pytest.importorskip("triton", reason="triton/liger_kernel are installed in the image only, not in CI")
    try:
        import liger_kernel.ops.fused_linear_cross_entropy as flce
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"liger_kernel does not import ({exc}); installed in the image only")
    source = Path(flce.__file__).read_text()
    assert "inc_factor = triton.cdiv(V, chunk_mem_const * H)" in source
    assert "chunk_size = triton.next_power_of_2(triton.cdiv(BT, inc_factor))" in source
    assert "chunk_size = min(chunk_size, BT)" in source
    assert flce._CHUNK_MEM_CONST == 1
    for bt, v, h in [(16384, 32000, 4096), (2048, 128256, 4096), (8192, 256000, 3584), (7, 32000, 64), (100, 10, 100)]:
        inc = triton.cdiv(v, h)
        assert liger_chunk_tokens(bt, v, h) == min(triton.next_power_of_2(triton.cdiv(bt, inc)), bt)
