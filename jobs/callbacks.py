"""The Trainer callbacks of one training attempt: metrics.jsonl and the progress line, checkpoints
by wall clock (finalized on every node, sealed and uploaded in the background), and the stop decisions (budget
guard, the launcher's stop request), with the state they share with jobs.train (TrainingAttempt).

Why callbacks: the Trainer owns the loop, the data position and the checkpoint format; these hook
the run contract (DESIGN: metrics, checkpoints, budget) onto its events without forking it.
Imports transformers: jobs.train imports this module only once it trains.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from jobs import checkpoint as ckpt
from jobs import checkpoint_manifest
from jobs import rate as rate_mod
from jobs.collectives import barrier, broadcast_flags, local_rank, log, rank, world_size
from sftcore import contract, store
from sftcore.contract import RunLayout

BAR_WIDTH = 20
CONTROL_CHECK_S = 10  # how often rank 0 looks for <control>/stop (a bucket round trip)


@dataclass
class TrainingAttempt:
    """What train() and the callbacks share for one attempt."""

    bucket: str | None
    topology: checkpoint_manifest.Topology
    started: float  # this attempt's start (time.time())
    elapsed_before: float  # seconds spent by earlier attempts (from the resumed checkpoint)
    attempts: int
    stopped: str | None = None  # "budget" or "control" once a stop was decided
    detail: str | None = None  # why, for the log and DIR/STOPPED
    last_checkpoint: str | None = None

    def elapsed(self, now: float) -> float:
        """Seconds the run has spent, earlier attempts included (what the budget guard counts)."""
        return self.elapsed_before + now - self.started


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_line(step: int, total: int, loss: float, tokens_per_s: float, eta_s: float) -> str:
    """`step N/M [####------] 40% loss L tokens/s T ETA h:mm:ss`: a text bar for people, and
    the `step N/M` that launcher.lifecycle parses."""
    frac = min(1.0, step / total) if total > 0 else 0.0
    filled = int(round(frac * BAR_WIDTH))
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    return (f"step {step}/{total} [{bar}] {int(frac * 100):3d}% loss {loss:.4f} "
            f"tokens/s {tokens_per_s:.0f} ETA {_fmt_eta(eta_s)}")


class StopGuard:
    """Whether to stop now: the budget guard (the launched offer's $/h, jobs.rate, x elapsed hours
    passed the recipe's resources.max_usd) or the launcher's request (<control>/stop)."""

    def __init__(self, run: TrainingAttempt, control_dir: str | None, max_usd: float | None) -> None:
        self.run = run
        self.control_dir = control_dir
        # The launched offer's $/h (jobs/rate.py: SkyPilot's cluster info against render's table).
        self.rate = rate_mod.resolve(device=rate_mod.visible_device())
        self.usd_h = self.rate.usd_per_hour if self.rate else None
        if self.rate and rank() == 0:
            log(f"budget guard: {self.rate.describe()} ({self.rate.how})")
        self.max_usd = max_usd
        self.last_control_check = 0.0

    def over_budget(self, now: float) -> bool:
        return bool(self.usd_h and self.max_usd) and self.run.elapsed(now) / 3600 * float(self.usd_h) > float(self.max_usd)

    def stop_requested(self, now: float) -> bool:
        """Rank 0 looks at most every CONTROL_CHECK_S seconds; a flaky bucket is a warning."""
        if now - self.last_control_check <= CONTROL_CHECK_S:
            return False
        self.last_control_check = now
        if rank() != 0 or not self.control_dir:
            return False
        try:
            return store.exists(store.join(self.control_dir, contract.STOP_FLAG))
        except Exception as exc:  # noqa: BLE001 - a flaky bucket must not kill training
            ckpt.warn(f"cannot read {store.join(self.control_dir, contract.STOP_FLAG)} ({exc})")
            return False

    def record(self, over_budget: bool, now: float) -> None:
        """Say why training stops, in the log and in the run state (DIR/STOPPED)."""
        if over_budget:
            usd_h = float(self.usd_h)
            spent = self.run.elapsed(now) / 3600 * usd_h
            self.run.stopped = "budget"
            self.run.detail = (f"{self.run.elapsed(now) / 3600:.3f} h x ${usd_h:.2f}/h = ${spent:.2f} "
                               f"passed max_usd ${float(self.max_usd):.2f}")
            log(f"budget guard: {self.run.detail}; saving a checkpoint and stopping")
        else:
            self.run.stopped = "control"
            self.run.detail = f"stop requested through {store.join(self.control_dir, contract.STOP_FLAG)}"
            log(f"{self.run.detail}; saving a checkpoint and stopping")


class CheckpointCallback(TrainerCallback):
    """Saves by wall clock (and at the end, and before a stop). Each save becomes step-N on every
    node (collective); its manifests, bucket copy and pruning follow in the background
    (jobs.checkpoint_upload). A timer save while an upload is still in flight is skipped (tried
    again RETRY_S later); the final save and a stop's wait for it."""

    RETRY_S = 60

    def __init__(self, out: Path, recipe, run_id: str | None, run: TrainingAttempt, guard: StopGuard) -> None:
        from jobs.checkpoint_upload import Uploader

        self.metrics_path = RunLayout(out).metrics
        self.ckpt_root = RunLayout(out).checkpoints
        self.every_s = recipe.train.checkpoint_minutes * 60
        self.deepspeed = recipe.train.deepspeed
        self.prefix = ckpt.bucket_prefix(run.bucket, run_id)
        self.run = run
        self.guard = guard
        self.last_save = time.time()
        self.uploads = Uploader(self.ckpt_root, self.prefix, recipe.train.keep_checkpoints, run.topology)

    def on_step_end(self, args, state, control, **kw):
        now = time.time()
        want_save = now - self.last_save >= self.every_s
        over_budget = self.guard.over_budget(now)
        stop_req = self.guard.stop_requested(now)
        want_save, over_budget, stop_req = broadcast_flags(want_save, over_budget, stop_req)
        forced = state.global_step >= state.max_steps or over_budget or stop_req
        if over_budget or stop_req:
            self.guard.record(over_budget, now)
            control.should_training_stop = True
        if forced:
            self.uploads.wait_all()
        elif want_save and self.uploads.any_busy():  # the same on every rank: rank 0's flags
            log(f"checkpoint at step {state.global_step} skipped: the upload of step {self.uploads.step} "
                f"is still in flight; trying again in {self.RETRY_S} s")
            want_save = False
            self.last_save = now - self.every_s + self.RETRY_S
        if want_save or forced:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kw):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        step = state.global_step
        src = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
        topo = self.run.topology
        if state.is_world_process_zero and src.is_dir():
            now = time.time()
            (src / ckpt.STATE).write_text(json.dumps({
                "elapsed_s": round(self.run.elapsed(now), 3), "step": step, "saved_at": now,
                "attempts": self.run.attempts,
                # what a resume on another GPU count needs (jobs.checkpoint_topology)
                "topology": {"world_size": world_size(), "nodes": topo.nodes, "procs_per_node": topo.procs_per_node,
                             "deepspeed": self.deepspeed, "grad_accum": args.gradient_accumulation_steps,
                             "micro_batch_size": args.per_device_train_batch_size}}))
            if self.metrics_path.is_file():
                (src / ckpt.METRICS_COPY).write_text(self.metrics_path.read_text())
        barrier()  # every rank has written its files
        if local_rank() == 0:
            ckpt.finalize_node(src, self.ckpt_root, step)
        barrier()  # every node has its step-N folder; manifests and uploads go on in the background
        self.uploads.submit(step)
        dest = self.ckpt_root / contract.step_dir(step)
        if rank() == 0:
            self.run.last_checkpoint = str(dest)
            log(f"checkpoint saved: {dest}")
        self.last_save = time.time()


class MetricsCallback(TrainerCallback):
    """metrics.jsonl rows (loss, lr, tokens/s, eval loss, elapsed) and the progress line, on rank 0."""

    def __init__(self, out: Path, counter, run: TrainingAttempt) -> None:
        self.metrics_path = RunLayout(out).metrics
        self.counter = counter  # jobs.train's token-counting collator
        self.run = run
        self.last_log_t = run.started
        self.last_tokens = 0
        self.first_step = None
        self.began = run.started

    def on_train_begin(self, args, state, control, **kw):
        self.first_step = state.global_step
        self.began = self.last_log_t = time.time()
        self.last_tokens = self.counter.tokens

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        now = time.time()
        row = {"step": state.global_step, "total_steps": state.max_steps, "epoch": state.epoch,
               "elapsed_s": round(self.run.elapsed(now), 3)}
        if "loss" in logs:
            dt = max(now - self.last_log_t, 1e-9)
            tps = (self.counter.tokens - self.last_tokens) * world_size() / dt
            self.last_log_t, self.last_tokens = now, self.counter.tokens
            row.update(loss=logs["loss"], lr=logs.get("learning_rate"), tokens_per_s=round(tps, 2))
            if "grad_norm" in logs:
                row["grad_norm"] = logs["grad_norm"]
            done = state.global_step - (self.first_step or 0)
            rate = (now - self.began) / max(done, 1)
            eta = rate * (state.max_steps - state.global_step)
            print(progress_line(state.global_step, state.max_steps, logs["loss"], tps, eta), flush=True)
        elif "eval_loss" in logs:
            row["eval_loss"] = logs["eval_loss"]
            print(f"eval step {state.global_step}/{state.max_steps} eval_loss {logs['eval_loss']:.4f}", flush=True)
        else:
            return
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


class NothingLeftToTrain(Exception):
    """Raised at train begin when the resumed checkpoint is already at max_steps."""


class AtMaxSteps(TrainerCallback):
    """Ends `trainer.train` before its first step when the resumed state is at max_steps: the
    Trainer only checks the limit after a step, so it would train step N+1 of N. Train begin
    comes after the checkpoint's weights and state are loaded (DeepSpeed's too), so the caller
    can save that model as final/. Every rank sees the same restored step, so all stop alike."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            raise NothingLeftToTrain(state.global_step)


def make_callbacks(out: Path, counter, recipe, run_id: str | None, run: TrainingAttempt,
                   control_dir: str | None) -> list[TrainerCallback]:
    from jobs.calibration import CalibrationCallback  # the first minutes measured against the plan

    max_usd = recipe.resources.max_usd
    return [AtMaxSteps(), CheckpointCallback(out, recipe, run_id, run, StopGuard(run, control_dir, max_usd)),
            MetricsCallback(out, counter, run), CalibrationCallback(out, counter, run, max_usd)]
