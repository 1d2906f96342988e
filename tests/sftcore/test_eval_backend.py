"""sftcore.eval_backend: which lm-eval backend runs (the planner's and the job's one rule), and the
recipe rule that refuses `eval.backend: vllm` where vLLM cannot score the model."""

from __future__ import annotations

import pytest

from sftcore.errors import RecipeError
from sftcore.eval_backend import VLLM_LORA_RANKS, BackendError, choose, max_lora_rank
from sftcore.recipe import recipe_from_dict


def test_auto_takes_vllm_only_where_it_can_run():
    assert choose("auto", cuda=True) == ("vllm", "auto: vLLM on this GPU")
    assert choose("auto", cuda=False)[0] == "hf"  # CPU: the HF path, as before
    assert choose("auto", cuda=True, capable=False) == (
        "hf", "auto: vLLM's bf16 kernels need compute capability 8.0+ (Ampere or newer)")
    assert choose("auto", cuda=True, load_4bit=True)[0] == "hf"
    assert choose("auto", cuda=True, lora_r=512)[0] == "vllm"
    assert choose("auto", cuda=True, lora_r=1024) == (
        "hf", "auto: LoRA rank 1024 is above vLLM's largest max_lora_rank 512")
    assert choose("hf", cuda=True) == ("hf", "eval.backend hf")


def test_vllm_by_name_where_it_cannot_run_says_why_and_the_fix():
    assert choose("vllm", cuda=True, capable=False)[0] == "vllm"  # vLLM itself runs fp16 there
    for kw, why in (({"cuda": False}, "needs an NVIDIA GPU"), ({"cuda": True, "load_4bit": True}, "load_4bit"),
                    ({"cuda": True, "lora_r": 600}, "LoRA rank 600")):
        with pytest.raises(BackendError, match=why) as exc:
            choose("vllm", **kw)
        assert str(exc.value).endswith("set eval.backend to auto or hf")
    with pytest.raises(BackendError, match="use one of auto, vllm, hf"):
        choose("tgi", cuda=True)


def test_max_lora_rank_is_the_smallest_vllm_rank_that_holds_the_adapter():
    assert [max_lora_rank(r) for r in (1, 2, 8, 16, 17, 64, 300, 320, 321, 512)] == [
        1, 8, 8, 16, 32, 64, 320, 320, 512, 512]
    assert list(VLLM_LORA_RANKS) == sorted(VLLM_LORA_RANKS)
    with pytest.raises(BackendError, match="above vLLM's largest max_lora_rank 512"):
        max_lora_rank(513)


def _data(ev: dict, method: str = "lora", r: int = 16, clouds=("runpod",), gpu="auto") -> dict:
    data = {"name": "t", "model": {"id": "org/m"}, "method": method,
            "data": {"sources": [{"path": "ehartford/dolphin", "format": "dolphin"}]},
            "resources": {"clouds": list(clouds), "gpu": gpu}, "eval": {"preset": "leaderboard-v2", **ev}}
    if method != "full":
        data["lora"] = {"r": r, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj"]}
    return data


def _problems(data: dict) -> list[str]:
    try:
        recipe_from_dict(data)
    except RecipeError as exc:
        return exc.problems
    return []


def test_recipe_backend_defaults_to_auto_and_vllm_is_refused_where_it_cannot_run():
    assert recipe_from_dict(_data({})).eval.backend == "auto"
    assert _problems(_data({"backend": "vllm"})) == []
    assert _problems(_data({"backend": "auto", "load_4bit": True})) == []  # auto falls back to hf
    (p,) = _problems(_data({"backend": "vllm", "load_4bit": True}))
    assert ": eval.backend: " in p and "load_4bit" in p and p.endswith("set eval.backend to auto or hf")
    (p,) = _problems(_data({"backend": "vllm"}, r=1024))
    assert "LoRA rank 1024" in p
    assert _problems(_data({"backend": "vllm"}, method="full", r=1024)) == []  # no adapter in a full run
    (p,) = _problems(_data({"backend": "vllm"}, clouds=("local",)))
    assert "needs an NVIDIA GPU" in p
    assert _problems(_data({"backend": "vllm"}, clouds=("local",), gpu="RTX4090:1")) == []
    (p,) = _problems(_data({"backend": "tgi"}))
    assert ": eval.backend: " in p
