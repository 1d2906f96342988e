"""`python -m jobs train`: supervised fine-tuning of one recipe with the Hugging Face Trainer.

Why the Trainer: it already does the hard, well-tested parts (gradient accumulation with loss
normalised over the tokens of the whole accumulated batch via `num_items_in_batch`, DeepSpeed
ZeRO, DDP, exact resume of optimizer/scheduler/RNG/data position). What this module adds is the
run contract: metrics.jsonl, a progress line the launcher parses, checkpoints by wall clock with
bucket copies and resume (jobs.checkpoint), the budget guard, and DIR/final/ + sftlaunch.json.

Exit codes: 0 done (or stopped on the launcher's request: <control>/stop), 1 failed,
2 bad input, 3 stopped by the in-job budget guard (SFTLAUNCH_USD_PER_HOUR × elapsed hours passed
SFTLAUNCH_MAX_USD) after saving a checkpoint; a relaunch resumes from it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from jobs import checkpoint as ckpt

BUDGET_EXIT = 3
STOPPED_MARKER = "STOPPED"  # in DIR: the entrypoint skips eval/publish when training was stopped


def log(msg: str) -> None:
    if _rank() == 0:
        print(msg, flush=True)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs train", description="Fine-tune one recipe.")
    p.add_argument("--recipe", default=os.environ.get("SFTLAUNCH_RECIPE") or None, help="recipe YAML")
    p.add_argument("--out", default=os.environ.get("SFTLAUNCH_OUT") or None, help="output directory")
    p.add_argument("--run-id", default=os.environ.get("SFTLAUNCH_RUN_ID") or None)
    env_steps = os.environ.get("SFTLAUNCH_MAX_STEPS")  # for smoke runs through the entrypoint
    p.add_argument("--max-steps", type=int, default=int(env_steps) if env_steps else None,
                   help="override train.max_steps (default $SFTLAUNCH_MAX_STEPS)")
    return p


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _broadcast_flags(*flags: bool) -> list[bool]:
    """Rank 0's decisions for everyone: clocks differ per rank, and a save that only some ranks
    enter deadlocks DeepSpeed/DDP."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(flags)
    import torch

    t = torch.tensor([int(f) for f in flags], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=0)
    return [bool(v) for v in t.cpu().tolist()]


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class _TokenCounter:
    """Wraps the collator to count real (non-pad) tokens seen, for tokens/s."""

    def __init__(self, collator, pad_id: int | None = None):
        self.collator = collator
        self.pad_id = pad_id
        self.tokens = 0

    def __call__(self, features):
        batch = self.collator(features)
        mask = batch.get("attention_mask")
        if mask is not None:
            self.tokens += int(mask.sum())
        elif self.pad_id is not None:  # packed rows carry no mask; their tail is padding
            self.tokens += int((batch["input_ids"] != self.pad_id).sum())
        else:
            self.tokens += int(batch["input_ids"].numel())
        return batch


def _make_callbacks(out: Path, counter: _TokenCounter, recipe, run_id, state_box: dict):
    from transformers import TrainerCallback

    metrics_path = out / "metrics.jsonl"
    ckpt_root = out / "checkpoints"
    prefix = ckpt.bucket_prefix(state_box["bucket"], run_id)
    start = time.time()
    usd_h = os.environ.get("SFTLAUNCH_USD_PER_HOUR")
    max_usd = os.environ.get("SFTLAUNCH_MAX_USD")
    control_dir = os.environ.get("SFTLAUNCH_CONTROL") or (
        f"{state_box['bucket'].rstrip('/')}/{run_id}/control" if state_box["bucket"] and run_id else None)

    def control_stop_requested() -> bool:
        if not control_dir:
            return False
        try:
            fs, path = ckpt._fs(control_dir)
            return fs.exists(f"{path.rstrip('/')}/stop")
        except Exception as exc:  # noqa: BLE001 - a flaky bucket must not kill training
            ckpt.warn(f"cannot read {control_dir}/stop ({exc})")
            return False

    class RunCallback(TrainerCallback):
        """metrics.jsonl, progress line, wall-clock checkpoints, budget guard, checkpoint finalize."""

        def __init__(self):
            self.last_save = time.time()
            self.last_log_t = start
            self.last_tokens = 0
            self.last_control_check = 0.0
            self.first_step = None

        def on_train_begin(self, args, state, control, **kw):
            self.first_step = state.global_step
            self.last_log_t = time.time()
            self.last_tokens = counter.tokens

        def on_step_end(self, args, state, control, **kw):
            now = time.time()
            want_save = now - self.last_save >= recipe.train.checkpoint_minutes * 60
            over_budget = False
            if usd_h and max_usd:
                over_budget = (now - start) / 3600 * float(usd_h) > float(max_usd)
            stop_req = False
            if now - self.last_control_check > 10:
                self.last_control_check = now
                stop_req = _rank() == 0 and control_stop_requested()
            want_save, over_budget, stop_req = _broadcast_flags(want_save, over_budget, stop_req)
            if state.global_step >= state.max_steps:
                want_save = True
            if over_budget or stop_req:
                state_box["stopped"] = "budget" if over_budget else "control"
                if over_budget:
                    log(f"budget guard: {(now - start) / 3600:.3f} h × ${float(usd_h):.2f}/h passed max_usd "
                        f"${float(max_usd):.2f}; saving a checkpoint and stopping (exit {BUDGET_EXIT})")
                else:
                    log(f"stop requested through {control_dir}/stop; saving a checkpoint and stopping")
                want_save = True
                control.should_training_stop = True
            if want_save:
                control.should_save = True
            return control

        def on_save(self, args, state, control, **kw):
            _barrier()
            if state.is_world_process_zero:
                from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

                src = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
                if src.is_dir():
                    dest = ckpt.finalize(src, ckpt_root, state.global_step, recipe.train.keep_checkpoints, prefix)
                    state_box["last_checkpoint"] = str(dest)
                    log(f"checkpoint saved: {dest}")
            _barrier()
            self.last_save = time.time()

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            now = time.time()
            row = {"step": state.global_step, "total_steps": state.max_steps, "epoch": state.epoch,
                   "elapsed_s": round(now - start, 3)}
            if "loss" in logs:
                dt = max(now - self.last_log_t, 1e-9)
                tps = (counter.tokens - self.last_tokens) * _world() / dt
                self.last_log_t, self.last_tokens = now, counter.tokens
                row.update(loss=logs["loss"], lr=logs.get("learning_rate"), tokens_per_s=round(tps, 2))
                if "grad_norm" in logs:
                    row["grad_norm"] = logs["grad_norm"]
                done = state.global_step - (self.first_step or 0)
                rate = (now - start) / max(done, 1)
                eta = rate * (state.max_steps - state.global_step)
                print(f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} "
                      f"tokens/s {tps:.0f} ETA {_fmt_eta(eta)}", flush=True)
            elif "eval_loss" in logs:
                row["eval_loss"] = logs["eval_loss"]
                print(f"eval step {state.global_step}/{state.max_steps} eval_loss {logs['eval_loss']:.4f}", flush=True)
            else:
                return
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    return [RunCallback()]


def _deepspeed_config(name: str | None) -> str | None:
    if not name:
        return None
    path = Path(__file__).resolve().parent.parent / "docker" / "deepspeed" / f"{name}.json"
    if not path.is_file():
        from launcher.errors import UserError

        raise UserError(f"train.deepspeed {name!r}: no config at {path}")
    return str(path)


def training_arguments(recipe, out: Path, train_rows: int, eval_rows: int, max_steps: int | None):
    import torch
    from transformers import TrainingArguments

    t = recipe.train
    cuda = torch.cuda.is_available()
    world = _world()
    steps_per_epoch = math.ceil(math.ceil(train_rows / (t.micro_batch_size * world)) / t.grad_accum)
    total = max_steps or t.max_steps or max(1, math.ceil(steps_per_epoch * t.epochs))
    eval_steps = max(1, total // 5)
    kwargs = dict(
        output_dir=str(out / "checkpoints"),
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=int(math.ceil(t.warmup_ratio * total)),
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        max_steps=max_steps or t.max_steps or -1,
        optim=t.optimizer,
        seed=t.seed,
        data_seed=t.seed,
        bf16=cuda and t.precision == "bf16",
        fp16=cuda and t.precision == "fp16",
        use_cpu=not cuda,
        deepspeed=_deepspeed_config(t.deepspeed),
        report_to=["wandb"] if os.environ.get("WANDB_API_KEY") else "none",
        run_name=os.environ.get("SFTLAUNCH_RUN_ID") or recipe.name,
        logging_steps=max(1, min(10, total // 50)),
        logging_first_step=True,
        eval_strategy="steps" if eval_rows else "no",
        eval_steps=eval_steps,
        save_strategy="no",  # saves are decided by jobs.train's wall-clock callback
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        gradient_checkpointing=False,  # enabled by jobs.model with use_reentrant=False
    )
    if not cuda and world > 1:
        kwargs["ddp_backend"] = "gloo"
    return TrainingArguments(**kwargs), total


def train(recipe, out: Path, run_id: str | None = None, max_steps: int | None = None,
          datasets=None, collator=None, model_path: str | None = None) -> int:
    """Run training; `datasets`/`collator`/`model_path` let tests inject their own."""
    from transformers import Trainer, set_seed

    from jobs import model as jm

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    bucket = recipe.output.bucket or os.environ.get("SFTLAUNCH_BUCKET") or None
    set_seed(recipe.train.seed)
    path = model_path or jm.resolve_model_path(recipe)
    tokenizer = jm.load_tokenizer(recipe, path)
    if datasets is None:
        from jobs.data import build_datasets

        datasets = build_datasets(recipe, tokenizer)
    train_ds, eval_ds = datasets
    if not train_ds:
        from launcher.errors import UserError

        raise UserError(f"{recipe.source_path or 'recipe'}: data.sources gave no training rows")
    model = jm.load_model(recipe, tokenizer, path)
    if collator is None:
        from jobs.data import make_collator, prepare_model_for_packing

        collator = make_collator(recipe, tokenizer, prepare_model_for_packing(model, recipe))
    log(f"model {recipe.model.id} ({recipe.method}) from {path}; {jm.describe(model)}")
    args, total = training_arguments(recipe, out, len(train_ds), len(eval_ds or []), max_steps)
    counter = _TokenCounter(collator, tokenizer.pad_token_id)
    state_box = {"bucket": bucket, "stopped": None, "last_checkpoint": None}
    resume = ckpt.find_resume(out / "checkpoints", bucket, run_id) if _rank() == 0 else None
    resume = _broadcast_path(resume)
    if resume:
        log(f"resuming from checkpoint {resume}")
    if _rank() == 0:
        (out / STOPPED_MARKER).unlink(missing_ok=True)
        (out / "recipe.yaml").write_text(recipe.to_yaml())
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds or None,
                      data_collator=counter, processing_class=tokenizer,
                      callbacks=_make_callbacks(out, counter, recipe, run_id, state_box))
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our progress line replaces its raw dict prints
    log(f"training: {len(train_ds)} rows, {len(eval_ds or [])} held out, {total} optimizer steps")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if state_box["stopped"]:
        if _rank() == 0:
            (out / STOPPED_MARKER).write_text(json.dumps({"reason": state_box["stopped"],
                                                         "checkpoint": state_box["last_checkpoint"]}))
            if state_box["stopped"] == "control":
                _write_stopped(out, run_id, bucket, trainer.state.global_step, state_box["last_checkpoint"])
        log(f"training stopped at step {trainer.state.global_step}; resume by relaunching with the same run id")
        return BUDGET_EXIT if state_box["stopped"] == "budget" else 0
    final = out / "final"
    trainer.save_model(str(final))
    if _rank() == 0:
        tokenizer.save_pretrained(str(final))
        import torch

        meta = {
            "run_id": run_id, "recipe_sha256": recipe.sha256(), "base_model": recipe.model.id,
            "base_revision": recipe.model.revision, "method": recipe.method, "template": recipe.data.template,
            "seq_len": recipe.data.seq_len, "train_rows": len(train_ds), "eval_rows": len(eval_ds or []),
            "steps": trainer.state.global_step, "wall_s": round(time.time() - t0, 2),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "world_size": _world(),
        }
        (final / "sftlaunch.json").write_text(json.dumps(meta, indent=2) + "\n")
        log(f"final model saved to {final}")
    _barrier()
    return 0


def _broadcast_path(path):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        try:
            from accelerate import PartialState

            PartialState()  # initialises the process group under torchrun/accelerate
        except Exception:  # noqa: BLE001
            return path
        if not dist.is_initialized():
            return path
    box = [str(path) if path else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0]) if box[0] else None


def _write_stopped(out: Path, run_id, bucket, step, checkpoint) -> None:
    control = os.environ.get("SFTLAUNCH_CONTROL") or (f"{bucket.rstrip('/')}/{run_id}/control" if bucket and run_id else None)
    if not control:
        return
    fs, path = ckpt._fs(control)
    fs.makedirs(path, exist_ok=True)
    with fs.open(f"{path.rstrip('/')}/stopped", "w") as fh:
        fh.write(json.dumps({"step": step, "checkpoint": checkpoint}))


def main(argv: list[str] | None = None) -> int:
    from launcher.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if not args.recipe:
        raise UserError("--recipe (or SFTLAUNCH_RECIPE) is required")
    if not args.out:
        raise UserError("--out (or SFTLAUNCH_OUT) is required")
    if args.max_steps is not None and args.max_steps <= 0:
        raise UserError(f"--max-steps {args.max_steps}: must be a positive integer")
    from launcher.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    return train(recipe, Path(args.out), run_id=args.run_id, max_steps=args.max_steps)


if __name__ == "__main__":
    sys.exit(main())
