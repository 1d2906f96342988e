"""jobs.calibration: the probe measures tokens/s after the warm-up step on a fake clock, writes the
`calibration` row, re-plans ETA and cost, and stops the run after a checkpoint when the measured
cost would break max_usd (on every rank, as rank 0 decided).

jobs.calibration and TrainerControl come from transformers, which loads torch: each test imports
them when it runs, so collecting this file stays cheap."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from sftcore.contract import Env, JobEnv


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def _probe(tmp_path, env, clock, counter, started=1000.0, elapsed_before=0.0, max_usd=None):
    """`max_usd`: the recipe's resources.max_usd; `env`: the launcher's variables (JobEnv)."""
    from jobs import calibration as cal
    from jobs.callbacks import TrainingAttempt

    run = TrainingAttempt(bucket=None, topology=None, started=started, elapsed_before=elapsed_before, attempts=1)
    cb = cal.CalibrationCallback(tmp_path, counter, run, max_usd, job=JobEnv.from_env(env), clock=clock,
                                 peak_gb=lambda: 12.5)
    return cb, run


def _steps(cb, counter, clock, steps, max_steps, tokens_per_step=1000, step_s=2.0, start=0):
    """Drive `steps` optimizer steps; returns the control of the last one."""
    from transformers import TrainerControl

    control = TrainerControl()
    for i in range(start + 1, start + steps + 1):
        clock.t += step_s
        counter.tokens += tokens_per_step
        control = cb.on_step_end(None, SimpleNamespace(global_step=i, max_steps=max_steps), TrainerControl())
    return control


PLAN = {"tokens_per_s": 1000.0, "train_hours": 1.0, "eval_hours": 0.5, "eta_hours": 2.0, "total_usd": 20.0,
        "mfu": 0.4, "params_b": 7.0}


def _rows(tmp_path):
    return [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_measures_after_the_warm_up_step_and_replans_the_eta(tmp_path):
    from transformers import TrainerControl

    clock, counter = Clock(), SimpleNamespace(tokens=0)
    env = {Env.PLAN: json.dumps(PLAN), Env.CALIBRATION: "4,600"}
    cb, _ = _probe(tmp_path, env, clock, counter)
    clock.t += 30  # the first step's warm-up is not measured
    cb.on_step_end(None, SimpleNamespace(global_step=1, max_steps=100), TrainerControl())
    _steps(cb, counter, clock, 3, 100, start=1)
    assert not (tmp_path / "metrics.jsonl").exists()  # 3 of 4 steps: still probing
    control = _steps(cb, counter, clock, 1, 100, start=4)
    (row,) = _rows(tmp_path)
    m = row["calibration"]
    # 4 steps x 1000 tokens in 8 s: 500 tokens/s, half the plan's 1000
    assert (row["step"], m["tokens_per_s"], m["steps"], m["seconds"]) == (5, 500.0, 4, 8.0)
    assert m["speed_ratio"] == 0.5 and m["mfu"] == 0.2 and m["peak_mem_gb"] == 12.5
    assert m["train_hours"] == round(100 * 2.0 / 3600, 5)
    assert m["eta_hours"] == round(2.0 - 1.0 + 100 * 2.0 / 3600, 5) and m["predicted_eta_hours"] == 2.0
    assert "usd" not in m and not control.should_training_stop  # no $/h: nothing to guard
    _steps(cb, counter, clock, 10, 100, start=5)
    assert len(_rows(tmp_path)) == 1  # once per attempt


def test_the_seconds_limit_ends_the_probe_first(tmp_path):
    clock, counter = Clock(), SimpleNamespace(tokens=0)
    cb, _ = _probe(tmp_path, {Env.CALIBRATION: "20,5"}, clock, counter)
    _steps(cb, counter, clock, 3, 50)  # 1 warm-up step, then 2 steps of 2 s: under 5 s
    assert not (tmp_path / "metrics.jsonl").exists()
    _steps(cb, counter, clock, 1, 50, start=3)  # 6 s since the warm-up step
    m = _rows(tmp_path)[0]["calibration"]
    assert (m["steps"], m["seconds"], m["tokens_per_s"]) == (3, 6.0, 500.0) and "speed_ratio" not in m


def test_an_eval_inside_the_probe_is_not_counted_as_training(tmp_path):
    from transformers import TrainerControl

    clock, counter = Clock(), SimpleNamespace(tokens=0)
    cb, _ = _probe(tmp_path, {Env.CALIBRATION: "3,600"}, clock, counter)
    _steps(cb, counter, clock, 2, 50)
    clock.t += 100  # an eval of 100 s whose batches went through the token counter
    counter.tokens += 50_000
    cb.on_evaluate(None, SimpleNamespace(global_step=2, max_steps=50), TrainerControl())
    _steps(cb, counter, clock, 1, 50, start=2)
    assert not (tmp_path / "metrics.jsonl").exists()  # 2 of 3 steps measured
    _steps(cb, counter, clock, 1, 50, start=3)
    m = _rows(tmp_path)[0]["calibration"]
    assert (m["steps"], m["seconds"], m["tokens_per_s"]) == (3, 6.0, 500.0)  # the eval's 100 s and tokens left out


def test_a_cost_over_max_usd_stops_after_a_checkpoint_with_the_numbers(tmp_path):
    clock, counter = Clock(), SimpleNamespace(tokens=0)
    env = {Env.PLAN: json.dumps(PLAN), Env.CALIBRATION: "2,600", Env.USD_PER_HOUR: "36"}
    cb, run = _probe(tmp_path, env, clock, counter, started=1000.0 - 600, elapsed_before=1200, max_usd=30)
    control = _steps(cb, counter, clock, 3, 1000)
    m = _rows(tmp_path)[0]["calibration"]
    # elapsed 1200 s earlier + 600 s + 6 s; remaining 997 steps x 2 s; plan's eval 0.5 h; at $36/h
    want = round(((1200 + 606 + 997 * 2) / 3600 + 0.5) * 36, 4)
    assert m["usd"] == want and m["max_usd"] == 30 and m["over_budget"] is True
    assert control.should_save and control.should_training_stop
    assert run.stopped == "calibration"
    assert f"${want:.2f}" in run.detail and "over max_usd $30.00" in run.detail and "500 tokens/s (plan 1000)" in run.detail


def test_a_probe_that_ends_at_the_last_step_lets_the_run_finish(tmp_path):
    clock, counter = Clock(), SimpleNamespace(tokens=0)
    env = {Env.CALIBRATION: "20,600", Env.USD_PER_HOUR: "3600"}
    cb, run = _probe(tmp_path, env, clock, counter, max_usd=1)
    control = _steps(cb, counter, clock, 4, 4)
    assert _rows(tmp_path)[0]["calibration"]["over_budget"] is True
    assert not control.should_training_stop and run.stopped is None


def test_a_cost_within_max_usd_trains_on(tmp_path):
    clock, counter = Clock(), SimpleNamespace(tokens=0)
    env = {Env.PLAN: json.dumps(PLAN), Env.CALIBRATION: "2,600", Env.USD_PER_HOUR: "36"}
    cb, run = _probe(tmp_path, env, clock, counter, max_usd=100)
    control = _steps(cb, counter, clock, 3, 1000)
    assert _rows(tmp_path)[0]["calibration"]["over_budget"] is False
    assert not control.should_training_stop and run.stopped is None


def test_other_ranks_follow_rank_0s_decision(tmp_path, monkeypatch):
    """A rank other than 0 neither measures nor writes; it stops because rank 0's broadcast says so."""
    from jobs import calibration as cal

    monkeypatch.setenv("RANK", "1")
    seen = []

    def broadcast(*flags):
        seen.append(flags)
        return [True, True]  # rank 0: due, over budget

    monkeypatch.setattr(cal, "broadcast_flags", broadcast)
    clock, counter = Clock(), SimpleNamespace(tokens=0)
    cb, run = _probe(tmp_path, {Env.CALIBRATION: "5,600"}, clock, counter)
    control = _steps(cb, counter, clock, 2, 100)
    assert seen == [(False, False)]  # rank 1's own view (not due yet) is what it sent
    assert control.should_training_stop and run.stopped == "calibration"
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("text", ["20", "0,10", "5,-1", "a,b"])
def test_a_bad_probe_length_is_one_line_naming_the_variable(text):
    from jobs import calibration as cal
    from sftcore.errors import UserError

    with pytest.raises(UserError, match=f"{Env.CALIBRATION}=.*STEPS,SECONDS"):
        cal.probe_length(JobEnv.from_env({Env.CALIBRATION: text}))


def test_plan_figures_are_numbers_only():
    from jobs import calibration as cal

    def plan(text):
        return cal.read_plan(JobEnv.from_env({Env.PLAN: text} if text is not None else {}))

    assert plan('{"tokens_per_s": 5, "x": 1, "eta_hours": "2", "mfu": true}') == {"tokens_per_s": 5.0}
    assert plan("not json") == {} and plan(None) == {}


@pytest.mark.slow
def test_a_real_run_records_the_probe_and_a_calibration_stop_checkpoints(tmp_path, monkeypatch):
    """On the tiny model: the row reaches metrics.jsonl and sftlaunch.json; a projected cost over
    max_usd (the plan's eval hour at $3600/h) stops after a checkpoint, reason `calibration`."""
    from jobs.checkpoint_manifest import verify
    from sftcore.contract import STOPPED_MARKER
    from tests.jobs.test_train import _run
    from tests.jobs.test_train_support import build_tiny_model, write_data

    tiny = build_tiny_model(tmp_path / "model"), write_data(tmp_path / "d.jsonl")
    monkeypatch.setenv(Env.CALIBRATION, "2,600")
    rc, _ = _run(tiny, tmp_path / "done", max_steps=6)
    meta = json.loads((tmp_path / "done" / "final" / "sftlaunch.json").read_text())
    assert rc == 0 and meta["calibration"]["steps"] == 2 and meta["calibration"]["tokens_per_s"] > 0
    assert meta["calibration"]["peak_mem_gb"] is None  # CPU: no GPU memory to report

    monkeypatch.setenv(Env.PLAN, json.dumps({"eval_hours": 1.0}))
    monkeypatch.setenv(Env.USD_PER_HOUR, "3600")
    out = tmp_path / "stop"
    rc, _ = _run(tiny, out, max_steps=50, max_usd=1000)  # the budget guard (elapsed x $/h) stays far below it
    stopped = json.loads((out / STOPPED_MARKER).read_text())
    ckpts = list((out / "checkpoints").glob("step-*"))
    assert rc == 0 and stopped["reason"] == "calibration" and stopped["step"] == 3
    assert len(ckpts) == 1 and verify(ckpts[0]) is None and not (out / "final").exists()
    assert "over max_usd $1000.00" in stopped["detail"]


def test_the_model_card_shows_planned_measured_and_actual_time_and_dollars():
    from pathlib import Path

    from jobs import calibration as cal
    from jobs.modelcard import render_card
    from sftcore.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "tiny-local.yaml").resolved_dict()
    m = cal.project(PLAN, tokens=4000, seconds=8, steps=4, step=5, max_steps=1000, elapsed_s=60, usd_h=10.0, max_usd=None)
    m["peak_mem_gb"] = 30.0
    # two attempts: the resumed one's rows carry the elapsed time of both (restored from the checkpoint)
    metrics = [{"step": 10, "loss": 2.0, "elapsed_s": 1800.0}, {"step": 900, "loss": 1.0, "elapsed_s": 7200.0}]
    card = render_card(recipe=recipe, meta={"run_id": "sftl-x-0000", "calibration": m}, results=[], metrics=metrics,
                       repo_id="me/x", is_adapter=False, hardware="gcp 1×A100-80GB spot", usd_per_hour=10.0, has_plot=False)
    assert "- Planned: 2.00 h (training 1.00 h), $20.00 at 1000 tokens/s" in card
    assert f"- Measured over 4 steps: 500 tokens/s, re-planned to {1 + 2000 / 3600:.2f} h, ${m['usd']:.2f}; peak GPU memory 30.0 GB" in card
    assert "- Actual training: 2.00 h, $20.00 over every attempt (restarts included)" in card
    plain = render_card(recipe=recipe, meta={}, results=[], metrics=metrics, repo_id="me/x", is_adapter=False,
                        hardware=None, usd_per_hour=None, has_plot=False)
    assert "Planned:" not in plain and "Measured over" not in plain
