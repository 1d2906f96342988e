"""Per-row validation and data.bad_rows: a bad conversation never trains silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sftcore.errors import UserError

pytestmark = pytest.mark.requires("transformers")

GOOD = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
BAD = [
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A1"},
                   {"role": "assistant", "content": "A2"}]}, "roles do not alternate"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "  "}]}, "empty answer"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                   {"role": "user", "content": "Q2"}]}, "no final answer"),
]


def _recipe(path: Path, bad_rows: str | None = None, fmt: str = "messages"):
    from sftcore.recipe import recipe_from_dict

    data = {"sources": [{"path": str(path), "format": fmt}], "template": "plain", "seq_len": 64, "eval_fraction": 0}
    if bad_rows:
        data["bad_rows"] = bad_rows
    return recipe_from_dict({"name": "t", "model": {"id": "sftlaunch/tiny-llama"}, "method": "full", "data": data,
                             "resources": {"clouds": ["local"]}, "eval": None}, base_dir=path.parent)


def _write(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row,reason", BAD)
def test_bad_conversation_is_an_error_naming_source_and_row(tmp_path, row, reason):
    from jobs.rows import load_rows

    path = _write(tmp_path, [GOOD, GOOD, row])
    with pytest.raises(UserError, match=r"rows\.jsonl: row 3: .*bad_rows: skip"):
        load_rows(_recipe(path))


def test_empty_dolphin_input_is_not_an_empty_user_turn(tmp_path):
    from jobs.rows import load_rows

    path = _write(tmp_path, [{"instruction": "Be kind.", "input": "", "output": "Hi."}])
    with pytest.raises(UserError, match=r"row 1: .*\(user\) is empty"):
        load_rows(_recipe(path, fmt="dolphin"))


def test_skip_counts_each_reason_and_says_so(tmp_path, capsys, shared_cache):
    from transformers import AutoTokenizer

    from jobs.data import build_datasets
    from jobs.rows import load_rows
    from jobs.tiny import ensure_tiny

    rows = [GOOD] * 3 + [r for r, _ in BAD] + [BAD[1][0]]
    path = _write(tmp_path, rows)
    skipped: dict = {}
    assert len(load_rows(_recipe(path, "skip"), skipped=skipped)) == 3
    assert skipped == {"roles do not alternate": 1, "empty answer": 2, "no final answer": 1}
    info: dict = {}
    build_datasets(_recipe(path, "skip"), AutoTokenizer.from_pretrained(ensure_tiny(shared_cache)), info=info)
    assert info["skipped"] == skipped
    out = capsys.readouterr().out
    assert "data: skipped 4 bad rows (empty answer 2, no final answer 1, roles do not alternate 1" in out


def test_data_preview_shows_the_skipped_rows(tmp_path, shared_cache):
    import yaml

    from jobs.tiny import ensure_tiny
    from launcher.cli import cli

    ensure_tiny(shared_cache)
    _write(tmp_path, [GOOD] * 4 + [BAD[0][0]])
    recipe = {"name": "t", "model": {"id": "sftlaunch/tiny-llama"}, "method": "full",
              "data": {"sources": [{"path": "rows.jsonl", "format": "messages"}], "seq_len": 64, "bad_rows": "skip"},
              "resources": {"clouds": ["local"]}, "eval": None}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(cli, ["data-preview", str(tmp_path / "r.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    assert got["totals"]["skipped"] == {"roles do not alternate": 1}
    assert got["sources"][0]["skipped"] == {"roles do not alternate": 1}
    result = CliRunner().invoke(cli, ["data-preview", str(tmp_path / "r.yaml")])
    assert result.exit_code == 0 and "skipped" in result.output
    assert "data: skipped 1 bad row (roles do not alternate 1; data.bad_rows: skip)" in result.output
    recipe["data"]["bad_rows"] = "error"
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(cli, ["data-preview", str(tmp_path / "r.yaml")])
    assert result.exit_code == 2 and "rows.jsonl: row 5: roles must alternate" in result.output


def test_airoboros_preformatted_rows_are_not_wrapped_in_the_template(tmp_path, shared_cache):
    from transformers import AutoTokenizer

    from jobs.data import IGNORE, tokenize_row
    from jobs.rows import load_rows
    from jobs.tiny import ensure_tiny

    tok = AutoTokenizer.from_pretrained(ensure_tiny(shared_cache))
    text = "A chat.\nUSER: Reverse the words. fig plum\nASSISTANT:"
    path = _write(tmp_path, [{"instruction": text, "response": " plum fig", "skip_prompt_formatting": True}])
    for template in ("plain", "llama2-chat", "chatml"):
        recipe = _recipe(path, fmt="airoboros")
        recipe.data.template = template
        (row,) = load_rows(recipe)
        ids, labels = tokenize_row(row, recipe, tok)
        assert tok.decode(ids) == text + "\n plum fig</s>"  # no [INST], no <|im_start|>: as its authors wrote it
        trained = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE]
        assert tok.decode(trained) == " plum fig</s>"


def test_a_source_whose_every_row_is_bad_says_so(tmp_path):
    from jobs.rows import load_rows

    path = _write(tmp_path, [BAD[0][0], BAD[1][0]])
    with pytest.raises(UserError, match=r"rows\.jsonl: every row was skipped as bad \(data: skipped 2 bad rows"):
        load_rows(_recipe(path, "skip"))
