"""Open LLM Leaderboard v2 scores from lm-eval's `leaderboard_*` results, raw and normalized.

Why our own code: lm-eval reports raw accuracies; the v2 leaderboard ranked models by scores it
normalized afterwards, in its results parser, not in the harness (maintainer's answer:
https://huggingface.co/spaces/open-llm-leaderboard/open_llm_leaderboard/discussions/1011).
The rule, from the leaderboard's documentation "Scores Normalization"
(https://huggingface.co/docs/leaderboards/open_llm_leaderboard/normalization):

  normalized = max(0, (raw - lower) / (1 - lower)) * 100, lower = 1 / num_choices (the random
  baseline); generative tasks (IFEval, MATH) have lower = 0.
  - tasks without subtasks (GPQA, MMLU-Pro): normalize the task's score;
  - tasks with subtasks (BBH, MuSR): normalize each subtask, then take the plain mean;
  - IFEval: the mean of prompt-level and instruction-level strict accuracy;
  - the v2 average: the plain mean of the six normalized scores.

The choice counts below are data checked against lm-eval's own task configs (their
`doc_to_choice`) by tests/jobs/test_leaderboard.py. Light (no harness import): `sftlaunch` and
the model card read these rows from results.json.
"""

from __future__ import annotations

import math

# BBH subtasks (lm-eval `leaderboard_bbh_<name>`): answer choices per subtask.
BBH_CHOICES = {
    "boolean_expressions": 2, "causal_judgement": 2, "date_understanding": 6, "disambiguation_qa": 3,
    "formal_fallacies": 2, "geometric_shapes": 11, "hyperbaton": 2, "logical_deduction_five_objects": 5,
    "logical_deduction_seven_objects": 7, "logical_deduction_three_objects": 3, "movie_recommendation": 6,
    "navigate": 2, "object_counting": 19, "penguins_in_a_table": 5, "reasoning_about_colored_objects": 18,
    "ruin_names": 6, "salient_translation_error_detection": 6, "snarks": 2, "sports_understanding": 2,
    "temporal_sequences": 4, "tracking_shuffled_objects_five_objects": 5,
    "tracking_shuffled_objects_seven_objects": 7, "tracking_shuffled_objects_three_objects": 3, "web_of_lies": 2,
}
# MuSR subtasks (the leaderboard's documentation: 2, 5 and 3 choices).
MUSR_CHOICES = {"murder_mysteries": 2, "object_placements": 5, "team_allocation": 3}


class Bench:
    """One v2 column: the harness task, its metric, and how the leaderboard normalized it."""

    def __init__(self, name: str, task: str, metric: str, shots: int, choices: int | None = None,
                 subtasks: dict[str, int] | None = None, prefix: str = "", metrics: tuple[str, ...] = ()):
        self.name, self.task, self.metric, self.shots = name, task, metric, shots
        self.choices, self.subtasks, self.prefix = choices, subtasks, prefix
        self.metrics = metrics or (metric,)


BENCHES = (
    Bench("IFEval", "leaderboard_ifeval", "prompt_level_strict_acc", 0,
          metrics=("prompt_level_strict_acc", "inst_level_strict_acc")),
    Bench("BBH", "leaderboard_bbh", "acc_norm", 3, subtasks=BBH_CHOICES, prefix="leaderboard_bbh_"),
    Bench("MATH Lvl 5", "leaderboard_math_hard", "exact_match", 4),
    Bench("GPQA", "leaderboard_gpqa", "acc_norm", 0, choices=4),
    Bench("MuSR", "leaderboard_musr", "acc_norm", 0, subtasks=MUSR_CHOICES, prefix="leaderboard_musr_"),
    Bench("MMLU-Pro", "leaderboard_mmlu_pro", "acc", 5, choices=10),
)
COLUMNS = tuple(b.name for b in BENCHES)


def normalize(raw: float, lower: float, higher: float = 1.0) -> float:
    """The leaderboard's normalize_within_range, clipped at 0 below the random baseline, in %."""
    if raw < lower:
        return 0.0
    return (raw - lower) / (higher - lower) * 100


def _value(results: dict, task: str, metric: str) -> float:
    try:
        value = results[task][f"{metric},none"]
    except KeyError:
        raise KeyError(f"results.json has no {metric} for {task}; was the leaderboard-v2 preset run in full?") from None
    if not isinstance(value, (int, float)) or math.isnan(value):
        raise KeyError(f"results.json: {task} {metric} is {value!r}, not a number")
    return float(value)


def bench_row(bench: Bench, results: dict, samples: dict | None = None) -> dict:
    """One results row: raw (harness) value and the leaderboard's normalized score, with the
    per-subtask numbers where the leaderboard normalized per subtask."""
    samples = samples or {}
    row: dict = {"task": bench.task, "name": bench.name, "metric": bench.metric, "filter": "none",
                 "shots": bench.shots}
    if bench.subtasks:
        subs = {}
        for sub, n in bench.subtasks.items():
            raw = _value(results, bench.prefix + sub, bench.metric)
            subs[sub] = {"raw": raw, "lower": 1 / n, "normalized": normalize(raw, 1 / n)}
        row["value"] = sum(s["raw"] for s in subs.values()) / len(subs)
        row["normalized"] = sum(s["normalized"] for s in subs.values()) / len(subs)
        row["subtasks"] = subs
        row["samples"] = sum(int((samples.get(bench.prefix + s) or {}).get("effective", 0)) for s in subs) or None
        row["lower_bound"] = None
        return row
    values = [_value(results, bench.task, m) for m in bench.metrics]
    raw = sum(values) / len(values)
    lower = 1 / bench.choices if bench.choices else 0.0
    row.update(value=raw, normalized=normalize(raw, lower), lower_bound=lower)
    if len(values) > 1:
        row["components"] = dict(zip(bench.metrics, values, strict=True))
        row["metric"] = "mean(" + ", ".join(bench.metrics) + ")"
    n = samples.get(bench.task)
    row["samples"] = int(n["effective"]) if isinstance(n, dict) and "effective" in n else None
    return row


def reduce_v2(raw: dict) -> list[dict]:
    """The six v2 rows from a harness output dict (results, n-samples)."""
    results = raw["results"]
    samples = dict(raw.get("n-samples", {}))
    # Group tasks have no n-samples entry of their own: the sum of their leaves.
    for group, leaves in raw.get("group_subtasks", {}).items():
        if group not in samples and leaves:
            total = sum(int((samples.get(t) or {}).get("effective", 0)) for t in leaves)
            if total:
                samples[group] = {"effective": total}
    return [bench_row(b, results, samples) for b in BENCHES]


def v2_average(rows: list[dict]) -> float | None:
    """The leaderboard's average: the plain mean of the six normalized scores (None if any is missing)."""
    by = {r["name"]: r.get("normalized") for r in rows}
    values = [by.get(c) for c in COLUMNS]
    return sum(values) / len(values) if all(v is not None for v in values) else None
