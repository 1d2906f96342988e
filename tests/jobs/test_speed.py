"""jobs.speed: gradient checkpointing per the plan, attention choice, Liger kernels against
liger_kernel's own family table, DataLoader settings, and what train() hands the Trainer."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest

from sftcore.contract import Env
from sftcore.errors import UserError
from tests.jobs.test_train_support import build_tiny_model, make_recipe, write_data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed")
    return build_tiny_model(root / "model"), write_data(root / "d.jsonl")


@pytest.mark.parametrize(("value", "env", "cuda", "expect"), [
    (True, "0", True, True), (False, "1", True, False),  # the recipe's true/false win over anything
    ("auto", "0", True, False), ("auto", "1", False, True),  # the plan's choice
    ("auto", None, True, True), ("auto", None, False, False),  # no plan: on with CUDA, off on CPU
])
def test_gradient_checkpointing_follows_recipe_then_plan(tiny, monkeypatch, value, env, cuda, expect):
    from jobs import speed

    if env is None:
        monkeypatch.delenv(Env.GRADIENT_CHECKPOINTING, raising=False)
    else:
        monkeypatch.setenv(Env.GRADIENT_CHECKPOINTING, env)
    recipe = make_recipe(*tiny, gradient_checkpointing=value)
    assert speed.gradient_checkpointing(recipe, cuda=cuda) is expect


def test_load_model_takes_the_plans_checkpointing_choice(tiny, monkeypatch):
    from jobs import model as jm

    recipe = make_recipe(*tiny, gradient_checkpointing="auto")
    tok = jm.load_tokenizer(recipe)
    monkeypatch.setenv(Env.GRADIENT_CHECKPOINTING, "1")
    assert jm.load_model(recipe, tok).is_gradient_checkpointing
    monkeypatch.setenv(Env.GRADIENT_CHECKPOINTING, "0")
    assert not jm.load_model(recipe, tok).is_gradient_checkpointing


def test_attention_is_flash_only_with_cuda_and_flash_attn(monkeypatch):
    from jobs import speed

    assert speed.attention_implementation(cuda=False) == "sdpa"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    assert speed.attention_implementation(cuda=True) == "sdpa"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real(name, *a))
    assert speed.attention_implementation(cuda=True) == "flash_attention_2"


def _liger_table():
    """liger_kernel's own MODEL_TYPE_TO_APPLY_LIGER_FN, or skip saying why."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"liger_kernel does not import here ({type(exc).__name__}: {exc}); it is installed in the "
                    "image only (docker/constraints.txt), not in CI")
    return MODEL_TYPE_TO_APPLY_LIGER_FN


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "gemma2", "mixtral", "phi3", "falcon", "gpt2"])
def test_auto_kernels_follow_ligers_own_family_table(tiny, model_type):
    from jobs import speed

    table = _liger_table()
    recipe = make_recipe(*tiny, kernels="auto")
    on, why = speed.use_liger(recipe, model_type, cuda=True)
    assert on is (model_type in table), why
    assert speed.use_liger(recipe, model_type, cuda=False)[0] is False  # never on CPU
    assert speed.use_liger(make_recipe(*tiny, kernels="none"), model_type, cuda=True)[0] is False


def test_forced_liger_is_an_error_where_it_cannot_run(tiny, monkeypatch):
    from jobs import speed

    recipe = make_recipe(*tiny, kernels="liger")
    with pytest.raises(UserError, match="train.kernels: liger, but no CUDA device"):
        speed.use_liger(recipe, "llama", cuda=False)
    # Without liger_kernel importable (as in CI): auto quietly off, liger an error naming the field.
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.monkey_patch", None)
    assert speed.liger_families() is None
    assert speed.use_liger(make_recipe(*tiny, kernels="auto"), "llama", cuda=True) == (
        False, "train.kernels: auto: off, liger_kernel is not installed (or does not import)")
    with pytest.raises(UserError, match="liger_kernel is not installed"):
        speed.use_liger(recipe, "llama", cuda=True)


def test_liger_decision_reads_the_table_from_the_module(tiny, monkeypatch):
    """The decision is the table's, whatever it holds (a fake module stands in for the wheel)."""
    from jobs import speed

    fake = types.ModuleType("liger_kernel.transformers.monkey_patch")
    fake.MODEL_TYPE_TO_APPLY_LIGER_FN = {"llama": object()}
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.monkey_patch", fake)
    recipe = make_recipe(*tiny, kernels="auto")
    assert speed.use_liger(recipe, "llama", cuda=True)[0] is True
    assert speed.use_liger(recipe, "mistral", cuda=True)[0] is False


def test_dataloader_workers_only_with_cuda():
    from jobs import speed

    assert speed.dataloader_kwargs(False) == {"dataloader_num_workers": 0, "dataloader_pin_memory": False}
    gpu = speed.dataloader_kwargs(True)
    assert gpu["dataloader_num_workers"] >= 1 and gpu["dataloader_pin_memory"] is True


def test_training_arguments_carry_the_switches(tiny, tmp_path):
    """What the Trainer receives: Liger on request (transformers applies it via
    liger's _apply_liger_kernel_to_instance), no workers on CPU, tf32 untouched without CUDA."""
    from jobs import speed
    from jobs.train import training_arguments

    recipe = make_recipe(*tiny)
    args, _ = training_arguments(recipe, tmp_path, 16, 0, 2, liger=True)
    assert args.use_liger_kernel is True and args.dataloader_num_workers == 0
    args, _ = training_arguments(recipe, tmp_path, 16, 0, 2)
    assert args.use_liger_kernel is False
    assert speed.enable_tf32() is False  # CPU: nothing to turn on


def test_token_count_survives_dataloader_workers(tiny):
    """With workers the collator runs in other processes; the count must still reach the
    callbacks in the training process (shared memory), as with workers on a CUDA host."""
    import torch

    from jobs.train import _TokenCounter
    from tests.jobs.test_train_support import token_rows

    rows = token_rows(12)

    def collate(features):
        n = max(len(f["input_ids"]) for f in features)
        return {"input_ids": torch.tensor([f["input_ids"] + [0] * (n - len(f["input_ids"])) for f in features])}

    counter = _TokenCounter(collate, pad_id=0)
    loader = torch.utils.data.DataLoader(rows, batch_size=4, collate_fn=counter, num_workers=2)
    assert sum(1 for _ in loader) == 3
    assert counter.tokens == sum(len(r["input_ids"]) for r in rows)
