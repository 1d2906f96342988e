"""The model card (README.md) published with a run: Hub metadata plus what a reader needs to trust
and reuse the model — what it was trained on (with row counts), the exact recipe, the hardware,
time and cost, its eval table, the training loss, and how to load it the way the reference
workflow did (4-bit base + PeftModel)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

LOSS_PLOT = "training_loss.png"


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl rows, one per (step, kind): a row logged again for the same step (an attempt
    that was preempted after logging it and resumed from an earlier checkpoint) replaces the
    earlier one, so the loss plot never doubles back."""
    latest: dict[tuple, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a preemption
            if isinstance(row, dict):
                kind = "eval" if "eval_loss" in row else "train" if "loss" in row else "other"
                latest.pop((row.get("step"), kind), None)
                latest[(row.get("step"), kind)] = row
    return sorted(latest.values(), key=lambda r: r["step"] if isinstance(r.get("step"), int) else -1)


def plot_loss(metrics: list[dict], out: Path) -> Path | None:
    """Training (and eval) loss against step as a PNG; None when there is nothing to plot."""
    train = [(r["step"], r["loss"]) for r in metrics if "loss" in r and "step" in r]
    evals = [(r["step"], r["eval_loss"]) for r in metrics if "eval_loss" in r and "step" in r]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], label="train loss")
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or Path(path).exists()


def _recorded_rows(meta: dict, index: int, src: dict) -> int | None:
    """The rows training used from source `index`, from sftlaunch.json's data_rows."""
    recorded = meta.get("data_rows")
    if not isinstance(recorded, list) or index >= len(recorded):
        return None
    rec = recorded[index]
    if not isinstance(rec, dict) or rec.get("path") != src["path"] or rec.get("split", src.get("split")) != src.get("split"):
        return None
    return rec.get("rows")


def data_rows(recipe: dict, meta: dict) -> list[dict]:
    """Each data source with its row count: from training's record (rows used after max_samples,
    before the eval split) when it wrote one, else counted from local .jsonl files, else the
    recipe's max_samples cap (marked as such)."""
    out = []
    for i, src in enumerate(recipe["data"]["sources"]):
        path = src["path"]
        rows, how = _recorded_rows(meta, i, src), "used in training"
        if rows is None and _looks_local(path) and Path(path).is_file() and path.endswith(".jsonl"):
            with open(path, "rb") as fh:
                rows = sum(1 for line in fh if line.strip())
            if src.get("max_samples"):
                rows = min(rows, src["max_samples"])
            how = "rows in the file" + (" (capped by max_samples)" if src.get("max_samples") else "")
        elif rows is None and src.get("max_samples"):
            rows, how = src["max_samples"], "max_samples cap"
        out.append({"path": path, "split": src.get("split"), "format": src.get("format"), "rows": rows, "how": how})
    return out


def front_matter(recipe: dict, meta: dict, is_adapter: bool, license: str) -> dict:
    datasets = [s["path"] for s in recipe["data"]["sources"] if not _looks_local(s["path"])]
    tags = ["sftlaunch", "sft", recipe["method"]]
    if is_adapter:
        tags += ["peft", "lora"]
    fm = {
        "base_model": meta.get("base_model") or recipe["model"]["id"],
        "library_name": "peft" if is_adapter else "transformers",
        "pipeline_tag": "text-generation",
        "license": license,
        "tags": tags,
    }
    if datasets:
        fm["datasets"] = datasets
    return fm


def usage_snippet(repo_id: str, base_model: str, is_adapter: bool) -> str:
    if is_adapter:
        # The base by its id, not adapter_config.json's base_model_name_or_path: that is the path
        # the trainer loaded it from, which may be a directory on the training machine.
        return f'''```python
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

base_model_id = "{base_model}"
peft_model_id = "{repo_id}"
tokenizer = AutoTokenizer.from_pretrained(peft_model_id, use_fast=True)
bnb_config = BitsAndBytesConfig(
    load_in_4bit=True,
    bnb_4bit_quant_type="nf4",
    bnb_4bit_compute_dtype=torch.bfloat16,
)
model = AutoModelForCausalLM.from_pretrained(
    base_model_id,
    quantization_config=bnb_config,
    dtype=torch.bfloat16,
    device_map="auto",
)
model = PeftModel.from_pretrained(model, peft_model_id)
```'''
    return f'''```python
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

tokenizer = AutoTokenizer.from_pretrained("{repo_id}", use_fast=True)
model = AutoModelForCausalLM.from_pretrained(
    "{repo_id}",
    quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                           bnb_4bit_compute_dtype=torch.bfloat16),
    dtype=torch.bfloat16,
    device_map="auto",
)
```'''


V2_NOTE = ("Open LLM Leaderboard v2 tasks (lm-eval `leaderboard_*`, each at its own shot count). Normalized "
           "scores rescale each benchmark from its random baseline (0) to a perfect score (100), BBH and MuSR per "
           "subtask, IFEval as the mean of prompt- and instruction-level strict accuracy, as the leaderboard did "
           "(https://huggingface.co/docs/leaderboards/open_llm_leaderboard/normalization); the v2 Average is their mean.")


def plan_vs_actual(cal: dict | None, elapsed_s: float | None, usd_per_hour: float | None) -> list[str]:
    """Predicted (the plan), re-planned (the calibration probe, jobs/calibration.py) and actual
    (training time over every attempt, spot restarts included) time and dollars, for the card."""
    if not isinstance(cal, dict) or not isinstance(cal.get("tokens_per_s"), (int, float)):
        return []
    out = []
    if cal.get("predicted_eta_hours") is not None:
        usd = f", ${cal['predicted_usd']:.2f}" if cal.get("predicted_usd") is not None else ""
        speed = f" at {cal['predicted_tokens_per_s']:.0f} tokens/s" if cal.get("predicted_tokens_per_s") else ""
        train = f" (training {cal['predicted_train_hours']:.2f} h)" if cal.get("predicted_train_hours") is not None else ""
        out.append(f"- Planned: {cal['predicted_eta_hours']:.2f} h{train}{usd}{speed}")
    eta = f", re-planned to {cal['eta_hours']:.2f} h" if cal.get("eta_hours") is not None else ""
    usd = f", ${cal['usd']:.2f}" if cal.get("usd") is not None else ""
    mem = f"; peak GPU memory {cal['peak_mem_gb']:.1f} GB" if cal.get("peak_mem_gb") is not None else ""
    out.append(f"- Measured over {cal.get('steps', '?')} steps: {cal['tokens_per_s']:.0f} tokens/s{eta}{usd}{mem}")
    if elapsed_s is not None:
        cost = f", ${elapsed_s / 3600 * usd_per_hour:.2f}" if usd_per_hour is not None else ""
        out.append(f"- Actual training: {elapsed_s / 3600:.2f} h{cost} over every attempt (restarts included)")
    return out


def render_card(*, recipe: dict, meta: dict, results: list[dict], metrics: list[dict], repo_id: str,
                is_adapter: bool, hardware: str | None, usd_per_hour: float | None,
                has_plot: bool, license: str = "other") -> str:
    from sftcore.results import render_details, render_table

    fm = front_matter(recipe, meta, is_adapter, license)
    elapsed = max((r.get("elapsed_s", 0) for r in metrics), default=None)
    lines = ["---", yaml.safe_dump(fm, sort_keys=False).rstrip(), "---", "",
             f"# {repo_id}", "",
             f"A {recipe['method']} fine-tune of [{fm['base_model']}](https://huggingface.co/{fm['base_model']}) "
             f"made with sftlaunch (run `{meta.get('run_id', '?')}`, recipe sha256 `{meta.get('recipe_sha256', '?')}`).",
             "", "## Data", "", "| Source | Split | Format | Rows |", "|---|---|---|---|"]
    for d in data_rows(recipe, meta):
        rows = "?" if d["rows"] is None else f"{d['rows']:,} ({d['how']})"
        lines.append(f"| {d['path']} | {d['split'] or ''} | {d['format']} | {rows} |")
    if meta.get("train_rows") is not None:
        held = meta.get("eval_rows") or 0
        seqs = meta.get("train_sequences")
        packed = f" ({seqs:,} {'packed ' if recipe['data'].get('packing') else ''}sequences)" if seqs else ""
        lines += ["", f"Rows: {meta['train_rows']:,} trained on{packed}, {held:,} held out for the eval loss."]
    lines += ["", f"Prompt template: `{recipe['data']['template']}` (use the same layout at inference).", ""]
    chat_kwargs = meta.get("chat_template_kwargs") or {}
    if chat_kwargs:  # e.g. Qwen3 trained without reasoning: its empty think block was part of the prompt
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(chat_kwargs.items()))
        lines[-1:] = [f"Trained with the chat template rendered as `apply_chat_template(..., {args})`: pass the "
                      "same at inference (vLLM: `chat_template_kwargs`), or the model is prompted in a mode it was "
                      "not trained in.", ""]
    lines += ["## Training", ""]
    lines.append(f"- Hardware: {hardware or 'not recorded'}")
    offer = meta.get("offer") or {}
    if offer.get("cloud"):
        from jobs.rate import Rate

        lines.append(f"- Ran on: {Rate(**offer).describe()} (the offer SkyPilot launched, as the budget guard charged it)")
    if elapsed is not None:
        lines.append(f"- Training time: {elapsed / 3600:.2f} h ({elapsed:.0f} s)")
        if usd_per_hour is not None:
            lines.append(f"- Estimated cost: ${elapsed / 3600 * usd_per_hour:.2f} at ${usd_per_hour:.2f}/h")
    lines += plan_vs_actual(meta.get("calibration"), elapsed, usd_per_hour)
    steps = [r for r in metrics if "loss" in r]
    if steps:
        lines.append(f"- Steps: {steps[-1].get('step')}; final train loss {steps[-1]['loss']:.4f}")
    if has_plot:
        lines += ["", f"![training loss]({LOSS_PLOT})"]
    lines += ["", "## Evaluation", ""]
    if results:
        lines += [render_table(results), "", render_details(results[-1]), ""]
        if results[-1].get("preset") == "leaderboard-v2":
            lines += [V2_NOTE + (" Prompts went through the model's chat template, few-shot examples as turns."
                                 if results[-1].get("chat_template") else ""), ""]
        h = results[-1].get("harness") or {}
        lines.append(f"EleutherAI lm-evaluation-harness {h.get('version', '?')}"
                     + (f", limit {results[-1]['limit']} per task (not a full score)" if results[-1].get("limit") else "") + ".")
    else:
        lines.append("Not evaluated.")
    lines += ["", "## Usage", "", usage_snippet(repo_id, fm["base_model"], is_adapter), "",
              "## Recipe", "", "The full resolved recipe this model was trained with:", "", "```yaml",
              yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)
