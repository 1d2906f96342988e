"""Eval results (results.json written by `python -m jobs eval`): one score per task for the run
registry, and the markdown table the reference workflow published (one row per model, scores as
percentages with two decimals).

Light on purpose (json + pathlib only): `sftlaunch eval`, `status` and the model card all render
it, and the laptop side must not import torch or the harness.
"""

from __future__ import annotations

import json
from pathlib import Path

from sftcore.leaderboard import COLUMNS as V2_COLUMNS  # stdlib only: the v2 column names, defined once

# Column order of the reference table (sft-demos / Open LLM Leaderboard v1).
LEADERBOARD_COLUMNS = ("ARC", "HellaSwag", "MMLU", "TruthfulQA", "Winogrande", "GSM8K")
# Metric names preferred, in order, when reducing one lm-eval task's results to one score.
_PREFERRED_METRICS = ("acc_norm", "acc", "mc2", "exact_match", "f1", "bleu")



def base_out(out: str) -> Path:
    """Where --with-base writes the base model's results: beside OUT (eval → eval-base)."""
    return Path(f"{str(out).rstrip('/')}-base")

def load_results(path: str | Path) -> dict:
    """A results.json file, or a directory holding one."""
    from sftcore.contract import RESULTS
    from sftcore.errors import UserError

    p = Path(path)
    if p.is_dir():
        p = p / RESULTS
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{p}: no results.json; run `sftlaunch eval` first") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise UserError(f"{p}: not an sftlaunch results.json (no `tasks` list)")
    return data


def eval_scores(results: dict) -> tuple[dict[str, float], float | None]:
    """(task -> score, average) from a results.json: `scores`/`average` keys if the eval job
    wrote them, else lm-eval's `results` section reduced to one metric per task."""
    scores: dict[str, float] = {}
    if isinstance(results.get("scores"), dict):
        scores = {k: float(v) for k, v in results["scores"].items() if isinstance(v, (int, float))}
    elif isinstance(results.get("results"), dict):
        for task, metrics in results["results"].items():
            if not isinstance(metrics, dict):
                continue
            by_name = {}
            for key, value in metrics.items():
                name = key.split(",", 1)[0]
                if isinstance(value, (int, float)) and not name.endswith("_stderr") and name != "alias":
                    by_name.setdefault(name, float(value))
            for name in _PREFERRED_METRICS:
                if name in by_name:
                    scores[task] = by_name[name]
                    break
    average = results.get("average")
    if not isinstance(average, (int, float)):
        average = sum(scores.values()) / len(scores) if scores else None
    return scores, (float(average) if average is not None else None)


def pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.2f}"


def model_label(result: dict) -> str:
    model = result.get("model") or {}
    label = model.get("id") or model.get("path") or "?"
    if model.get("revision") and model.get("revision") != "main":
        label += f"@{model['revision']}"
    return label


def _scores(result: dict) -> dict[str, float]:
    return {t["name"]: t["value"] for t in result.get("tasks", [])}


def _average(result: dict, columns: tuple[str, ...]) -> float | None:
    scores = _scores(result)
    values = [scores[c] for c in columns if c in scores]
    return sum(values) / len(values) if values and len(values) == len(columns) else result.get("average")


def order_rows(results: list[dict]) -> list[dict]:
    """Base model first, then the fine-tunes of it, so the two rows sit side by side."""
    bases = {(r.get("model") or {}).get("base_model") for r in results} - {None}
    return sorted(results, key=lambda r: (0 if model_label(r) in bases else 1))


def render_table(results: list[dict]) -> str:
    """The reference table when every result is the leaderboard preset, else a generic one with
    one column per task (metric named in the header)."""
    results = order_rows(results)
    if results and all(_is_v2(r) for r in results):
        return _render_v2(results)
    if results and all(set(LEADERBOARD_COLUMNS) <= set(_scores(r)) for r in results):
        head = "| Model | Average | " + " | ".join(LEADERBOARD_COLUMNS) + " |"
        sep = "|" + "---|" * (len(LEADERBOARD_COLUMNS) + 2)
        lines = [head, sep]
        for r in results:
            s = _scores(r)
            cells = [model_label(r), pct(_average(r, LEADERBOARD_COLUMNS))] + [pct(s[c]) for c in LEADERBOARD_COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    columns: list[tuple[str, str]] = []
    for r in results:
        for t in r.get("tasks", []):
            col = (t["name"], t["metric"])
            if col not in columns:
                columns.append(col)
    head = "| Model | Average | " + " | ".join(f"{name} ({metric})" for name, metric in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 2)]
    for r in results:
        by = {(t["name"], t["metric"]): t["value"] for t in r.get("tasks", [])}
        avg = r.get("average")
        lines.append("| " + " | ".join([model_label(r), pct(avg)] + [pct(by.get(c)) for c in columns]) + " |")
    return "\n".join(lines)


def render_details(result: dict) -> str:
    """Per-task detail (metric, shots, samples, stderr) under the table: what the number means;
    v2 results add the leaderboard's normalized score and the random baseline it starts from."""
    tasks = result.get("tasks", [])
    norm = any(t.get("normalized") is not None for t in tasks)
    extra_head, extra_sep = (" Normalized | Baseline |", "---|---|") if norm else ("", "")
    lines = [f"| Task | Metric | Shots | Samples | Value | ± stderr |{extra_head}", f"|---|---|---|---|---|---|{extra_sep}"]
    for t in tasks:
        metric = t["metric"] if t.get("filter") in (None, "none") else f"{t['metric']} ({t['filter']})"
        line = (f"| {t['task']} | {metric} | {'' if t.get('shots') is None else t['shots']} | "
                f"{'' if t.get('samples') is None else t['samples']} | {pct(t['value'])} | {pct(t.get('stderr'))} |")
        if norm:
            base = "per subtask" if t.get("subtasks") else pct(t.get("lower_bound"))
            line += f" {'' if t.get('normalized') is None else format(t['normalized'], '.2f')} | {base} |"
        lines.append(line)
    return "\n".join(lines)


def _is_v2(result: dict) -> bool:
    names = {t["name"]: t for t in result.get("tasks", [])}
    return all(c in names and names[c].get("normalized") is not None for c in V2_COLUMNS)


def _render_v2(results: list[dict]) -> str:
    """The Open LLM Leaderboard v2 table: the v2 average (mean of the normalized scores, what the
    leaderboard ranked by), then each benchmark normalized (0-100 above its random baseline) and
    raw (the harness's accuracy, %)."""
    head = ("| Model | v2 Average | " + " | ".join(V2_COLUMNS) + " | "
            + " | ".join(f"{c} (raw)" for c in V2_COLUMNS) + " |")
    lines = [head, "|" + "---|" * (2 * len(V2_COLUMNS) + 2)]
    for r in results:
        by = {t["name"]: t for t in r.get("tasks", [])}
        avg = r.get("normalized_average")
        if avg is None:
            avg = sum(by[c]["normalized"] for c in V2_COLUMNS) / len(V2_COLUMNS)
        cells = [model_label(r), f"{avg:.2f}"] + [f"{by[c]['normalized']:.2f}" for c in V2_COLUMNS]
        cells += [pct(by[c]["value"]) for c in V2_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
