"""The leaderboard-v2 preset: resolved in lm-eval's own registry, and normalized as the Open LLM
Leaderboard v2 did (https://huggingface.co/docs/leaderboards/open_llm_leaderboard/normalization)."""

from __future__ import annotations

import json

import pytest

from jobs import evaluate
from sftcore.leaderboard import BBH_CHOICES, BENCHES, COLUMNS, MUSR_CHOICES, normalize, reduce_v2, v2_average
from sftcore.results import load_results, render_details, render_table


@pytest.fixture(scope="module")
def registry():
    """lm-eval's task index (YAML configs only; no dataset is downloaded)."""
    return evaluate.task_manager(None).task_index


def test_v2_preset_resolves_in_the_harness_registry_with_its_own_settings(registry):
    preset = evaluate.PRESETS["leaderboard-v2"]
    assert [p.task for p in preset] == ["leaderboard_ifeval", "leaderboard_bbh", "leaderboard_math_hard",
                                        "leaderboard_gpqa", "leaderboard_musr", "leaderboard_mmlu_pro"]
    evaluate.check_tasks([p.task for p in preset], evaluate.task_manager(None, [p.task for p in preset]))
    for p in preset:
        entry = registry[p.task]
        leaves = entry.cfg["task"] if entry.kind.name == "GROUP" else [p.task]
        for leaf in leaves:
            cfg = registry[leaf].cfg
            assert p.metric in [m["metric"] for m in cfg["metric_list"]], (leaf, p.metric)
            # The leaderboard ran each task at its config's shot count (MuSR's leaves set none: 0).
            assert (cfg.get("num_fewshot") or 0) == p.shots, (leaf, cfg.get("num_fewshot"), p.shots)
    # The subtasks the leaderboard normalized one by one are exactly the harness's group members.
    assert registry["leaderboard_bbh"].cfg["task"] == [f"leaderboard_bbh_{s}" for s in BBH_CHOICES]
    assert registry["leaderboard_musr"].cfg["task"] == [f"leaderboard_musr_{s}" for s in MUSR_CHOICES]
    # IFEval's score uses both strict accuracies, which its config reports.
    ifeval = [m["metric"] for m in registry["leaderboard_ifeval"].cfg["metric_list"]]
    assert {"prompt_level_strict_acc", "inst_level_strict_acc"} <= set(ifeval)
    assert "leaderboard-v2" in evaluate.CHAT_PRESETS


def test_random_baselines_are_the_harness_choice_counts(registry):
    # BBH and GPQA list their choices in the task config; the table must agree with it.
    for sub, n in BBH_CHOICES.items():
        assert len(registry[f"leaderboard_bbh_{sub}"].cfg["doc_to_choice"]) == n, sub
    for leaf in registry["leaderboard_gpqa"].cfg["task"]:
        assert len(registry[leaf].cfg["doc_to_choice"]) == next(b.choices for b in BENCHES if b.name == "GPQA")


def test_reproduces_the_leaderboard_documentation_worked_examples():
    # "Example: Normalizing GPQA Scores": raw 0.6, lower bound 0.25 -> "Normalized GPQA score: 46.67".
    assert f"{normalize(0.6, 0.25):.2f}" == "46.67"
    # Its MuSR example: murder mysteries 0.7 (lower 0.5), object placement 0.4 (0.2), team
    # allocation 0.6 (0.333), then the plain mean. The page rounds 1/3 to 0.333 (-> 40.03 and
    # 35.01); with the exact 1/3 of three choices it is 40.00 and 35.00.
    subs = [normalize(0.7, 0.5), normalize(0.4, 0.2), normalize(0.6, 0.333)]
    assert [f"{s:.2f}" for s in subs] == ["40.00", "25.00", "40.03"]
    assert f"{sum(subs) / 3:.2f}" == "35.01"
    results = _harness(lambda name, n: {"leaderboard_musr_murder_mysteries": 0.7, "leaderboard_musr_object_placements": 0.4,
                                        "leaderboard_musr_team_allocation": 0.6}.get(name, 1.0))
    musr = next(r for r in reduce_v2(results) if r["name"] == "MuSR")
    assert musr["normalized"] == pytest.approx((40 + 25 + 40) / 3)
    # Below the baseline is 0, not negative.
    assert normalize(0.2, 0.25) == 0.0


def _harness(value) -> dict:
    """A harness-shaped output for the six v2 tasks, `value(task, num_choices)` per leaf metric."""
    results, groups, samples = {}, {}, {}
    for b in BENCHES:
        if b.subtasks:
            groups[b.task] = [b.prefix + s for s in b.subtasks]
            for s, n in b.subtasks.items():
                results[b.prefix + s] = {f"{b.metric},none": value(b.prefix + s, n)}
                samples[b.prefix + s] = {"original": 250, "effective": 250}
        else:
            results[b.task] = {f"{m},none": value(b.task, b.choices or 0) for m in b.metrics}
            samples[b.task] = {"original": 500, "effective": 500}
    return {"results": results, "group_subtasks": groups, "n-samples": samples}


def _results_json(tmp_path, name, harness: dict) -> dict:
    """A hand-made results.json as jobs.evaluate writes it, read back as the table does."""
    rows = reduce_v2(harness)
    avg = v2_average(rows)
    doc = {"schema": 1, "model": {"id": name}, "preset": "leaderboard-v2", "tasks": rows,
           "scores": {r["name"]: r["value"] for r in rows}, "average": avg / 100, "normalized_average": avg}
    path = tmp_path / name / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc))
    return load_results(path)


@pytest.mark.parametrize("bench", [b.name for b in BENCHES])
def test_each_benchmark_random_baseline_is_0_and_perfect_is_100(bench, tmp_path):
    b = next(x for x in BENCHES if x.name == bench)
    random = _harness(lambda task, n: 1 / n if n else 0.0)
    perfect = _harness(lambda task, n: 1.0)
    r_rows = {r["name"]: r for r in _results_json(tmp_path, "random", random)["tasks"]}
    p_rows = {r["name"]: r for r in _results_json(tmp_path, "perfect", perfect)["tasks"]}
    assert r_rows[bench]["normalized"] == pytest.approx(0.0, abs=1e-9)
    assert p_rows[bench]["normalized"] == pytest.approx(100.0)
    if b.subtasks:  # normalized per subtask, as the leaderboard did
        assert set(r_rows[bench]["subtasks"]) == set(b.subtasks)
        assert r_rows[bench]["value"] > 0 or bench == "IFEval"  # the raw mean is above 0
    # Halfway between baseline and perfect is 50, whatever the baseline.
    half = _harness(lambda task, n: (1 / n + 1) / 2 if n else 0.5)
    assert {r["name"]: r for r in reduce_v2(half)}[bench]["normalized"] == pytest.approx(50.0)


def test_ifeval_is_the_mean_of_prompt_and_instruction_strict_accuracy():
    def value(task, n):
        return 1 / n if n else 0.0

    h = _harness(value)
    h["results"]["leaderboard_ifeval"].update({"prompt_level_strict_acc,none": 0.40, "inst_level_strict_acc,none": 0.52,
                                               "prompt_level_loose_acc,none": 0.9})
    row = next(r for r in reduce_v2(h) if r["name"] == "IFEval")
    assert row["value"] == pytest.approx(0.46) and row["normalized"] == pytest.approx(46.0)
    assert row["components"] == {"prompt_level_strict_acc": 0.40, "inst_level_strict_acc": 0.52}


def test_table_shows_raw_normalized_and_the_v2_average(tmp_path):
    h = _harness(lambda task, n: 0.5 if n == 0 else min(1.0, 1 / n + 0.2))
    result = _results_json(tmp_path, "me/model", h)
    table = render_table([result])
    head, _, row = table.splitlines()
    assert head.startswith("| Model | v2 Average | IFEval | BBH |") and "MMLU-Pro (raw)" in head
    cells = [c.strip() for c in row.strip("|").split("|")]
    normalized = [float(c) for c in cells[2:2 + len(COLUMNS)]]
    assert float(cells[1]) == pytest.approx(sum(normalized) / len(normalized), abs=0.01)
    assert cells[2 + COLUMNS.index("IFEval")] == "50.00" and cells[2 + len(COLUMNS) + COLUMNS.index("IFEval")] == "50.00"
    # GPQA raw 0.45 (0.25 + 0.2): normalized (0.45 - 0.25) / 0.75 = 26.67.
    assert cells[2 + COLUMNS.index("GPQA")] == "26.67" and cells[2 + len(COLUMNS) + COLUMNS.index("GPQA")] == "45.00"
    details = render_details(result)
    assert "Normalized | Baseline" in details.splitlines()[0] and "per subtask" in details


def test_missing_task_in_results_is_a_clear_error():
    h = _harness(lambda task, n: 0.5)
    del h["results"]["leaderboard_gpqa"]
    with pytest.raises(KeyError, match="leaderboard_gpqa"):
        reduce_v2(h)


def test_model_card_carries_the_v2_table_and_how_it_was_normalized(tmp_path):
    from jobs.modelcard import render_card

    result = _results_json(tmp_path, "me/model", _harness(lambda task, n: 0.5 if n == 0 else min(1.0, 1 / n + 0.2)))
    result["chat_template"] = True
    recipe = {"method": "qlora", "model": {"id": "Qwen/Qwen2.5-7B-Instruct"}, "eval": {"preset": "leaderboard-v2"},
              "data": {"sources": [{"path": "Open-Orca/SlimOrca", "split": "train", "format": "slimorca"}],
                       "template": "tokenizer"}}
    card = render_card(recipe=recipe, meta={"base_model": "Qwen/Qwen2.5-7B-Instruct", "run_id": "sftl-x-0000"},
                       results=[result], metrics=[], repo_id="me/model", is_adapter=True, hardware=None,
                       usd_per_hour=None, has_plot=False)
    assert render_table([result]) in card and "| Model | v2 Average |" in card
    assert "open_llm_leaderboard/normalization" in card and "chat template" in card


def test_v2_runs_chat_models_through_their_template_with_multiturn_few_shot(monkeypatch):
    import lm_eval

    seen = []

    def fake_simple_evaluate(**kw):
        seen.append(kw)
        return {"results": {}, "group_subtasks": {}, "n-samples": {}, "n-shot": {}, "configs": {}, "versions": {}}

    monkeypatch.setattr(lm_eval, "simple_evaluate", fake_simple_evaluate)
    evaluate.run_harness(object(), [(["leaderboard_bbh"], 3)], None, 2, chat=True)
    evaluate.run_harness(object(), [(["arc_challenge"], 25)], None, 2)
    assert seen[0]["apply_chat_template"] is True and seen[0]["fewshot_as_multiturn"] is True
    assert seen[0]["num_fewshot"] == 3 and seen[0]["limit"] == 2
    assert "apply_chat_template" not in seen[1]  # v1 as before: plain prompts
