"""`sftlaunch data-preview RECIPE`: what the model will actually be trained on, before paying for GPUs.

Why: a wrong format, template or seq_len wastes a whole run. This shows token counts per source,
how much compute goes to padding with and without packing, how often samples are truncated, and
rendered samples with the trained tokens highlighted, so a mask that trains on prompts (or on
nothing) is visible at a glance. Needs the train extra (transformers) and the model's tokenizer.
"""

from __future__ import annotations

import json
import statistics

import click

from launcher.options import json_option, recipe_argument
from sftcore.errors import UserError


def _tokenizer(recipe):
    """The tokenizer as training prepares it (the template's chat template and markers installed)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UserError("data-preview needs transformers: pip install 'sftlaunch[train]'") from None
    from jobs.templates import prepare_tokenizer
    from jobs.tiny import TINY_MODEL_ID, ensure_tiny

    model_id = recipe.model.id
    if model_id == TINY_MODEL_ID:
        tok = AutoTokenizer.from_pretrained(ensure_tiny())
        prepare_tokenizer(tok, recipe.data.template)
        return tok
    try:
        tok = AutoTokenizer.from_pretrained(
            model_id, revision=recipe.model.revision, trust_remote_code=recipe.model.trust_remote_code)
    except Exception as e:  # offline, gated, missing: many exception types, one line for the user
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"model.id: cannot load the tokenizer of {model_id!r} ({first[:160]}); data-preview needs it: "
            "check the id, log in with HF_TOKEN for gated models, or set model.id to a local model directory"
        ) from None
    prepare_tokenizer(tok, recipe.data.template)
    return tok


def _short(path: str) -> str:
    import os

    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("../..") else path


def _pct(values: list[int], q: float) -> int:
    if not values:
        return 0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _source_stats(recipe, tokenizer) -> list[dict]:
    from jobs import data
    from jobs import rows as job_rows

    out = []
    for src in recipe.data.sources:
        skipped: dict = {}
        rows = job_rows.load_source(src, recipe.train.seed, recipe.data.bad_rows, skipped)
        rendered = [samples for _, samples in data.tokenized(rows, recipe, tokenizer, skipped)]
        lengths = [len(ids) for samples in rendered for ids, _ in samples]
        out.append({
            "path": src.path, "format": src.format, "rows": len(rendered),
            "mean": round(statistics.fmean(lengths), 1) if lengths else 0, "p50": _pct(lengths, 0.5),
            "p95": _pct(lengths, 0.95), "max": max(lengths, default=0),
            "truncated_pct": round(100 * sum(n > recipe.data.seq_len for n in lengths) / max(1, len(lengths)), 2),
            "skipped": skipped,
        })
    return out


def _samples(recipe, tokenizer, n: int) -> list[list[tuple[str, bool]]]:
    """Rendered samples as (text, trained) runs of consecutive tokens."""
    from jobs import data
    from jobs.rows import load_rows

    out = []
    for _row, samples in data.tokenized(load_rows(recipe)[:n], recipe, tokenizer):
        ids, labels = samples[-1]  # the whole conversation
        ids, labels = ids[: recipe.data.seq_len], labels[: recipe.data.seq_len]
        runs: list[tuple[list[int], bool]] = []
        for tok, lab in zip(ids, labels, strict=True):
            trained = lab != data.IGNORE
            if runs and runs[-1][1] == trained:
                runs[-1][0].append(tok)
            else:
                runs.append(([tok], trained))
        out.append([(tokenizer.decode(t, skip_special_tokens=False), trained) for t, trained in runs])
    return out


@click.command()
@recipe_argument
@click.option("--samples", default=3, show_default=True, type=click.IntRange(0, 50), help="Rendered samples to show.")
@json_option
def data_preview(recipe: str, samples: int, as_json: bool) -> None:
    """Token counts, padding and truncation, packed-batch fill and rendered samples of RECIPE's data."""
    from sftcore.recipe import load_recipe

    r = load_recipe(recipe)
    try:
        from jobs import data
        from jobs.rows import skipped_line
    except ImportError:
        raise UserError("data-preview needs transformers: pip install 'sftlaunch[train]'") from None
    tokenizer = _tokenizer(r)
    try:
        per_source = _source_stats(r, tokenizer)
        stats = data.data_stats(r, tokenizer)
        if not stats["train_samples"]:
            raise UserError(data.no_samples_message(r))  # what `train` would stop with (exit 2)
        rendered = _samples(r, tokenizer, samples)
    except OSError as exc:  # the data changed after validation (permissions, a file removed): one line, exit 2
        what = exc.filename or "a data file"
        raise UserError(f"{recipe}: data.sources: cannot read {what} ({exc.strerror or type(exc).__name__}); "
                        "fix its permissions or point data.sources[].path at the data files") from None
    if as_json:
        click.echo(json.dumps({
            "recipe": recipe, "template": r.data.template, "seq_len": r.data.seq_len, "loss": r.data.loss,
            "packing": r.data.packing, "sources": per_source, "totals": stats,
            "samples": [{"text": "".join(t for t, _ in s), "trained": "".join(t for t, m in s if m)} for s in rendered],
        }, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    table = Table(title=f"{r.name}: data.template={r.data.template}, seq_len={r.data.seq_len}, loss={r.data.loss}")
    skipping = r.data.bad_rows == "skip"  # the column only where rows can be skipped
    for col in ("source", "format", "rows", *(("skipped",) if skipping else ()), "tokens mean", "p50", "p95", "max",
                "truncated %"):
        table.add_column(col, justify="left" if col in ("source", "format") else "right", overflow="fold")
    for s in per_source:
        skipped = (str(sum(s["skipped"].values())),) if skipping else ()
        table.add_row(_short(s["path"]), s["format"], str(s["rows"]), *skipped, str(s["mean"]), str(s["p50"]), str(s["p95"]),
                      str(s["max"]), f"{s['truncated_pct']:.1f}")
    console.print(table)
    if stats["skipped"]:
        console.print(skipped_line(stats["skipped"]))
    console.print(
        f"train rows {stats['train_rows']}, eval rows {stats['eval_rows']}, tokens {stats['tokens_after_truncation']} "
        f"(trained {stats['trained_tokens']}), truncated {stats['truncated_pct']:.1f}%, dropped {stats['dropped']}\n"
        f"padding without packing: {stats['padding_pct_unpacked']:.1f}% of batch tokens "
        f"(micro_batch_size {r.train.micro_batch_size})\n"
        f"packed: {stats['packed_sequences']} sequences of {r.data.seq_len}, fill {stats['packed_fill_pct']:.1f}%"
        + ("" if r.data.packing else " (packing is off in this recipe)")
    )
    for i, s in enumerate(rendered, 1):
        console.rule(f"sample {i} — [bold green]trained tokens[/] highlighted")
        text = Text()
        for chunk, trained in s:
            text.append(chunk, style="bold green reverse" if trained else "dim")
        console.print(text)
