"""The eval presets (which harness tasks, shots and metrics make a leaderboard's table) and how
the harness's raw output reduces to one row per preset task or requested task.

The `python -m jobs eval` entry is jobs/evaluate.py; callers import these names from here.

Why presets are data: the reference workflow's table uses metrics, shot counts and an MMLU
average (plain mean of the 57 subjects) that differ from the harness defaults. Standard library
only at import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sftcore.leaderboard import BENCHES


@dataclass(frozen=True)
class PresetTask:
    task: str  # harness task or group name
    shots: int
    metric: str  # harness result key without the filter, e.g. "acc_norm"
    name: str  # column name in the results table
    filter: str = "none"  # harness filter the metric is reported under
    mean_of_subtasks: bool = False  # plain mean over the group's leaf tasks


# Open LLM Leaderboard v1 (the table sft-demos reported), as data.
PRESETS: dict[str, tuple[PresetTask, ...]] = {
    "leaderboard-v1": (
        PresetTask("arc_challenge", 25, "acc_norm", "ARC"),
        PresetTask("hellaswag", 10, "acc_norm", "HellaSwag"),
        PresetTask("mmlu", 5, "acc", "MMLU", mean_of_subtasks=True),
        PresetTask("truthfulqa_mc2", 0, "acc", "TruthfulQA"),
        PresetTask("winogrande", 5, "acc", "Winogrande"),
        # strict-match is the "#### <number>" answer the leaderboard scored.
        PresetTask("gsm8k", 5, "exact_match", "GSM8K", filter="strict-match"),
    ),
    # Open LLM Leaderboard v2 (sftcore/leaderboard.py): lm-eval's `leaderboard_*` groups at the shot
    # counts of their own task configs, scored raw and normalized as the leaderboard did.
    "leaderboard-v2": tuple(PresetTask(b.task, b.shots, b.metric, b.name) for b in BENCHES),
}
# Presets the leaderboard ran through the model's chat template with few-shot examples as turns
# (`lm_eval --apply_chat_template --fewshot_as_multiturn`), for models that have a chat template.
CHAT_PRESETS = ("leaderboard-v2",)
V2_MAX_GEN_TOKENS = 1280  # leaderboard_ifeval's max_gen_toks (MATH's is 1024): the context must exceed it


def _leaves(group: str, group_subtasks: dict) -> list[str]:
    out = []
    for child in group_subtasks.get(group, []):
        out.extend(_leaves(child, group_subtasks) if child in group_subtasks else [child])
    return out


def _samples(raw: dict, task: str) -> int | None:
    n = raw.get("n-samples", {}).get(task)
    return int(n["effective"]) if isinstance(n, dict) and "effective" in n else None


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else None


def reduce_preset(raw: dict, preset: tuple[PresetTask, ...]) -> list[dict]:
    """One row per preset task: the metric the leaderboard reported, from the harness output."""
    rows = []
    results, groups = raw["results"], raw.get("group_subtasks", {})
    for p in preset:
        key = f"{p.metric},{p.filter}"
        if p.mean_of_subtasks:
            leaves = _leaves(p.task, groups)
            values = [results[t][key] for t in leaves]
            errs = [_num(results[t].get(f"{p.metric}_stderr,{p.filter}")) for t in leaves]
            value = sum(values) / len(values)
            stderr = math.sqrt(sum(e * e for e in errs)) / len(errs) if all(e is not None for e in errs) else None
            samples = sum(_samples(raw, t) or 0 for t in leaves)
            extra = {"subtasks": len(leaves)}
        else:
            value = results[p.task][key]
            stderr = _num(results[p.task].get(f"{p.metric}_stderr,{p.filter}"))
            samples = _samples(raw, p.task)
            extra = {}
        rows.append({"task": p.task, "name": p.name, "metric": p.metric, "filter": p.filter,
                     "value": float(value), "stderr": stderr, "shots": p.shots, "samples": samples, **extra})
    return rows


def reduce_custom(raw: dict, names: list[str]) -> list[dict]:
    """One row per requested task: its first configured metric (groups: the harness aggregate)."""
    rows = []
    for name in names:
        res = raw["results"].get(name, {})
        cfg = raw.get("configs", {}).get(name, {})
        metric = None
        if cfg.get("metric_list"):
            metric = cfg["metric_list"][0]["metric"]
        keys = [k for k in res if "," in k and "_stderr" not in k and isinstance(res[k], (int, float))]
        pick = [k for k in keys if metric and k.split(",")[0] == metric] or keys
        if not pick:
            raise RuntimeError(f"the harness returned no metric for task {name}")
        key = pick[0]
        m, f = key.split(",", 1)
        leaves = _leaves(name, raw.get("group_subtasks", {}))
        samples = sum(_samples(raw, t) or 0 for t in leaves) if leaves else _samples(raw, name)
        shots = raw.get("n-shot", {}).get(name)
        rows.append({"task": name, "name": name, "metric": m, "filter": f, "value": float(res[key]),
                     "stderr": _num(res.get(f"{m}_stderr,{f}")), "shots": shots, "samples": samples})
    return rows
