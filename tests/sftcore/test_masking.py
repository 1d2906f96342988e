"""Masking and launch-time secret collection."""

from __future__ import annotations

from sftcore.masking import MASK, launch_secrets, mask, mask_obj


def test_mask_replaces_values_from_the_environment(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("RUNPOD_API_KEY", "rp-key-value")
    text = "wandb 0123456789abcdef0123456789abcdef01234567 runpod rp-key-value"
    assert mask(text) == f"wandb {MASK} runpod {MASK}"
    assert mask_obj({"a": [text, 3], "b": None}) == {"a": [f"wandb {MASK} runpod {MASK}", 3], "b": None}


def test_mask_catches_token_shapes_without_env():
    assert "hf_abcdefghijklmnopqrstuvwxyz" not in mask("push with hf_abcdefghijklmnopqrstuvwxyz now")
    assert mask("a short value: abc") == "a short value: abc"
    assert mask(None) is None and mask(5) == 5


def test_launch_secrets_reports_missing(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_value_for_launch_only_0000")
    present, missing = launch_secrets(["HF_TOKEN", "WANDB_API_KEY"])
    assert present == {"HF_TOKEN": "hf_value_for_launch_only_0000"} and missing == ["WANDB_API_KEY"]
