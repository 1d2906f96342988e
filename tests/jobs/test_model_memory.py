"""What jobs.model allocates when it loads a model, against the planner's memory terms.

Measured: the bytes of every distinct tensor storage the loaded model holds — parameters, buffers
and the 4-bit quantisation state (absmax, nested absmax, code book) bitsandbytes keeps beside each
Linear4bit weight. That is what stays allocated after the load, not the allocator's transient peak
during it (CPU has no allocator statistics; on a GPU torch.cuda.max_memory_allocated would add
the load's transient copies). Planner: launcher.estimate.memory's `weights` term, plus the fp32
LoRA adapter weights it counts among the trainable bytes (4 of its 16 bytes per adapter parameter).
"""

from __future__ import annotations

import pytest

from tests.jobs.test_train_support import recipe_dict, write_data

pytestmark = pytest.mark.requires("peft")


def held_bytes(model) -> int:
    storages: dict[int, int] = {}

    def add(t):
        if t is not None:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    for t in [*model.parameters(), *model.buffers()]:
        add(t)
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            for t in (state.absmax, state.code, getattr(state, "offset", None)):
                add(t)
            if getattr(state, "state2", None) is not None:
                add(state.state2.absmax)
                add(state.state2.code)
    return sum(storages.values())


def _recipe(model_dir, data, method):
    from sftcore.recipe import recipe_from_dict

    d = recipe_dict(model_dir, data, precision="bf16")
    d["method"] = method
    if method != "full":
        d["lora"] = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
    if method == "qlora":
        d["quantization"] = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    return recipe_from_dict(d)


def planned_load_bytes(recipe) -> float:
    from launcher.estimate import memory as estimate

    mem = estimate.memory(recipe)
    adapters = 0.0
    if recipe.method != "full":
        shape = estimate._shape(recipe)
        adapters = estimate.lora_params(shape, recipe.lora.target_modules, recipe.lora.r) * 4
    return mem.weights * estimate.GB + adapters


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_loaded_bytes_match_the_planner_within_10_percent(method, shared_cache, tmp_path, capsys):
    from jobs import model as jm
    from jobs.tiny import ensure_tiny

    recipe = _recipe(ensure_tiny(shared_cache), write_data(tmp_path / "d.jsonl"), method)
    tok = jm.load_tokenizer(recipe)
    measured = held_bytes(jm.load_model(recipe, tok))
    planned = planned_load_bytes(recipe)
    with capsys.disabled():
        print(f"\n{method}: planned {planned / 1e6:.3f} MB, measured {measured / 1e6:.3f} MB "
              f"({100 * (measured / planned - 1):+.1f}%)")
    assert abs(measured / planned - 1) <= 0.10


def test_lora_base_is_in_the_compute_dtype_and_adapters_in_fp32(shared_cache, tmp_path):
    """the frozen LoRA base was loaded in fp32 (4 bytes per parameter, planned 2)."""
    import torch

    from jobs import model as jm
    from jobs.tiny import ensure_tiny

    recipe = _recipe(ensure_tiny(shared_cache), write_data(tmp_path / "d.jsonl"), "lora")
    model = jm.load_model(recipe, jm.load_tokenizer(recipe))
    dtypes = {p.dtype for n, p in model.named_parameters() if "lora_" not in n}
    assert dtypes == {torch.bfloat16}
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}
    recipe.train.precision = "fp16"
    model = jm.load_model(recipe, jm.load_tokenizer(recipe))
    assert {p.dtype for n, p in model.named_parameters() if "lora_" not in n} == {torch.float16}
