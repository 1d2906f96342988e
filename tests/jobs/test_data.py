"""Formatters on every shipped schema file, loading paths, mixing, splits, packing and bad data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftcore.errors import UserError

DATA = Path(__file__).resolve().parents[2] / "recipes" / "data"


def _recipe(sources, **data):
    from sftcore.recipe import recipe_from_dict

    spec = {"sources": sources, "template": "plain", "seq_len": 128, "packing": True, "eval_fraction": 0.1}
    spec.update(data)
    return recipe_from_dict(
        {"name": "t", "model": {"id": "sftlaunch/tiny-llama"}, "method": "full", "data": spec,
         "train": {"seed": 3}, "resources": {"clouds": ["local"]}, "eval": None},
        base_dir=DATA,
    )


@pytest.fixture(scope="module")
def tok(shared_cache):
    transformers = pytest.importorskip("transformers")
    from jobs.tiny import ensure_tiny

    return transformers.AutoTokenizer.from_pretrained(ensure_tiny(shared_cache))


SHIPPED = [
    ("dolphin.jsonl", "dolphin"), ("dolphin.parquet", "dolphin"), ("airoboros.jsonl", "airoboros"),
    ("open-platypus.jsonl", "platypus"), ("alpaca.jsonl", "alpaca"), ("alpaca.json", "alpaca"),
    ("guanaco.jsonl", "guanaco"), ("slimorca.jsonl", "slimorca"), ("messages.jsonl", "messages"),
    ("messages-dir", "messages"), ("text.jsonl", "text"), ("tiny-task/train.jsonl", "alpaca"),
]


@pytest.mark.parametrize("path,fmt", SHIPPED)
def test_every_shipped_file_formats(path, fmt):
    from jobs.rows import load_rows

    rows = load_rows(_recipe([{"path": path, "format": fmt}]))
    assert len(rows) >= 50
    for row in rows:
        if fmt == "text":
            assert row["text"].strip()
            continue
        if "prompt" in row:  # airoboros skip_prompt_formatting: kept as its authors formatted it
            assert fmt == "airoboros" and row["prompt"].endswith("\n") and row["completion"].strip()
            continue
        roles = [m["role"] for m in row["messages"]]
        body = roles[1:] if roles[0] == "system" else roles
        assert body[0] == "user" and body[-1] == "assistant"
        assert all(m["content"].strip() for m in row["messages"])
    if fmt == "guanaco":
        assert any(len(r["messages"]) == 4 for r in rows)  # multi-turn rows survive


def test_dolphin_and_alpaca_mapping():
    from sftcore.formats import fmt_airoboros, fmt_alpaca, fmt_dolphin

    m = fmt_dolphin({"instruction": "You are kind.", "input": "Q?", "output": "A."})["messages"]
    assert m == [{"role": "system", "content": "You are kind."}, {"role": "user", "content": "Q?"},
                 {"role": "assistant", "content": "A."}]
    # Stanford Alpaca's prompt puts the input in its own block after the instruction (PROMPT_DICT
    # "prompt_input": "### Instruction:\n{instruction}\n\n### Input:\n{input}"), never joined by a space.
    assert fmt_alpaca({"instruction": "Do", "input": "x", "output": "y"})["messages"][0]["content"] == "Do\n\nx"
    assert fmt_alpaca({"instruction": "Do", "input": "", "output": "y"})["messages"][0]["content"] == "Do"
    # airoboros' own trainer (jondurbin/qlora) uses a skip_prompt_formatting row's instruction
    # verbatim (stripped, plus a newline) and adds no chat markup.
    text = "A chat.\nUSER: Hi\nASSISTANT: Hello.\nUSER: Bye\nASSISTANT:"
    row = {"system": "S", "instruction": text + "  ", "response": "Goodbye.", "skip_prompt_formatting": True}
    assert fmt_airoboros(row) == {"prompt": text + "\n", "completion": "Goodbye."}
    row["skip_prompt_formatting"] = False
    assert [x["role"] for x in fmt_airoboros(row)["messages"]] == ["system", "user", "assistant"]


def test_mixing_max_samples_and_deterministic_shuffle():
    from jobs.rows import load_rows

    srcs = [{"path": "dolphin.jsonl", "format": "dolphin", "max_samples": 7},
            {"path": "slimorca.jsonl", "format": "slimorca", "max_samples": 5}]
    a = load_rows(_recipe(srcs))
    assert len(a) == 12
    assert a == load_rows(_recipe(srcs))
    from sftcore.recipe import recipe_from_dict

    other = _recipe(srcs).resolved_dict()
    other["train"]["seed"] = 4
    b = load_rows(recipe_from_dict(other, base_dir=DATA))
    assert b != a


def test_eval_split():
    from jobs.rows import split_rows

    rows = list(range(100))
    train, ev = split_rows(rows, 0.1, seed=1)
    assert len(ev) == 10 and len(train) == 90 and sorted(train + ev) == rows
    assert split_rows(rows, 0.1, seed=1) == (train, ev)
    assert split_rows(rows, 0.0, seed=1) == (rows, [])


def test_packing_positions_restart_and_labels_do_not_cross(tok):
    from jobs.data import IGNORE, build_datasets

    train, ev = build_datasets(_recipe([{"path": "tiny-task/train.jsonl", "format": "alpaca", "max_samples": 200}]), tok)
    assert ev and all(len(s["input_ids"]) <= 128 for s in train)
    seq = train[0]
    starts = [i for i, p in enumerate(seq["position_ids"]) if p == 0]
    assert len(starts) > 3  # several samples share the row
    for s, e in zip(starts, starts[1:] + [len(seq["position_ids"])], strict=True):
        assert seq["position_ids"][s:e] == list(range(e - s))
        assert seq["labels"][s] == IGNORE  # never predict a sample's first token from the previous one
        # Each sample ends with a trained EOS (pad is a different id, so EOS is learned).
        assert seq["input_ids"][e - 1] == tok.eos_token_id and seq["labels"][e - 1] == tok.eos_token_id
    assert tok.pad_token_id != tok.eos_token_id


def test_packed_samples_do_not_attend_to_each_other(tok, shared_cache):
    """Logits of a packed row equal those of each sample alone (sdpa and eager, no attention_mask)."""
    import torch
    from transformers import AutoModelForCausalLM

    from jobs.data import build_datasets, make_collator, prepare_model_for_packing
    from jobs.tiny import ensure_tiny

    recipe = _recipe([{"path": "tiny-task/train.jsonl", "format": "alpaca", "max_samples": 40}], seq_len=64)
    train, _ = build_datasets(recipe, tok)
    for impl in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(ensure_tiny(shared_cache), attn_implementation=impl).eval()
        assert prepare_model_for_packing(model, recipe) == impl and model.config.use_cache is False
        batch = make_collator(recipe, tok, impl)(train[:2])
        assert "attention_mask" not in batch
        with torch.no_grad():
            packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
            pos = batch["position_ids"][0].tolist()
            s = [i for i, p in enumerate(pos) if p == 0][1]
            e = s + next((j for j, p in enumerate(pos[s + 1:], 1) if p == 0), len(pos) - s)
            alone = model(input_ids=batch["input_ids"][:, s:e]).logits[0]
        torch.testing.assert_close(packed[s:e], alone, atol=1e-4, rtol=1e-4)
        # The trap prepare_model_for_packing avoids: with the KV cache on, samples leak into each other.
        with torch.no_grad():
            leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits[0]
        assert (leaky[s:e] - alone).abs().max() > 1e-3


def test_padded_collator(tok):
    from jobs.data import IGNORE, build_datasets, make_collator

    recipe = _recipe([{"path": "alpaca.jsonl", "format": "alpaca"}], packing=False)
    train, _ = build_datasets(recipe, tok)
    batch = make_collator(recipe, tok)(train[:4])
    lens = [len(f["input_ids"]) for f in train[:4]]
    assert batch["input_ids"].shape == (4, max(lens))
    for i, n in enumerate(lens):
        assert batch["attention_mask"][i].sum() == n
        assert (batch["labels"][i, n:] == IGNORE).all() and (batch["input_ids"][i, n:] == tok.pad_token_id).all()


def test_flash_collator_flattens(tok):
    from jobs.data import build_datasets, make_collator

    recipe = _recipe([{"path": "tiny-task/train.jsonl", "format": "alpaca", "max_samples": 50}])
    train, _ = build_datasets(recipe, tok)
    batch = make_collator(recipe, tok, "flash_attention_2")(train[:2])
    assert batch["input_ids"].shape == (1, len(train[0]["input_ids"]) + len(train[1]["input_ids"]))


def test_truncation_and_stats(tok):
    from jobs.data import data_stats

    stats = data_stats(_recipe([{"path": "text.jsonl", "format": "text"}], seq_len=40), tok)
    assert stats["truncated_pct"] > 0 and 0 < stats["packed_fill_pct"] <= 100
    stats = data_stats(_recipe([{"path": "tiny-task/train.jsonl", "format": "alpaca"}], seq_len=256), tok)
    assert stats["truncated_pct"] == 0 and stats["packed_fill_pct"] >= 97


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    "name,text,fmt,expect",
    [
        ("a.jsonl", '{"instruction": "x", "input": ""}\n', "alpaca", r"a\.jsonl: row 1: .*'output'"),
        ("b.jsonl", '{"instruction": "x"}\n{bad\n', "alpaca", r"b\.jsonl: row 2: invalid JSON"),
        ("c.jsonl", '{"text": "### Human: hi"}\n', "guanaco", r"c\.jsonl: row 1: field 'text'"),
        ("d.jsonl", '{"conversations": [{"from": "robot", "value": "x"}]}\n', "slimorca", r"conversations\[0\]"),
        ("e.jsonl", "\n", "alpaca", r"e\.jsonl: the data source has no rows"),
        ("f.json", "{not json", "alpaca", r"f\.json: row 1: invalid JSON"),
        ("g.parquet", "not parquet", "alpaca", r"g\.parquet: not a readable parquet file"),
    ],
)
def test_bad_data_is_one_clear_error(tmp_path, name, text, fmt, expect):
    from jobs.rows import load_rows

    path = _write(tmp_path, name, text)
    with pytest.raises(UserError, match=expect):
        load_rows(_recipe([{"path": path, "format": fmt}]))


def test_json_rows_are_numbered(tmp_path):
    from jobs.rows import load_rows

    path = _write(tmp_path, "h.json", json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    with pytest.raises(UserError, match=r"h\.json: row 2: .*'output'"):
        load_rows(_recipe([{"path": path, "format": "alpaca"}]))


def _samples_of(row: dict) -> list[dict]:
    """The samples a packed row holds, split where its position ids restart."""
    pos = row["position_ids"]
    starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
    return [{k: row[k][s:e] for k in ("input_ids", "labels")} for s, e in zip(starts, starts[1:], strict=False)]


def test_flattened_batch_equals_transformers_data_collator_with_flattening(tok):
    """The flash layout is transformers' own padding-free layout: DataCollatorWithFlattening fed
    the same samples gives the same input_ids, position_ids and labels (-100 at each start)."""
    from transformers import DataCollatorWithFlattening

    from jobs.data import build_datasets, make_collator

    recipe = _recipe([{"path": "tiny-task/train.jsonl", "format": "alpaca", "max_samples": 60}])
    train, _ = build_datasets(recipe, tok)
    ours = make_collator(recipe, tok, "flash_attention_2")(train[:3])
    theirs = DataCollatorWithFlattening(return_tensors="pt")([s for row in train[:3] for s in _samples_of(row)])
    assert set(ours) == {"input_ids", "labels", "position_ids"}
    for key in ("input_ids", "labels", "position_ids"):
        assert ours[key].tolist() == theirs[key].tolist(), key


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_packed_loss_equals_the_separate_loss(tok, shared_cache, impl):
    """The loss the Trainer takes on a packed micro-batch (sum over trained tokens / their count,
    its num_items_in_batch) equals that of the same samples run one by one, for both packed
    layouts: one row per packed sequence (block-diagonal mask from the position ids) and the
    flattened padding-free row; on the tiny model, CPU, eager and sdpa."""
    import torch
    from transformers import AutoModelForCausalLM

    from jobs.data import IGNORE, build_datasets, make_collator, prepare_model_for_packing
    from jobs.tiny import ensure_tiny

    recipe = _recipe([{"path": "tiny-task/train.jsonl", "format": "alpaca", "max_samples": 60}], seq_len=96)
    train, _ = build_datasets(recipe, tok)
    model = AutoModelForCausalLM.from_pretrained(ensure_tiny(shared_cache), attn_implementation=impl).eval()
    prepare_model_for_packing(model, recipe)
    rows = train[:3]
    samples = [s for row in rows for s in _samples_of(row)]
    assert len(samples) > len(rows)  # several samples share a row

    def summed(batch):
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], position_ids=batch.get("position_ids")).logits.float()
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE,
                                                 reduction="sum")
        return loss, int((labels != IGNORE).sum())

    alone = [summed({k: torch.tensor([s[k]]) for k in ("input_ids", "labels")}) for s in samples]
    expect = sum(x for x, _ in alone) / sum(n for _, n in alone)
    for flatten in (False, True):
        batch = make_collator(recipe, tok, impl, flatten=flatten)(rows)
        assert "attention_mask" not in batch and batch["input_ids"].shape[0] == (1 if flatten else len(rows))
        total, n = summed(batch)
        assert n == sum(k for _, k in alone)
        torch.testing.assert_close(total / n, expect, atol=1e-5, rtol=1e-5)
        # The model's own loss (transformers' ForCausalLMLoss, as the Trainer calls it) agrees.
        with torch.no_grad():
            own = model(**batch, num_items_in_batch=torch.tensor(n)).loss
        torch.testing.assert_close(own, expect, atol=1e-5, rtol=1e-5)
