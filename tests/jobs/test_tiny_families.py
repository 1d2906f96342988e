"""Tiny random-init models of today's families (Qwen2, Gemma 2, Mistral, Qwen3-MoE) train with
QLoRA and full fine-tuning on CPU through the real data path (`template: tokenizer`, packing), so
each family's module names, chat template and packing work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.requires("transformers")

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "recipes" / "data" / "alpaca.jsonl"  # single-turn, no system turn: every family's template takes it
FAMILIES = ("qwen2", "gemma2", "mistral", "qwen3_moe")
MODEL_TYPES = {"qwen2": "qwen2", "gemma2": "gemma2", "mistral": "mistral", "qwen3_moe": "qwen3_moe"}
# What the shipped recipe of the family adapts (tests/launcher/test_models_today.py plans those).
RECIPE = {"qwen2": "qwen2.5-7b-qlora", "gemma2": "gemma2-9b-qlora", "mistral": "mistral-small-24b-qlora",
          "qwen3_moe": "qwen3-30b-a3b-qlora"}


def _recipe(model_dir: Path, method: str, family: str):
    from sftcore.recipe import load_recipe, recipe_from_dict

    shipped = load_recipe(REPO / "recipes" / f"{RECIPE[family]}.yaml")
    d = {"name": "t", "model": {"id": str(model_dir)}, "method": method,
         "data": {"sources": [{"path": str(DATA), "format": "alpaca", "max_samples": 24}], "template": "tokenizer",
                  "seq_len": 160, "packing": True, "eval_fraction": 0.0},
         "train": {"epochs": 1, "learning_rate": 1e-3, "micro_batch_size": 2, "grad_accum": 1, "max_steps": 3,
                   "optimizer": "paged_adamw_32bit" if method == "qlora" else "adamw_torch", "precision": "fp32",
                   "gradient_checkpointing": method == "qlora", "checkpoint_minutes": 60, "warmup_ratio": 0.0,
                   "scheduler": "constant", "seed": 0},
         "resources": {"clouds": ["local"]}, "eval": None}
    if method == "qlora":
        d["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": shipped.lora.target_modules}
        d["quantization"] = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}
    return recipe_from_dict(d)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_builds_with_its_architecture_and_template(family):
    from transformers import AutoConfig, AutoTokenizer

    from jobs import templates
    from jobs.tiny import ensure_tiny

    path = ensure_tiny(family=family)
    assert ensure_tiny(family=family) == path
    cfg = AutoConfig.from_pretrained(path)
    assert cfg.model_type == MODEL_TYPES[family] and cfg.num_key_value_heads < cfg.num_attention_heads
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.pad_token_id != tok.eos_token_id
    msgs = [{"role": "user", "content": "Reverse the words. kiwi fig"}, {"role": "assistant", "content": "fig kiwi"}]
    ids, labels = templates.render_labels(msgs, "tokenizer", tok)
    trained = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])
    assert "fig kiwi" in trained and "Reverse" not in trained
    # The model learns to stop: the trained text ends with the family's end of turn, a stop token of
    # the published models (Gemma 2 it: generation_config eos_token_id [1, 107] = <eos>, <end_of_turn>).
    end = {"qwen2": "<|im_end|>", "gemma2": "<end_of_turn>", "mistral": "</s>", "qwen3_moe": "<|im_end|>"}[family]
    assert trained.endswith(end), trained  # and not the "\n" the template writes after it
    text, _spans = templates.render_spans(msgs, "tokenizer", tok)
    marker = {"qwen2": "<|im_start|>assistant\n", "gemma2": "<start_of_turn>model\n", "mistral": "[/INST]",
              "qwen3_moe": "<|im_start|>assistant\n<think>"}[family]
    assert marker in text, text


def test_family_templates_refuse_what_the_family_refuses():
    from transformers import AutoTokenizer

    from jobs import templates
    from jobs.tiny import ensure_tiny

    gemma = AutoTokenizer.from_pretrained(ensure_tiny(family="gemma2"))
    with pytest.raises(templates.BadConversation, match="System role not supported") as refused:
        templates.render_labels([{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                 {"role": "assistant", "content": "a"}], "tokenizer", gemma)
    assert refused.value.reason == "template refused"  # a bad row: data.bad_rows: skip counts and skips it
    qwen3 = AutoTokenizer.from_pretrained(ensure_tiny(family="qwen3_moe"))
    two_turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                 {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    # Qwen3 rewrites history, so each answer is trained in its own render (tests/jobs/test_template_masks.py).
    assert len(templates.sample_labels(two_turns, "tokenizer", qwen3)) == 2


def test_a_4bit_load_leaves_fused_moe_experts_unquantized():
    # What launcher.estimate.quantized_split assumes: bitsandbytes swaps nn.Linear only, and
    # transformers 5 keeps the experts as fused 3-D parameters.
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from jobs.tiny import ensure_tiny

    q = AutoModelForCausalLM.from_pretrained(ensure_tiny(family="qwen3_moe"), quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32))
    params = dict(q.named_parameters())
    assert type(params["model.layers.0.self_attn.q_proj.weight"]).__name__ == "Params4bit"
    experts = [n for n in params if ".mlp.experts." in n]
    assert experts and all(type(params[n]).__name__ == "Parameter" and params[n].dim() == 3 for n in experts)


def test_qlora_prepare_upcasts_like_peft_but_keeps_fused_experts_bf16():
    """jobs.model.prepare_for_kbit_training: what peft's prepare_model_for_kbit_training does
    (freeze everything, 16-bit non-4-bit parameters to fp32) except for the frozen fused experts,
    which stay in the compute dtype (peft would double them: Mixtral's 90 GB of experts -> 180 GB)."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from jobs.model import prepare_for_kbit_training
    from jobs.tiny import ensure_tiny

    def load():
        return AutoModelForCausalLM.from_pretrained(ensure_tiny(family="qwen3_moe"), dtype=torch.bfloat16,
                                                    quantization_config=BitsAndBytesConfig(
                                                        load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                        bnb_4bit_compute_dtype=torch.bfloat16))

    ours, theirs = load(), prepare_model_for_kbit_training(load(), use_gradient_checkpointing=False)
    prepare_for_kbit_training(ours, gradient_checkpointing=False)
    mine, peft_ = dict(ours.named_parameters()), dict(theirs.named_parameters())
    assert mine.keys() == peft_.keys()
    for name, param in mine.items():
        assert not param.requires_grad
        if ".mlp.experts." in name:
            assert param.dtype == torch.bfloat16 and peft_[name].dtype == torch.float32, name
        else:
            assert param.dtype == peft_[name].dtype, name  # fp32 norms/embeddings/head, uint8 4-bit
    assert any(p.dtype == torch.float32 for p in mine.values())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["qlora", "full"])
@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_trains_a_few_steps(family, method, tmp_path):
    from jobs import train as jt
    from jobs.tiny import ensure_tiny

    recipe = _recipe(ensure_tiny(family=family), method, family)
    out = tmp_path / "run"
    assert jt.train(recipe, out, run_id="sftl-t-0000") == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and all(loss == loss and loss > 0 for loss in losses)  # finite, trained 3 steps
    meta = json.loads((out / "final" / "sftlaunch.json").read_text())
    assert meta["template"] == "tokenizer" and meta["train_sequences"] >= 1
    # Alpaca answers carry no reasoning: a Qwen3 model is then served with its thinking switch off,
    # the prompt training treated as prompt; the families without the switch record nothing.
    assert meta["chat_template_kwargs"] == ({"enable_thinking": False} if family == "qwen3_moe" else {})
    final = out / "final"
    if method == "qlora":
        cfg = json.loads((final / "adapter_config.json").read_text())
        names = {m.rsplit(".", 1)[-1] for m in cfg["target_modules"]}
        assert {"q_proj", "v_proj"} <= names <= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        assert (final / "adapter_model.safetensors").is_file()
    else:
        assert (final / "model.safetensors").is_file()
