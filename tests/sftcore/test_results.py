"""The results table in the reference format, from results.json files."""

from __future__ import annotations

import json

import pytest

from sftcore.errors import UserError
from sftcore.results import load_results, render_details, render_table

NAMES = [("arc_challenge", "ARC", "acc_norm", 25), ("hellaswag", "HellaSwag", "acc_norm", 10),
         ("mmlu", "MMLU", "acc", 5), ("truthfulqa_mc2", "TruthfulQA", "acc", 0),
         ("winogrande", "Winogrande", "acc", 5), ("gsm8k", "GSM8K", "exact_match", 5)]


def leaderboard_result(model: dict, values: list[float]) -> dict:
    tasks = [{"task": t, "name": n, "metric": m, "filter": "strict-match" if t == "gsm8k" else "none",
              "value": v, "stderr": 0.01, "shots": s, "samples": 100} for (t, n, m, s), v in zip(NAMES, values, strict=True)]
    return {"schema": 1, "model": model, "preset": "leaderboard-v1", "tasks": tasks,
            "scores": {t["name"]: t["value"] for t in tasks}, "average": sum(values) / len(values),
            "harness": {"name": "lm-eval", "version": "0.4.13"}}


def test_reference_table_with_base_row_first(tmp_path):
    base = leaderboard_result({"id": "meta-llama/Llama-2-70b-hf", "revision": "main"},
                              [0.6731, 0.8733, 0.6983, 0.4492, 0.8374, 0.3776])
    tuned = leaderboard_result({"id": "sftl-llama2-70b-ab12", "base_model": "meta-llama/Llama-2-70b-hf"},
                               [0.6962, 0.8682, 0.6918, 0.5743, 0.839, 0.2737])
    (tmp_path / "tuned").mkdir()
    (tmp_path / "tuned" / "results.json").write_text(json.dumps(tuned))
    (tmp_path / "base.json").write_text(json.dumps(base))
    table = render_table([load_results(tmp_path / "tuned"), load_results(tmp_path / "base.json")])
    assert table.splitlines() == [
        "| Model | Average | ARC | HellaSwag | MMLU | TruthfulQA | Winogrande | GSM8K |",
        "|---|---|---|---|---|---|---|---|",
        "| meta-llama/Llama-2-70b-hf | 65.15 | 67.31 | 87.33 | 69.83 | 44.92 | 83.74 | 37.76 |",
        "| sftl-llama2-70b-ab12 | 65.72 | 69.62 | 86.82 | 69.18 | 57.43 | 83.90 | 27.37 |",
    ]


def test_custom_tasks_get_a_generic_table_and_details():
    res = {"model": {"id": "m"}, "average": 0.5, "tasks": [
        {"task": "tiny_mc", "name": "tiny_mc", "metric": "acc", "filter": "none", "value": 0.75, "stderr": 0.05, "shots": 0, "samples": 100},
        {"task": "tiny_gen", "name": "tiny_gen", "metric": "exact_match", "filter": "strip", "value": 0.25, "stderr": None, "shots": 0, "samples": 100}]}
    assert render_table([res]).splitlines() == [
        "| Model | Average | tiny_mc (acc) | tiny_gen (exact_match) |",
        "|---|---|---|---|",
        "| m | 50.00 | 75.00 | 25.00 |",
    ]
    details = render_details(res).splitlines()
    assert details[2] == "| tiny_mc | acc | 0 | 100 | 75.00 | 5.00 |"
    assert details[3] == "| tiny_gen | exact_match (strip) | 0 | 100 | 25.00 |  |"


def test_bad_results_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no results.json"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(UserError, match="no `tasks` list"):
        load_results(tmp_path)
