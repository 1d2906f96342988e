"""The tiny model: built once per cache, reused, and its tokenizer round-trips with pad != eos."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.requires("transformers")


def test_tiny_builds_caches_and_roundtrips(shared_cache):
    from transformers import AutoConfig, AutoTokenizer

    from jobs.tiny import TINY_MODEL_ID, ensure_tiny

    path = ensure_tiny()
    assert path.parent == shared_cache
    files = sorted(p.name for p in path.iterdir())
    mtimes = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    t0 = time.perf_counter()
    again = ensure_tiny()
    assert again == path and time.perf_counter() - t0 < 1.0
    assert sorted(p.name for p in path.iterdir()) == files
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == mtimes  # not rebuilt
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    text = "Reverse the words. kiwi fig plum\nplum fig kiwi — and ünïcode!"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.chat_template
    cfg = AutoConfig.from_pretrained(path)
    assert cfg.model_type == "llama" and cfg.vocab_size >= len(tok)
    assert TINY_MODEL_ID == "sftlaunch/tiny-llama"
