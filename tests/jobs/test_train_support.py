"""Shared builders for the train-side tests (no tests here): a tiny *pretrained-looking* Llama saved
to disk, a recipe pointing at it, hand-made token rows and a padding collator.

Why not jobs.tiny: these tests must pin the trainer's behaviour independently of the data
helper's model and data pipeline; the end-to-end tests use those through `python -m jobs train`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = [f"w{i}" for i in range(40)]
SPECIAL = ["<unk>", "<s>", "</s>"]


def build_tiny_model(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama + word-level tokenizer, saved with save_pretrained (no pad token: the loader
    must choose one distinct from EOS)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (path / "config.json").is_file():
        return path
    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_data(path: Path, n: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"instruction": f"w{i % 10}", "input": "", "output": f"w{(i + 1) % 10}"}) + "\n")
    return path


def recipe_dict(model_dir: Path, data: Path, **train) -> dict:
    t = {"epochs": 1, "learning_rate": 1e-3, "micro_batch_size": 2, "grad_accum": 2, "optimizer": "adamw_torch",
         "precision": "fp32", "gradient_checkpointing": False, "checkpoint_minutes": 60, "max_steps": 4,
         "warmup_ratio": 0.0, "scheduler": "constant", "seed": 0}
    t.update(train)
    return {"name": "t", "model": {"id": str(model_dir)}, "method": "full",
            "data": {"sources": [{"path": str(data), "format": "alpaca"}], "template": "plain", "seq_len": 32,
                     "packing": False, "eval_fraction": 0.0},
            "train": t, "resources": {"clouds": ["local"]}, "eval": None}


def make_recipe(model_dir: Path, data: Path, method: str = "full", bucket: str | None = None,
                max_usd: float | None = None, **train):
    """`bucket` and `max_usd`: the recipe's output.bucket and resources.max_usd, where the job
    reads them."""
    from sftcore.recipe import recipe_from_dict

    d = recipe_dict(model_dir, data, **train)
    d["method"] = method
    d["output"] = {"bucket": bucket}
    if max_usd is not None:
        d["resources"]["max_usd"] = max_usd
    if method in ("lora", "qlora"):
        d["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    if method == "qlora":
        d["quantization"] = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}
    return recipe_from_dict(d)


def token_rows(n: int = 16, seed: int = 0, eos: int = 2) -> list[dict]:
    """Rows of varying length with a prompt part masked out (-100) and EOS trained, like the data
    pipeline produces; varying completion lengths make loss normalisation matter."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = [1] + [rng.randrange(3, 43) for _ in range(rng.randrange(2, 8))]
        answer = [rng.randrange(3, 43) for _ in range(rng.randrange(1, 12))] + [eos]
        ids = prompt + answer
        rows.append({"input_ids": ids, "labels": [-100] * len(prompt) + answer,
                     "position_ids": list(range(len(ids)))})
    return rows


class PadCollator:
    """Right-pads with the tokenizer's pad id; labels padded with -100."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows):
        import torch

        n = max(len(r["input_ids"]) for r in rows)
        ids = [r["input_ids"] + [self.pad_id] * (n - len(r["input_ids"])) for r in rows]
        labels = [r["labels"] + [-100] * (n - len(r["labels"])) for r in rows]
        mask = [[1] * len(r["input_ids"]) + [0] * (n - len(r["input_ids"])) for r in rows]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def drive(argv: list[str]) -> int:
    """`python -m tests.jobs.test_train_support ROOT OUT [train overrides as JSON]`: a training
    process on the hand-made rows, for tests that kill and restart it."""
    from jobs import model as jm
    from jobs import train as jt

    root, out = Path(argv[0]), Path(argv[1])
    overrides = json.loads(argv[2]) if len(argv) > 2 else {}
    method = overrides.pop("method", "full")
    run_id = overrides.pop("run_id", "sftl-t-0000")
    recipe = make_recipe(build_tiny_model(root / "model"), write_data(root / "d.jsonl"), method=method, **overrides)
    tok = jm.load_tokenizer(recipe)
    from sftcore.errors import SftlaunchError, job_exit

    try:  # as `python -m jobs train` does: a refusal is one line and its exit code
        rc = jt.train(recipe, out, run_id=run_id, datasets=(token_rows(64), token_rows(4, seed=1)),
                      collator=PadCollator(tok.pad_token_id))
    except SftlaunchError as exc:
        return job_exit(exc)
    return rc or left_up()


def left_up() -> int:
    """3 and a line when train() returned with the process group still up (a process exiting so can
    die of SIGABRT in teardown, pytorch/pytorch#190489); 0 otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        print("train() returned with the process group still up", flush=True)
        return 3
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(drive(sys.argv[1:]))
