"""jobs.model: the SFT loading pitfalls — real weights (never random init), pad != EOS, no KV cache
under gradient checkpointing, LoRA on every linear but the head, 4-bit NF4 base for QLoRA."""

from __future__ import annotations

import pytest

from tests.jobs.test_train_support import build_tiny_model, make_recipe, write_data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    return build_tiny_model(root / "model"), write_data(root / "d.jsonl")


def _load(tiny, method="full", **train):
    from jobs import model as jm

    recipe = make_recipe(*tiny, method=method, **train)
    tok = jm.load_tokenizer(recipe)
    return recipe, tok, jm.load_model(recipe, tok)


def test_pretrained_weights_are_loaded_not_random(tiny):
    from safetensors.torch import load_file

    _, _, model = _load(tiny)
    saved = load_file(str(tiny[0] / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert name in saved
    assert model.state_dict()[name].equal(saved[name])


def test_pad_token_is_not_eos(tiny):
    _, tok, model = _load(tiny)
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id


def test_pad_token_added_and_embeddings_resized_when_only_eos_exists(tiny):
    from transformers import AutoTokenizer

    from jobs import model as jm

    tok = AutoTokenizer.from_pretrained(tiny[0])
    tok.unk_token = None
    tok.pad_token = tok.eos_token  # the common "pad = eos" setup that hides EOS from the loss
    added = jm.ensure_pad_token(tok)
    assert added and tok.pad_token == "<pad>" and tok.pad_token_id != tok.eos_token_id
    recipe = make_recipe(*tiny)
    model = jm.load_model(recipe, tok)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)


def test_gradient_checkpointing_turns_off_the_kv_cache(tiny):
    _, _, model = _load(tiny, gradient_checkpointing=True)
    assert model.is_gradient_checkpointing
    assert model.config.use_cache is False
    _, _, plain = _load(tiny, gradient_checkpointing=False)
    assert not plain.is_gradient_checkpointing


def test_lora_all_linear_adapts_projections_not_the_head(tiny):
    _, _, model = _load(tiny, method="lora")
    names = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    assert any("q_proj" in n for n in names) and any("down_proj" in n for n in names)
    assert not any("lm_head" in n for n in names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_qlora_base_is_nf4_with_lora_on_top(tiny):
    import bitsandbytes as bnb

    _, _, model = _load(tiny, method="qlora")
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit
    assert four_bit[0].weight.quant_type == "nf4"
    assert any(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)


def test_unknown_model_is_one_clear_user_error(tmp_path):
    from jobs import model as jm
    from sftcore.errors import UserError

    recipe = make_recipe(tmp_path / "nope", write_data(tmp_path / "d.jsonl"))
    with pytest.raises(UserError, match="model.id"):
        jm.load_tokenizer(recipe)


def test_eos_stays_a_trained_label_after_collation(tiny):
    """With pad == eos, a padding-aware collator masks EOS too and the model never learns to stop."""
    from jobs.data import build_datasets, make_collator

    recipe, tok, _ = _load(tiny)
    train, _ = build_datasets(recipe, tok)
    batch = make_collator(recipe, tok)(train[:4])
    eos = tok.eos_token_id
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
        trained = [t for t in labels if t != -100]
        assert trained and trained[-1] == eos
        assert eos in ids and tok.pad_token_id != eos


@pytest.mark.slow
def test_qlora_trains_the_same_after_an_eval_pass(tiny):
    """bitsandbytes' AVX512-BF16 CPU path repacks 4-bit weights for an inference kernel on the first
    no-grad eval forward and keeps them packed for training; the loader turns that path off."""
    import bitsandbytes as bnb
    import torch

    ids = torch.randint(3, 43, (2, 12), generator=torch.Generator().manual_seed(0))

    def grads(model):
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def load():
        torch.manual_seed(1)  # the same LoRA init in both models
        model = _load(tiny, method="qlora")[2]
        for n, p in model.named_parameters():
            if "lora_B" in n:  # PEFT starts lora_B at zero, which leaves lora_A without a gradient
                torch.nn.init.normal_(p, std=0.1)
        return model

    expected = grads(load())
    evaluated = load()
    evaluated.eval()
    with torch.no_grad():
        evaluated(input_ids=ids)  # in_features 32 < the 64-value block: this crashed on the CPU path
    got = grads(evaluated)
    assert expected.keys() == got.keys() and len(expected) > 0
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    four_bit = [m for m in evaluated.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in four_bit)


@pytest.mark.parametrize("template", ["plain", "llama2-chat", "mistral-inst", "chatml"])
def test_saved_tokenizer_carries_the_recipes_chat_template(tiny, tmp_path, template):
    """Training saves the tokenizer load_tokenizer returns; reloaded, it renders the training ids."""
    from transformers import AutoTokenizer

    from jobs import model as jm
    from jobs import templates
    from sftcore.recipe import recipe_from_dict
    from tests.jobs.test_train_support import recipe_dict

    d = recipe_dict(*tiny)
    d["data"]["template"] = template
    recipe = recipe_from_dict(d)
    tok = jm.load_tokenizer(recipe)
    tok.save_pretrained(tmp_path / "final")
    saved = AutoTokenizer.from_pretrained(tmp_path / "final")
    conv = [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "w2"}]
    out = saved.apply_chat_template(conv, tokenize=True)
    assert list(out["input_ids"] if hasattr(out, "keys") else out) == templates.render(conv, template, tok)[0]
    model = jm.load_model(recipe, tok)
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)
    assert model.generation_config.eos_token_id == tok.eos_token_id  # chatml: <|im_end|> ends generation
    if template == "chatml":
        assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id


def test_an_adapter_runs_base_loads_on_its_own_ranks_gpu(monkeypatch):
    """Rank 1 of a multi-GPU QLoRA run quantizes onto cuda:1: accelerate refuses a 4-bit model on
    another device than the rank's and itself advises device_map={'': torch.cuda.current_device()},
    which is LOCAL_RANK once the process group set the device."""
    import inspect

    import accelerate.accelerator
    import torch

    from jobs import model as jm

    assert "device_map={'':torch.cuda.current_device()}" in inspect.getsource(accelerate.accelerator)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert jm.rank_device_map("qlora", None) == {"": 1}
    assert jm.rank_device_map("lora", None) == {"": 1}
    assert jm.rank_device_map("lora", "zero2") is None  # DeepSpeed places the model
    assert jm.rank_device_map("full", None) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert jm.rank_device_map("qlora", None) is None  # CPU: no device map at all


def test_load_model_passes_the_rank_device_map_to_from_pretrained(tiny, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from jobs import model as jm

    seen = {}

    def capture(path, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    recipe = make_recipe(*tiny, method="qlora")
    tok = jm.load_tokenizer(recipe)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", capture)
    with pytest.raises(RuntimeError, match="stop here"):
        jm.load_model(recipe, tok)
    assert seen["device_map"] == {"": 3} and seen["quantization_config"].load_in_4bit


# Llama 3.1's special tokens, in id order from 128000, as meta-llama/llama-models
# models/llama3/tokenizer.py lists them (then <|reserved_special_token_2..247|>).
LLAMA31_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]


def _llama3_like(tiny, specials):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny[0])
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|end_of_text|>"
    tok.pad_token = None
    tok.unk_token = None
    return tok


def test_llama31_pads_with_its_reserved_pad_token_and_adds_nothing(tiny):
    from jobs import model as jm

    tok = _llama3_like(tiny, LLAMA31_SPECIALS)
    size = len(tok)
    assert jm.ensure_pad_token(tok) is False
    assert tok.pad_token == "<|finetune_right_pad_id|>" and len(tok) == size
    assert tok.pad_token_id != tok.eos_token_id


def test_llama3_without_a_pad_token_takes_the_first_reserved_one(tiny):
    from jobs import model as jm

    specials = [t for t in LLAMA31_SPECIALS if "finetune" not in t]
    tok = _llama3_like(tiny, specials)
    tok.chat_template = "{{ '<|start_header_id|>' }}{{ '<|eot_id|>' }}"
    size = len(tok)
    assert jm.ensure_pad_token(tok) is False and len(tok) == size
    assert tok.pad_token == "<|reserved_special_token_0|>"


def test_a_tokenizer_with_no_spare_token_still_gets_a_new_pad(tiny):
    from jobs import model as jm

    tok = _llama3_like(tiny, ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    tok.chat_template = "{{ '<|eot_id|>' }}"
    assert jm.ensure_pad_token(tok) is True and tok.pad_token == "<pad>"
