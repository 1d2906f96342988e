"""`sftlaunch data-preview` on the tiny recipe: stats, samples with the trained part, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.requires("transformers")

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "recipes" / "tiny-local.yaml")


def test_preview_tiny_table_and_samples():
    from launcher.cli import cli

    res = CliRunner().invoke(cli, ["data-preview", TINY, "--samples", "2"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "tokens mean" in res.output and "dolphin" in res.output and "3000" in res.output
    assert "packed:" in res.output and "fill" in res.output and "padding without packing" in res.output
    assert res.output.count("sample ") == 2 and "Reverse the words." in res.output and "</s>" in res.output


def test_preview_json_trained_part_is_the_answer():
    from launcher.cli import cli

    res = CliRunner().invoke(cli, ["data-preview", TINY, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["totals"]["packed_fill_pct"] >= 97 and out["totals"]["truncated_pct"] == 0
    assert out["sources"][0]["rows"] == 3000 and out["sources"][0]["max"] <= 256
    assert len(out["samples"]) == 3
    for s in out["samples"]:
        prompt, answer = s["text"].split("\n", 1)
        assert prompt.startswith("Reverse the words. ")
        assert s["trained"] == answer  # the answer and its EOS, nothing of the prompt
        assert s["trained"].endswith("</s>")


def test_preview_hub_model_offline_is_a_clear_error(tmp_path, capsys):
    from launcher.cli import main

    recipe = tmp_path / "r.yaml"
    text = Path(TINY).read_text().replace("id: sftlaunch/tiny-llama", "id: nobody/not-a-model")
    text = text.replace("data/tiny-task/train.jsonl", str(REPO / "recipes/data/tiny-task/train.jsonl"))
    text = text.replace("tasks_dir: ../jobs/tasks", f"tasks_dir: {REPO / 'jobs/tasks'}")
    recipe.write_text(text)
    with pytest.raises(SystemExit) as exc:
        main(["data-preview", str(recipe)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "model.id" in err and "nobody/not-a-model" in err and "local model directory" in err
    assert "Traceback" not in err


def test_every_sample_dropped_is_exit_2_like_train(tmp_path, capsys):
    """A seq_len the prompts fill leaves nothing to train on: train stops with exit 2, and so
    must the preview (same message), rather than show an empty table."""
    import yaml

    from jobs.data import no_samples_message
    from launcher.cli import main
    from sftcore.recipe import load_recipe

    data = load_recipe(TINY).resolved_dict()
    data["data"]["seq_len"] = 4
    recipe = tmp_path / "short.yaml"
    recipe.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as exc:
        main(["data-preview", str(recipe)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {no_samples_message(load_recipe(recipe))}"]
