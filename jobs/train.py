"""`python -m jobs train`: supervised fine-tuning of one recipe with the Hugging Face Trainer.

Why the Trainer: it already does the hard, well-tested parts (gradient accumulation with loss
normalised over the tokens of the whole accumulated batch via `num_items_in_batch`, DeepSpeed
ZeRO, DDP, exact resume of optimizer/scheduler/RNG/data position). What this module adds is the
run contract: metrics.jsonl, a progress line the launcher parses, checkpoints by wall clock with
bucket copies (the Trainer callbacks in jobs.callbacks) and resume on every node (jobs.checkpoint),
the budget guard, and DIR/final/ + sftlaunch.json.

The budget guard counts the run's elapsed time across restarts: each checkpoint stores the
seconds spent so far (sftlaunch_state.json) and a resumed job starts counting from there, so a
preempted or restarted run cannot spend max_usd once per attempt. (Time after the last
checkpoint of a killed attempt is not counted: a checkpoint is the only record that survives.)

Exit codes: 0 done, or stopped after saving a checkpoint — on the launcher's request
(<control>/stop) or by the budget guard (the launched offer's $/h × elapsed hours passed the
recipe's resources.max_usd); a stop writes DIR/STOPPED ({reason, step, checkpoint}) so the entrypoint skips
eval and publish, and a relaunch resumes. A stop is not an error on purpose: a managed job that
exits non-zero is restarted by SkyPilot (max_restarts_on_errors) and would spend again.
1 failed, 2 bad input.
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
from jobs import checkpoint_manifest
from jobs.collectives import (
    broadcast,
    init_dist,
    local_rank,
    log,
    rank,
    shutdown,
    world_size,
)
from jobs.resume import attempt_grad_accum, finished_or_refused, restore_metrics, resume_point, resumed_step
from sftcore import contract, store
from sftcore.contract import Env, JobEnv, RunLayout


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs train", description="Fine-tune one recipe.")
    job = JobEnv.from_env()
    p.add_argument("--recipe", default=job.recipe, help="recipe YAML")
    p.add_argument("--out", default=job.out, help="output directory")
    p.add_argument("--run-id", default=job.run_id)
    p.add_argument("--max-steps", type=int, default=job.max_steps,  # smoke runs through the entrypoint
                   help=f"override train.max_steps (default ${Env.MAX_STEPS})")
    return p


class _TokenCounter:
    """Wraps the collator to count real (non-pad) tokens seen, for tokens/s.

    The count lives in shared memory: with DataLoader workers (CUDA hosts, jobs.speed) the
    collator runs in the worker processes, and a plain attribute would count there, not here."""

    def __init__(self, collator, pad_id: int | None = None):
        import multiprocessing

        self.collator = collator
        self.pad_id = pad_id
        self._count = multiprocessing.Value("q", 0)

    @property
    def tokens(self) -> int:
        return int(self._count.value)

    def __call__(self, features):
        batch = self.collator(features)
        mask = batch.get("attention_mask")
        if mask is not None:
            n = int(mask.sum())
        elif self.pad_id is not None:  # packed rows carry no mask; their tail is padding
            n = int((batch["input_ids"] != self.pad_id).sum())
        else:
            n = int(batch["input_ids"].numel())
        with self._count.get_lock():
            self._count.value += n
        return batch


def _control_dir(bucket: str | None, run_id: str | None) -> str | None:
    """The stop channel: the launcher's local control dir, else `<bucket>/<run id>/control`."""
    return JobEnv.from_env().control or (RunLayout.in_bucket(bucket, run_id).control if bucket and run_id else None)


def _deepspeed_config(name: str | None) -> str | None:
    if not name:
        return None
    path = Path(__file__).resolve().parent.parent / "docker" / "deepspeed" / f"{name}.json"
    if not path.is_file():
        from sftcore.errors import UserError

        raise UserError(f"train.deepspeed {name!r}: no config at {path}")
    return str(path)


def report_to(run_dir: Path | None = None) -> list[str] | str:
    """W&B when WANDB_API_KEY is set, wandb is installed, and W&B answers and accepts the key
    (offline when unreachable); see jobs.reporting. Its files go under `run_dir`."""
    from jobs import reporting

    return reporting.report_to(run_dir)


def _wandb_env(run_id: str | None, recipe) -> None:
    """One W&B run per sftlaunch run, continued (not duplicated) after a restart."""
    os.environ.setdefault("WANDB_PROJECT", "sftlaunch")
    if run_id:
        os.environ.setdefault("WANDB_RUN_ID", run_id)
        os.environ.setdefault("WANDB_RESUME", "allow")
    os.environ.setdefault("WANDB_NAME", run_id or recipe.name)


def planned_steps(recipe, train_rows: int, max_steps: int | None, grad_accum: int | None = None) -> int:
    """The optimizer steps this run trains in all: the override, the recipe's max_steps, or its epochs."""
    t = recipe.train
    steps_per_epoch = math.ceil(math.ceil(train_rows / (t.micro_batch_size * world_size())) / (grad_accum or t.grad_accum))
    return max_steps or t.max_steps or max(1, math.ceil(steps_per_epoch * t.epochs))


def training_arguments(recipe, out: Path, train_rows: int, eval_rows: int, max_steps: int | None,
                       eval_on_start: bool = False, liger: bool = False, grad_accum: int | None = None):
    """The Trainer's arguments; `liger` applies Liger's kernels (jobs.speed.use_liger decides);
    `grad_accum` overrides the recipe's when a resume on another GPU count rescales it."""
    import torch
    from transformers import TrainingArguments

    from jobs import speed

    t = recipe.train
    ga = grad_accum or t.grad_accum
    cuda = torch.cuda.is_available()
    world = world_size()
    total = planned_steps(recipe, train_rows, max_steps, ga)
    eval_steps = max(1, total // 5)
    kwargs = dict(
        output_dir=str(RunLayout(out).checkpoints),
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=int(math.ceil(t.warmup_ratio * total)),
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=ga,
        num_train_epochs=t.epochs,
        max_steps=max_steps or t.max_steps or -1,
        optim=t.optimizer,
        seed=t.seed,
        data_seed=t.seed,
        bf16=cuda and t.precision == "bf16",
        fp16=cuda and t.precision == "fp16",
        use_cpu=not cuda,
        deepspeed=_deepspeed_config(t.deepspeed),
        report_to=report_to(out),
        run_name=JobEnv.from_env().run_id or recipe.name,
        logging_steps=max(1, min(10, total // 50)),
        logging_first_step=True,
        eval_strategy="steps" if eval_rows else "no",
        eval_steps=eval_steps,
        # The untrained model's eval loss: the baseline the loss plot and the tests compare with.
        eval_on_start=bool(eval_rows) and eval_on_start,
        save_strategy="no",  # saves are decided by jobs.train's wall-clock callback
        remove_unused_columns=False,
        **speed.dataloader_kwargs(cuda),
        use_liger_kernel=liger,
        disable_tqdm=True,
        gradient_checkpointing=False,  # enabled by jobs.model with use_reentrant=False
    )
    if not cuda and world > 1:
        kwargs["ddp_backend"] = "gloo"
    if world > 1 and recipe.method in ("lora", "qlora") and not t.deepspeed:
        # Every adapter weight gets a gradient each step; DDP's search for unused parameters
        # (its default for a PeftModel, which is no PreTrainedModel) is a wasted graph walk.
        kwargs["ddp_find_unused_parameters"] = False
    return TrainingArguments(**kwargs), total


def train(recipe, out: Path, run_id: str | None = None, max_steps: int | None = None,
          datasets=None, collator=None, model_path: str | None = None) -> int:
    """Run training; `datasets`/`collator`/`model_path` let tests inject their own."""
    from transformers import Trainer, set_seed

    from jobs import model as jm
    from jobs.callbacks import TrainingAttempt, make_callbacks
    from jobs.templates import trained_chat_kwargs

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    set_seed(recipe.train.seed)
    path = model_path or jm.resolve_model_path(recipe)
    tokenizer = jm.load_tokenizer(recipe, path)
    train_ds, eval_ds, data_info = _datasets(recipe, tokenizer, datasets)
    # The arguments first: with a DeepSpeed config they join the process group through DeepSpeed
    # (deepspeed.comm, which zero.Init counts ranks with) and hold transformers' HfDeepSpeedConfig,
    # so a ZeRO-3 from_pretrained builds the model under deepspeed.zero.Init, each rank
    # materialising only its shard (8B full FT: 32 GB of fp32 weights per rank otherwise).
    args, total = training_arguments(recipe, out, len(train_ds), len(eval_ds or []), max_steps, eval_on_start=True)
    _ = args.device  # the Trainer's own device and process-group set-up, now rather than at train()
    init_dist(deepspeed=bool(recipe.train.deepspeed))
    start = _where_to_start(recipe, out, run_id, args, total, (len(train_ds), len(eval_ds or [])), max_steps)
    if start is None:
        shutdown()
        return 0
    args, total, resume, saved, topo = start
    model = jm.load_model(recipe, tokenizer, path)
    # Liger's kernels are chosen by the loaded model's family; the Trainer applies them at init.
    args.use_liger_kernel = _speed_switches(recipe, model)
    if collator is None:
        from jobs.data import make_collator, prepare_model_for_packing

        collator = make_collator(recipe, tokenizer, prepare_model_for_packing(model, recipe))
    log(f"model {recipe.model.id} ({recipe.method}) from {path}; {jm.describe(model)}")
    if args.report_to and "wandb" in args.report_to:
        _wandb_env(run_id, recipe)
    counter = _TokenCounter(collator, tokenizer.pad_token_id)
    run = TrainingAttempt(bucket=recipe.output.bucket, topology=topo, started=t0,
                          elapsed_before=float(saved.get("elapsed_s") or 0.0), attempts=int(saved.get("attempts") or 0) + 1)
    if rank() == 0:
        _reset_run_files(recipe, out, resume, saved)
    callbacks = make_callbacks(out, counter, recipe, run_id, run, _control_dir(recipe.output.bucket, run_id))
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds or None,
                      data_collator=counter, processing_class=tokenizer, callbacks=callbacks)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our progress line replaces its raw dict prints
    log(f"training: {len(train_ds)} sequences, {len(eval_ds or [])} held out, {total} optimizer steps")
    _train_and_save(trainer, tokenizer, recipe, out, run_id, run, resume, total, callbacks,
                    {"train_rows": data_info.get("train_rows", len(train_ds)),
                     "eval_rows": data_info.get("eval_rows", len(eval_ds or [])),
                     "train_sequences": len(train_ds), "eval_sequences": len(eval_ds or []),
                     # how generation, eval and serving must render prompts to match training
                     "chat_template_kwargs": trained_chat_kwargs(recipe.data.template, tokenizer,
                                                                 data_info.get("reasoning_rows", 0))},
                    data_info.get("sources"))
    shutdown()
    return 0


def _datasets(recipe, tokenizer, datasets) -> tuple[list, list, dict]:
    """(train, eval, what building them found: rows per source, skipped rows); `datasets` given by a
    test are used as they are. No training row is bad input (exit 2)."""
    data_info: dict = {}
    if datasets is None:
        from jobs.data import build_datasets

        datasets = build_datasets(recipe, tokenizer, info=data_info)
    train_ds, eval_ds = datasets
    if not train_ds:
        from sftcore.errors import UserError

        raise UserError(f"{recipe.source_path or 'recipe'}: data.sources gave no training rows")
    return train_ds, eval_ds, data_info


def _where_to_start(recipe, out: Path, run_id: str | None, args, total: int, sizes: tuple[int, int],
                    max_steps: int | None):
    """(arguments, total steps, checkpoint to resume or None, its saved state, topology), or None when
    this run's training is already finished. Joins the process group (resume_point does) before the
    model loads: a 4-bit model is quantized on the device it loads to, which must be this rank's."""
    topo = checkpoint_manifest.Topology.from_env()
    resume = resume_point(RunLayout(out).checkpoints, ckpt.bucket_prefix(recipe.output.bucket, run_id), topo)
    args.eval_on_start = args.eval_on_start and resume is None
    done, refused = broadcast(finished_or_refused(out, run_id) if rank() == 0 else None)  # one answer for every node
    if refused:
        from sftcore.errors import UserError

        raise UserError(refused)
    if done is not None and done >= total:
        log(f"training already finished: {RunLayout(out).final} holds step {done} of {total}; nothing to train, "
            "final/ kept (a new run trains again; a higher --max-steps continues this one)")
        return None
    saved = ckpt.read_state(resume)
    if resume and local_rank() == 0:
        print(f"node {topo.node}: resuming from checkpoint {resume}", flush=True)
    if saved.get("elapsed_s"):
        log(f"budget guard: {saved['elapsed_s'] / 3600:.3f} h spent before this attempt")
    grad_accum = attempt_grad_accum(resume, saved, recipe, topo)
    if grad_accum != args.gradient_accumulation_steps:
        # Same global batch on another GPU count (jobs.checkpoint_topology). Only runs without
        # DeepSpeed get here (ZeRO on another world size is refused), so rebuilding is safe.
        args, total = training_arguments(recipe, out, *sizes, max_steps, eval_on_start=resume is None,
                                         grad_accum=grad_accum)
    return args, total, resume, saved, topo


def _reset_run_files(recipe, out: Path, resume: Path | None, saved: dict) -> None:
    """Rank 0, before training: no stale STOPPED, the recipe trained beside the outputs, and the
    metrics as of the resumed step (a fresh start: rows of an earlier attempt are void)."""
    layout = RunLayout(out)
    layout.stopped_marker.unlink(missing_ok=True)
    layout.recipe.write_text(recipe.to_yaml())
    if resume is None:
        layout.metrics.unlink(missing_ok=True)
    else:
        restore_metrics(out, resume, int(saved.get("step") or resumed_step(resume)))


def _train_and_save(trainer, tokenizer, recipe, out: Path, run_id: str | None, run, resume: Path | None,
                    total: int, callbacks: list, rows: dict, sources) -> None:
    """Train to the end, or to a stop; then the final model, or the stop's checkpoint and marker,
    each only once its background upload is complete."""
    from jobs.callbacks import CheckpointCallback, NothingLeftToTrain

    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except NothingLeftToTrain:  # resumed at max_steps (killed after its last checkpoint): no step 17/16
        log(f"checkpoint {resume} is at step {trainer.state.global_step} of {total}: nothing left to train")
    uploads = next(c.uploads for c in callbacks if isinstance(c, CheckpointCallback))  # background uploads
    if run.stopped:
        uploads.finish()  # the stop checkpoint complete in the bucket before STOPPED says so
        _finish_stopped(trainer, out, run_id, run)
    else:
        _save_final(trainer, tokenizer, recipe, out, run_id, run, rows, sources)
        uploads.finish()  # the last checkpoint's upload ran while the final model was saved


def _speed_switches(recipe, model) -> bool:
    """TF32 on Ampere+, and whether to apply Liger's kernels; each choice logged with its reason."""
    import torch

    from jobs import speed

    cuda = torch.cuda.is_available()
    base = getattr(model, "get_base_model", lambda: model)()
    liger, why = speed.use_liger(recipe, getattr(getattr(base, "config", None), "model_type", None), cuda)
    attn = getattr(getattr(base, "config", None), "_attn_implementation", None)
    tf32 = speed.enable_tf32()
    log(f"speed: attention {attn}; {why}; gradient checkpointing "
        f"{'on' if getattr(base, 'is_gradient_checkpointing', False) else 'off'}; tf32 {'on' if tf32 else 'off'}")
    return liger


def _finish_stopped(trainer, out: Path, run_id: str | None, run) -> None:
    """Training stopped on purpose after a checkpoint: DIR/STOPPED and <control>/stopped say so;
    the job exits 0 (a managed job exiting non-zero would be restarted and spend again)."""
    step = trainer.state.global_step
    if rank() == 0:
        stopped = {"reason": run.stopped, "detail": run.detail, "step": step,
                   "checkpoint": run.last_checkpoint}
        RunLayout(out).stopped_marker.write_text(json.dumps(stopped) + "\n")
        _write_stopped(run_id, run.bucket, stopped)
    log(f"training stopped at step {step} ({run.stopped}); resume by relaunching with the same run id")


def _save_final(trainer, tokenizer, recipe, out: Path, run_id: str | None, run, rows: dict,
                data_rows: list | None) -> None:
    """DIR/final/: the model (or adapter), its tokenizer, and sftlaunch.json describing the run."""
    layout = RunLayout(out)
    final = layout.final
    trainer.save_model(str(final))
    if rank() == 0:
        tokenizer.save_pretrained(str(final))
        import torch

        meta = {
            "run_id": run_id, "recipe_sha256": recipe.sha256(), "base_model": recipe.model.id,
            "base_revision": recipe.model.revision, "method": recipe.method, "template": recipe.data.template,
            "seq_len": recipe.data.seq_len,
            **rows,
            "steps": trainer.state.global_step, "wall_s": round(time.time() - run.started, 2),
            "elapsed_s": round(run.elapsed(time.time()), 2),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "world_size": world_size(),
        }
        if data_rows is not None:
            meta["data_rows"] = data_rows
        from jobs import rate as rate_mod  # the offer that ran and its $/h, for the card and record

        offer = rate_mod.resolve(device=rate_mod.visible_device())
        meta["offer"] = offer.as_dict() if offer else None
        from jobs.calibration import last_calibration

        meta["calibration"] = last_calibration(layout.metrics)  # measured vs planned (jobs.calibration)
        layout.final_meta.write_text(json.dumps(meta, indent=2) + "\n")
        log(f"final model saved to {final}")


def _write_stopped(run_id, bucket, stopped: dict) -> None:
    """`<control>/stopped` tells the launcher the job ended on purpose, after a checkpoint."""
    control = _control_dir(bucket, run_id)
    if not control:
        return
    flag = store.join(control, contract.STOPPED_FLAG)
    try:
        store.write_text(flag, json.dumps(stopped))
    except Exception as exc:  # noqa: BLE001 - the checkpoint and DIR/STOPPED are what matter
        ckpt.warn(f"cannot write {flag} ({exc})")


def main(argv: list[str] | None = None) -> int:
    from sftcore.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if not args.recipe:
        raise UserError(f"--recipe (or {Env.RECIPE}) is required")
    if not args.out:
        raise UserError(f"--out (or {Env.OUT}) is required")
    if args.max_steps is not None and args.max_steps <= 0:
        raise UserError(f"--max-steps {args.max_steps}: must be a positive integer")
    from sftcore.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    return train(recipe, Path(args.out), run_id=args.run_id, max_steps=args.max_steps)


if __name__ == "__main__":
    sys.exit(main())
