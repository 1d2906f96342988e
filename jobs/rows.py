"""Reading a recipe's data sources: local files and hub splits, each row mapped to chat messages
by its format (sftcore.formats) and checked, bad rows stopped or counted per `data.bad_rows`.

Rows are numbered from 1 (the line of a .jsonl file, the element of a .json array, the row of a
parquet file, the index in a hub split). sftcore.formats maps a row to messages and says what is
wrong with a bad one, and a conversation the chat template refuses when it is tokenised (Gemma 2
and a system turn) is a bad row too (`Row` keeps its source and number); `data.bad_rows` decides
what it gets: `error` (default) stops with a `UserError` naming the source, the row and the
problem; `skip` leaves it out and counts it per reason, and the counts are printed in the training
log and shown by data-preview. Never silent.

Why apart from jobs.data: which rows a run trains on is decided here, once; jobs.data turns them
into tokens, packs and collates them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from sftcore.errors import UserError
from sftcore.formats import FORMATTERS, RowError
from sftcore.recipe.input import LOCAL_DATA_SUFFIXES


def check_row(fmt: str, row: object) -> dict:
    """The formatted row, or RowError with the reason it cannot be trained on (the format's own
    checks in sftcore.formats, then the conversation rules in jobs.templates)."""
    from jobs import templates

    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {type(row).__name__}", "not an object")
    out = FORMATTERS[fmt](row)
    if "messages" in out:
        out["messages"] = templates.drop_empty_system(out["messages"])
        try:
            templates.validate(out["messages"])
        except templates.BadConversation as e:
            raise RowError(str(e), e.reason) from None
    return out

def _local_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_DATA_SUFFIXES)
        if not files:
            raise UserError(f"{path}: no .jsonl, .json or .parquet files in this directory")
        return files
    if not path.exists():
        raise UserError(f"{path}: no such file; fix data.sources[].path (relative to the recipe)")
    if path.suffix not in LOCAL_DATA_SUFFIXES:
        raise UserError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json or .parquet")
    return [path]


def _read_file(path: Path) -> Iterator[tuple[int, object]]:
    """(row number from 1, row) for one local file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise UserError(f"{path}: not a readable parquet file ({e}); regenerate or re-download it") from None
        yield from enumerate(table.to_pylist(), 1)
        return
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}; fix the file") from None
        yield from enumerate(data, 1)
        return
    for n, line in enumerate(text.splitlines(), 1):  # .jsonl, or .json holding JSON lines
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: row {n}: invalid JSON ({e.msg}); each line must be one JSON object") from None


def _read_source(src) -> list[tuple[str, int, object]]:
    """Every row of one source as (where, row number, row)."""
    path = Path(src.path)
    if src.is_local():
        return [(str(f), n, row) for f in _local_files(path) for n, row in _read_file(f)]
    import datasets

    try:
        ds = datasets.load_dataset(src.path, src.config, split=src.split)
    except Exception as e:  # hub/network/config errors come in many types; one line for the user
        raise UserError(f"data source {src.path!r} (config {src.config!r}, split {src.split!r}) could not be "
                        f"loaded: {str(e).splitlines()[0] if str(e) else type(e).__name__}; check the id, "
                        "config, split and HF_TOKEN for gated datasets") from None
    return [(src.path, n, row) for n, row in enumerate(ds, 1)]


class Row(dict):
    """A formatted row that remembers where it came from ("file: row N") and its format, so a row the
    chat template refuses when it is tokenised (Gemma's "System role not supported") is reported or
    skipped like any other bad row. Compares equal to the plain dict."""

    def __init__(self, row: dict, origin: str = "", fmt: str = ""):
        super().__init__(row)
        self.origin, self.fmt = origin, fmt


def format_row(fmt: str, where: str, n: int, row: object, bad_rows: str = "error",
               skipped: dict | None = None) -> dict | None:
    """The formatted row; a bad one stops (bad_rows error) or is counted in `skipped` and gives None."""
    try:
        return check_row(fmt, row)
    except RowError as e:
        if bad_rows == "skip" and skipped is not None:
            skipped[e.reason] = skipped.get(e.reason, 0) + 1
            return None
        raise UserError(f"{where}: row {n}: {e} (format {fmt}; fix the row, choose the matching data format, "
                        "or set data.bad_rows: skip)") from None


def load_source(src, seed: int, bad_rows: str = "error", skipped: dict | None = None) -> list[dict]:
    """One source's rows, seeded-shuffled then cut to max_samples, formatted; bad rows per `bad_rows`
    (skipped ones counted per reason in `skipped`, and max_samples counts rows kept)."""
    rows = _read_source(src)
    if not rows:
        raise UserError(f"{src.path}: the data source has no rows")
    order = list(range(len(rows)))
    random.Random(f"{seed}:{src.path}").shuffle(order)
    skipped = {} if skipped is None else skipped
    out = []
    for i in order:
        if src.max_samples is not None and len(out) >= src.max_samples:
            break
        got = format_row(src.format, *rows[i], bad_rows=bad_rows, skipped=skipped)
        if got is not None:
            out.append(Row(got, origin=f"{rows[i][0]}: row {rows[i][1]}", fmt=src.format))
    if not out:
        raise UserError(f"{src.path}: every row was skipped as bad ({skipped_line(skipped)}); "
                        "check data.sources[].format against the file's schema")
    return out


def skipped_line(skipped: dict) -> str:
    """"data: skipped 3 bad rows (empty answer 2, roles do not alternate 1)" for logs and previews."""
    total = sum(skipped.values())
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"data: skipped {total} bad row{'s' if total != 1 else ''} ({reasons}; data.bad_rows: skip)"


def load_rows(recipe, per_source: list[dict] | None = None, skipped: dict | None = None) -> list[dict]:
    """All sources mixed: each cut to its max_samples after a seeded shuffle, then shuffled together.
    `per_source` (a list) receives each source's rows used, in recipe order, for the model card;
    `skipped` (a dict) the count of bad rows left out per reason (data.bad_rows: skip)."""
    seed = recipe.train.seed
    bad_rows = getattr(recipe.data, "bad_rows", "error")
    rows = []
    for src in recipe.data.sources:
        got = load_source(src, seed, bad_rows, skipped)
        rows += got
        if per_source is not None:
            per_source.append({"path": src.path, "config": src.config, "split": src.split, "format": src.format,
                               "max_samples": src.max_samples, "rows": len(got)})
    random.Random(seed).shuffle(rows)
    return rows


def split_rows(rows: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval): a seeded random eval_fraction held out (at least one row when the fraction > 0)."""
    if eval_fraction <= 0 or len(rows) < 2:
        return list(rows), []
    n_eval = min(len(rows) - 1, max(1, round(len(rows) * eval_fraction)))
    order = list(range(len(rows)))
    random.Random(seed + 1).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
