"""The run's calibration probe: its first minutes measured against the plan.

Why: the plan's ETA and cost come from published MFU figures; the real run can be several times
slower (another kernel, a slower disk, a throttled GPU). After the first optimizer step (which
pays for compilation and warm-up) the probe measures tokens/s over CALIBRATION_DEFAULT steps or
seconds (Env.CALIBRATION overrides; an eval inside the window is left out), reads the peak GPU memory, re-estimates the training time at
the measured rate and the run's cost (elapsed + remaining training + the plan's eval, × $/h), and
writes one `calibration` row to metrics.jsonl: the launcher's status refresh reads it into the run
record, and later plans for the same GPU/method/size use the measured MFU. If the projected cost
breaks max_usd, training stops after a checkpoint exactly as the budget guard stops it
(TrainingAttempt.stopped = "calibration", DIR/STOPPED, exit 0), with the numbers in the detail.

Rank 0 decides (clocks differ per rank) and broadcasts, so every rank saves and stops together.
Each attempt (a resumed spot run lands on a new machine) measures again; the last row wins.
The clock and the memory probe are injectable so tests run on a fake clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from transformers import TrainerCallback

from jobs.collectives import broadcast_flags, log, rank, world_size
from sftcore import contract
from sftcore.contract import Env, JobEnv, RunLayout


def read_plan(job: JobEnv) -> dict:
    """The plan's prediction from Env.PLAN (numbers only); {} when absent or unreadable."""
    try:
        data = json.loads(job.plan or "{}")
    except ValueError:
        log(f"calibration: {Env.PLAN} is not JSON; measuring without the plan's figures")
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: float(v) for k, v in data.items()
            if k in contract.PLAN_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def probe_length(job: JobEnv) -> tuple[int, float]:
    """(steps, seconds) of the probe: Env.CALIBRATION "STEPS,SECONDS", else the default."""
    text = job.calibration
    if not text:
        return contract.CALIBRATION_DEFAULT
    try:
        steps, seconds = (x.strip() for x in text.split(","))
        out = int(steps), float(seconds)
        if out[0] < 1 or out[1] <= 0:
            raise ValueError
        return out
    except ValueError:
        from sftcore.errors import UserError

        raise UserError(f"{Env.CALIBRATION}={text!r}: expected STEPS,SECONDS with STEPS >= 1 and SECONDS > 0, "
                        f"e.g. {contract.CALIBRATION_DEFAULT[0]},{contract.CALIBRATION_DEFAULT[1]}") from None


def cuda_peak_gb() -> float | None:
    """Peak GPU memory allocated by this process (GB), None on CPU."""
    import torch

    return round(torch.cuda.max_memory_allocated() / 1e9, 3) if torch.cuda.is_available() else None


def project(plan: Mapping[str, float], *, tokens: float, seconds: float, steps: int, step: int, max_steps: int,
            elapsed_s: float, usd_h: float | None, max_usd: float | None) -> dict:
    """The measured figures and what they make of the plan (pure: the tests' and the bench's)."""
    tps = tokens / seconds
    step_s = seconds / steps
    remaining_s = max(0, max_steps - step) * step_s
    out: dict = {"tokens_per_s": round(tps, 2), "steps": steps, "seconds": round(seconds, 3),
                 "step_s": round(step_s, 4), "train_hours": round(max_steps * step_s / 3600, 5)}
    if plan.get("tokens_per_s"):
        out["predicted_tokens_per_s"] = round(plan["tokens_per_s"], 2)
        out["speed_ratio"] = round(tps / plan["tokens_per_s"], 4)  # measured / predicted
        if plan.get("mfu"):
            out["mfu"] = round(plan["mfu"] * out["speed_ratio"], 4)
    if plan.get("train_hours"):
        out["predicted_train_hours"] = round(plan["train_hours"], 5)
    if plan.get("params_b"):
        out["params_b"] = plan["params_b"]
    if plan.get("eta_hours") is not None and plan.get("train_hours") is not None:
        out["predicted_eta_hours"] = round(plan["eta_hours"], 5)
        out["eta_hours"] = round(plan["eta_hours"] - plan["train_hours"] + out["train_hours"], 5)
    if plan.get("total_usd") is not None:
        out["predicted_usd"] = round(plan["total_usd"], 4)
    if usd_h:
        hours = (elapsed_s + remaining_s) / 3600 + plan.get("eval_hours", 0.0)
        out["usd"] = round(hours * usd_h, 4)  # elapsed + remaining training + eval, at $/h
        out["usd_per_hour"] = usd_h
        if max_usd is not None:
            out["max_usd"] = max_usd
            out["over_budget"] = out["usd"] > max_usd
    return out


def stop_detail(m: Mapping) -> str:
    """Why the probe stops the run, with the numbers."""
    pred = f" (plan {m['predicted_tokens_per_s']:.0f})" if "predicted_tokens_per_s" in m else ""
    return (f"measured {m['tokens_per_s']:.0f} tokens/s{pred}: the run would cost ${m['usd']:.2f} "
            f"(${m['usd_per_hour']:.2f}/h, ETA {m.get('eta_hours', m['train_hours']):.2f} h), over max_usd "
            f"${m['max_usd']:.2f}; lower the data or raise max_usd, then relaunch to resume")


def last_calibration(path: Path) -> dict | None:
    """The newest calibration row's figures in a metrics.jsonl (the run's current machine)."""
    return contract.last_calibration(path.read_text().splitlines()) if path.is_file() else None


class CalibrationCallback(TrainerCallback):
    """Measures once per attempt, writes the row, and stops the run if the budget would break."""

    def __init__(self, out: Path, counter, run, max_usd: float | None = None, job: JobEnv | None = None,
                 clock: Callable[[], float] = time.time, peak_gb: Callable[[], float | None] = cuda_peak_gb) -> None:
        job = JobEnv.from_env() if job is None else job
        self.metrics_path = RunLayout(out).metrics
        self.counter, self.run, self.clock, self.peak_gb = counter, run, clock, peak_gb
        self.plan = read_plan(job)
        self.steps, self.seconds = probe_length(job)
        self.usd_h = job.usd_per_hour
        self.max_usd = None if max_usd is None else float(max_usd)  # the recipe's resources.max_usd
        self.mark: tuple[float, int, int] | None = None  # (time, step, tokens) after the first step
        self.last_end: tuple[float, int] | None = None  # (time, tokens) when the latest step ended
        self.skipped_s = 0.0  # evals inside the probe window
        self.skipped_tokens = 0
        self.done = False
        self.result: dict | None = None

    def on_step_end(self, args, state, control, **kw):
        if self.done:
            return control
        now = self.clock()
        self.last_end = (now, self.counter.tokens)
        if self.mark is None:  # the first step paid for warm-up: measure from its end
            self.mark = (now, state.global_step, self.counter.tokens)
            return control
        t0, step0, tokens0 = self.mark
        steps = state.global_step - step0
        due = steps >= 1 and (steps >= self.steps or now - t0 >= self.seconds or state.global_step >= state.max_steps)
        over = False
        if due and rank() == 0:
            tokens = self.counter.tokens - tokens0 - self.skipped_tokens
            self.result = project(self.plan, tokens=tokens * world_size(),
                                  seconds=max(now - t0 - self.skipped_s, 1e-9), steps=steps, step=state.global_step,
                                  max_steps=state.max_steps, elapsed_s=self.run.elapsed(now),
                                  usd_h=self.usd_h, max_usd=self.max_usd)
            self.result["peak_mem_gb"] = self.peak_gb()
            # At the last step there is nothing left to save money on: the run finishes.
            over = bool(self.result.get("over_budget")) and state.global_step < state.max_steps
            self._write(state)
        due, over = broadcast_flags(due, over)
        if not due:
            return control
        self.done = True
        if over:
            self.run.stopped, self.run.detail = "calibration", stop_detail(self.result) if self.result else "calibration"
            log(f"calibration: {self.run.detail}; saving a checkpoint and stopping")
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_evaluate(self, args, state, control, **kw):
        """An eval inside the probe is not training speed (and its batches pass the token counter):
        its time and tokens, since the step that preceded it ended, are left out."""
        if not self.done and self.mark is not None and self.last_end is not None:
            self.skipped_s += self.clock() - self.last_end[0]
            self.skipped_tokens += self.counter.tokens - self.last_end[1]
        return control

    def _write(self, state) -> None:
        m = self.result
        row = {"step": state.global_step, "total_steps": state.max_steps,
               "elapsed_s": round(self.run.elapsed(self.clock()), 3), contract.CALIBRATION_ROW: m}
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        pred = f" (plan {m['predicted_tokens_per_s']:.0f}, x{m['speed_ratio']:.2f})" if "speed_ratio" in m else ""
        eta = f"; ETA {m['eta_hours']:.2f} h (plan {m['predicted_eta_hours']:.2f} h)" if "eta_hours" in m else ""
        usd = f"; projected ${m['usd']:.2f}" if "usd" in m else ""
        mem = f"; peak memory {m['peak_mem_gb']:.1f} GB" if m.get("peak_mem_gb") is not None else ""
        log(f"calibration: {m['tokens_per_s']:.0f} tokens/s over {m['steps']} steps{pred}{eta}{usd}{mem}")
