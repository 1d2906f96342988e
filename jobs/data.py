"""Training data: tokenise the rows jobs.rows read, pack, collate.

Why one module: the recipe names sources by *format*, and the mask of trained tokens, the packing
boundaries and the collator's padding must agree exactly; keeping them together keeps that true.

Formats (docs/architecture.md; sftcore.formats): each row becomes {"messages": [{role, content}, ...]} (system?, user,
assistant, possibly several turns) — except `text`, which stays {"text": ...} and is trained on
every token, and airoboros' pre-formatted rows ({"prompt", "completion"}: no template).

Which rows: jobs.rows (sources, formats, bad rows). Here: tokens, masks, packing, collation.

Packing and attention (checked against the installed transformers 5.x source): packed sequences
carry `position_ids` that restart at 0 for every sample. `masking_utils.create_causal_mask` turns
such restarts into a block-diagonal causal mask (`find_packed_sequence_indices`) for the eager,
sdpa and flex implementations — but only when no 2-D `attention_mask` is passed, so the packed
collator passes none. flash_attention_2 honours the restarts (varlen kernels via
`prepare_fa_kwargs_from_position_ids`) only for a batch of one row, which is why the collator
flattens a packed batch into a single padding-free row (as `DataCollatorWithFlattening` does) for
flash implementations: no mask at all, and the varlen kernel skips the cross-sample blocks. For
eager/sdpa a mask is unavoidable (SDPA then uses its memory-efficient kernel, not its flash one),
and flattening would only grow it: those keep one packed row per sequence (`flattens`). On an older transformers without `find_packed_sequence_indices`, eager/sdpa
would let packed samples attend to each other; `make_collator` warns once in that case. Either
way no label crosses a boundary: each sample's first token has label -100.

Measured trap (transformers 5.17, tests/jobs/test_data.py): `_preprocess_mask_arguments` only
looks at the position ids when `past_key_values is None`, and Llama-style models create a
DynamicCache whenever `use_cache` is true — the config default, even in train mode. So with the
cache on, packed samples DO attend to each other (tiny model, sdpa: a packed sample's logits differ
from the same sample alone by 0.8 with the cache, 4e-7 without). `prepare_model_for_packing` turns it off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from jobs.rows import load_rows, skipped_line, split_rows
from sftcore.errors import UserError

log = logging.getLogger(__name__)

IGNORE = -100


# ---------------------------------------------------------------- tokenising and packing


def tokenize_samples(row: dict, recipe, tokenizer) -> list[tuple[list[int], list[int]]]:
    """[(input_ids, labels)] of one formatted row, untruncated: one sample, or one per answer when the
    chat template rewrites history (jobs.templates.render_turns: Qwen3). Raises BadConversation when
    the template refuses the conversation."""
    from jobs import templates

    bos = [tokenizer.bos_token_id] if templates.adds_bos(tokenizer) else []
    if "text" in row:
        ids = bos + tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return [(ids, list(ids))]
    if "prompt" in row:  # pre-formatted (airoboros skip_prompt_formatting): no template, one tokenisation
        text = row["prompt"] + row["completion"]
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        start = len(row["prompt"])
        trained = [recipe.data.loss == "all" or end > start for _, end in enc["offset_mapping"]]
        ids = bos + list(enc["input_ids"]) + [tokenizer.eos_token_id]
        return [(ids, templates.labels(ids, [recipe.data.loss == "all"] * len(bos) + trained + [True]))]
    return templates.sample_labels(row["messages"], recipe.data.template, tokenizer, recipe.data.loss)


def tokenize_row(row: dict, recipe, tokenizer) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one formatted row's whole conversation (the last of tokenize_samples)."""
    return tokenize_samples(row, recipe, tokenizer)[-1]


def tokenized(rows: list[dict], recipe, tokenizer, skipped: dict | None = None) -> Iterator[tuple[dict, list]]:
    """(row, its samples) for each row the chat template can render. A row it refuses is a bad row:
    `data.bad_rows: error` stops naming source and row, `skip` leaves it out, counted in `skipped`."""
    from jobs.templates import BadConversation

    for row in rows:
        try:
            samples = tokenize_samples(row, recipe, tokenizer)
        except BadConversation as e:
            if getattr(recipe.data, "bad_rows", "error") == "skip":
                if skipped is not None:
                    skipped[e.reason] = skipped.get(e.reason, 0) + 1
                continue
            where = getattr(row, "origin", "") or "a data row"
            raise UserError(f"{where}: {e} (template {recipe.data.template}; fix the row, choose another "
                            "data.template, or set data.bad_rows: skip)") from None
        yield row, samples


def _samples(rows: list[dict], recipe, tokenizer, stats: dict, skipped: dict | None = None) -> list[tuple[list[int], list[int]]]:
    seq_len = recipe.data.seq_len
    out = []
    from jobs.templates import has_reasoning

    for row, samples in tokenized(rows, recipe, tokenizer, skipped):
        stats["rows"] += 1
        stats["reasoning"] += has_reasoning(row)
        for ids, labels in samples:
            stats["samples"] += 1
            stats["tokens"] += len(ids)
            if len(ids) > seq_len:
                stats["truncated"] += 1
                ids, labels = ids[:seq_len], labels[:seq_len]
            if all(lab == IGNORE for lab in labels[1:]):  # nothing left to learn (prompt filled seq_len)
                stats["dropped"] += 1
                continue
            out.append((ids, labels))
    return out


def pack(samples: list[tuple[list[int], list[int]]], seq_len: int) -> list[dict]:
    """Best-fit-decreasing packing into sequences of at most seq_len tokens (deterministic).

    Why best fit rather than filling in order: next-fit leaves each row's tail empty whenever the
    next sample does not fit (0.82-0.88 fill on the shipped chat files at seq_len 512); placing
    long samples first and each sample in the fullest row it still fits raises the fill (the
    trainer shuffles rows anyway, so order is not lost). position_ids restart at 0 per sample;
    each sample's first label is -100 so the last token of one sample is never trained to
    predict the first of the next.
    """
    import bisect

    order = sorted(range(len(samples)), key=lambda i: (-len(samples[i][0]), i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, row index), kept sorted
    for i in order:
        n = len(samples[i][0])
        j = bisect.bisect_left(free, (n, -1))
        if j < len(free):
            room, row = free.pop(j)
        else:
            room, row = seq_len, len(rows)
            rows.append([])
        rows[row].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, row))
    out: list[dict] = []
    for members in rows:
        cur: dict = {"input_ids": [], "labels": [], "position_ids": []}
        for i in sorted(members):
            ids, labels = samples[i]
            cur["input_ids"] += ids
            cur["labels"] += [IGNORE] + labels[1:]
            cur["position_ids"] += list(range(len(ids)))
        out.append(cur)
    return out


def _to_dataset(samples, recipe) -> list[dict]:
    if recipe.data.packing:
        return pack(samples, recipe.data.seq_len)
    return [{"input_ids": ids, "labels": labels, "position_ids": list(range(len(ids)))} for ids, labels in samples]


def _new_stats() -> dict:
    return {"rows": 0, "samples": 0, "tokens": 0, "truncated": 0, "dropped": 0, "reasoning": 0}


def no_samples_message(recipe) -> str:
    return (f"data: no training samples left (every prompt fills data.seq_len={recipe.data.seq_len}?); "
            "raise data.seq_len or check the data sources")


def build_datasets(recipe, tokenizer, info: dict | None = None) -> tuple[list[dict], list[dict]]:
    """(train, eval) lists of {input_ids, labels, position_ids}, truncated to seq_len, packed if asked.

    `info` (a dict) receives what the model card reports: `sources` (rows used per source, after
    max_samples and before the eval split), `train_rows`/`eval_rows` (rows each side of the split that the chat template renders)
    `dropped` (training rows with nothing left to learn after truncation) and `reasoning_rows`
    (training rows whose answers start with a <think> block: jobs.templates.trained_chat_kwargs)."""
    per_source: list[dict] = []
    skipped: dict = {}
    train_rows, eval_rows = split_rows(load_rows(recipe, per_source, skipped), recipe.data.eval_fraction, recipe.train.seed)
    stats, eval_stats = _new_stats(), _new_stats()
    train = _to_dataset(_samples(train_rows, recipe, tokenizer, stats, skipped), recipe)
    evals = _to_dataset(_samples(eval_rows, recipe, tokenizer, eval_stats, skipped), recipe)
    if skipped:
        print(skipped_line(skipped), flush=True)  # the training log
    if not train:
        raise UserError(no_samples_message(recipe) + (f" ({skipped_line(skipped)})" if skipped else ""))
    if info is not None:
        info.update(sources=per_source, train_rows=stats["rows"], eval_rows=eval_stats["rows"],
                    dropped=stats["dropped"], truncated=stats["truncated"], skipped=skipped,
                    reasoning_rows=stats["reasoning"])
    return train, evals


# ---------------------------------------------------------------- collating


def _honours_packed_positions() -> bool:
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError:
        return False
    return True


_warned: set[str] = set()


def prepare_model_for_packing(model, recipe) -> str | None:
    """Make a model honour packed position ids; return its attention implementation for make_collator.

    Sets `config.use_cache = False` when packing (see the module docstring: with a KV cache object
    the block-diagonal mask is silently skipped). Call it before training and before eval loss.
    """
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if recipe.data.packing and config is not None:
        config.use_cache = False
    return impl


def flattens(attn_implementation: str | None) -> bool:
    """Whether packed batches are flattened into one padding-free row for this implementation:
    only where a varlen kernel reads the boundaries from the position ids (flash_attention_2/3/4).
    eager and sdpa build a dense [rows, rows] mask from them instead, so one flattened row of
    micro_batch_size × seq_len tokens costs micro_batch_size times the attention of separate
    rows: 0.59x the tokens/s for sdpa, 0.41x for eager on the tiny model on CPU
    (bench/speed_switches.py, micro 4, seq_len 256)."""
    return bool(attn_implementation) and "flash" in attn_implementation


def make_collator(recipe, tokenizer, attn_implementation: str | None = None,
                  flatten: bool | None = None) -> Callable[[list[dict]], dict]:
    """Batches of torch tensors for the model.

    Unpacked: right-padded to the longest sample with the pad id, labels -100 on padding, an
    attention_mask. Packed: position_ids and no attention_mask (see the module docstring); with a
    flash implementation the batch is flattened into one padding-free row, as transformers'
    DataCollatorWithFlattening does, so the varlen kernels see the boundaries. Pass the model's
    `config._attn_implementation` as attn_implementation; `flatten` overrides `flattens()`.
    """
    import torch

    pad = tokenizer.pad_token_id
    if pad is None:
        raise UserError("the tokenizer has no pad token; jobs.model must set one (distinct from eos) before collating")
    packed = recipe.data.packing
    flatten = packed and (flattens(attn_implementation) if flatten is None else flatten)
    if packed and not flatten and not _honours_packed_positions() and "packing" not in _warned:
        _warned.add("packing")
        log.warning("data.packing with attn_implementation=%s on this transformers version: packed samples may "
                    "attend to each other (labels never cross a boundary); use flash_attention_2 or packing: false",
                    attn_implementation or "default")

    def collate(features: list[dict]) -> dict:
        if flatten:
            cat = {k: [x for f in features for x in f[k]] for k in ("input_ids", "labels", "position_ids")}
            return {k: torch.tensor([v], dtype=torch.long) for k, v in cat.items()}
        longest = max(len(f["input_ids"]) for f in features)
        batch: dict[str, list] = {"input_ids": [], "labels": [], "attention_mask": [], "position_ids": []}
        for f in features:
            n = longest - len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [pad] * n)
            batch["labels"].append(list(f["labels"]) + [IGNORE] * n)
            batch["attention_mask"].append([1] * len(f["input_ids"]) + [0] * n)
            # Padding of a packed row gets its own restarting positions: a separate, untrained "sample".
            batch["position_ids"].append(list(f["position_ids"]) + list(range(n)))
        if packed:
            del batch["attention_mask"]
        else:
            del batch["position_ids"]
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}

    return collate


# ---------------------------------------------------------------- statistics


def data_stats(recipe, tokenizer) -> dict:
    """Token counts and how much of the compute is padding, for previews and bench/packing.py."""
    skipped: dict = {}
    rows = load_rows(recipe, skipped=skipped)
    train_rows, eval_rows = split_rows(rows, recipe.data.eval_fraction, recipe.train.seed)
    stats = _new_stats()
    samples = _samples(train_rows, recipe, tokenizer, stats, skipped)
    lengths = [len(ids) for ids, _ in samples]
    trained = sum(sum(1 for lab in labels[1:] if lab != IGNORE) for _, labels in samples)
    mbs = recipe.train.micro_batch_size
    padded = sum(max(lengths[i:i + mbs]) * len(lengths[i:i + mbs]) for i in range(0, len(lengths), mbs))
    packed = pack(samples, recipe.data.seq_len)
    packed_len = [len(p["input_ids"]) for p in packed]
    packed_padded = sum(max(packed_len[i:i + mbs]) * len(packed_len[i:i + mbs]) for i in range(0, len(packed_len), mbs))
    n = max(1, stats.get("samples", 0))  # truncation is counted per sample
    return {
        "rows": len(rows),
        "skipped": dict(sorted(skipped.items())),
        "train_rows": len(train_rows),
        "eval_rows": len(eval_rows),
        "train_samples": len(samples),
        "tokens": stats["tokens"],
        "tokens_after_truncation": sum(lengths),
        "trained_tokens": trained,
        "mean_tokens": round(sum(lengths) / max(1, len(lengths)), 1),
        "max_tokens": max(lengths, default=0),
        "truncated_pct": round(100 * stats["truncated"] / n, 2),
        "dropped": stats["dropped"],
        "padding_pct_unpacked": round(100 * (1 - sum(lengths) / padded), 2) if padded else 0.0,
        "packed_sequences": len(packed),
        "packed_fill_pct": round(100 * sum(lengths) / (len(packed) * recipe.data.seq_len), 2) if packed else 0.0,
        "padding_pct_packed": round(100 * (1 - sum(lengths) / packed_padded), 2) if packed_padded else 0.0,
    }
