"""jobs.sync: the masking filter, the bucket copy (a local path and the moto S3 server the
checkpoint tests use), the background loop, and the end record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs import sync

REPO = Path(__file__).resolve().parents[2]
CANARY = "hf_CANARYsyncMASK0123456789abcdefgh"


def _recipe(tmp_path: Path, bucket: str | None) -> Path:
    """A run's recipe: `jobs sync push` copies to its output.bucket, the job's only bucket."""
    import yaml

    path = tmp_path / "recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"name": "sync", "model": {"id": "sftlaunch/tiny-llama"}, "method": "full",
                                    "data": {"sources": [{"path": "stub/data", "format": "alpaca"}]},
                                    "resources": {"clouds": ["local"]}, "output": {"bucket": bucket}}))
    return path


def _out(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 1, "total_steps": 4}\n')
    (out / "logs" / "train.log").write_text("train line\n")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "big.bin").write_bytes(b"x" * 10)  # not part of the log copy
    return out


def test_mask_filter_masks_stdout_and_the_tee_file(tmp_path):
    tee = tmp_path / "logs" / "train.log"
    env = {**os.environ, "HF_TOKEN": CANARY, "WANDB_API_KEY": "wandb-canary-99"}
    proc = subprocess.run([sys.executable, "-m", "jobs", "sync", "mask", "--tee", str(tee)], cwd=REPO, env=env,
                          input=f"a {CANARY}\nb wandb-canary-99\nno newline at the end".encode(),
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"a ****\nb ****\nno newline at the end"
    assert tee.read_bytes() == proc.stdout
    assert CANARY.encode() not in tee.read_bytes()


def test_mask_stream_reads_the_secret_values_once_per_stream(monkeypatch):
    import io

    from sftcore import masking

    monkeypatch.setenv("HF_TOKEN", CANARY)
    lookups = []
    real = masking.secret_values
    monkeypatch.setattr(masking, "secret_values", lambda env=None: lookups.append(env) or real(env))
    shaped = "hf_" + "x" * 24  # a token shape from no variable: still masked line by line
    src = io.BytesIO(b"".join(f"line {i} {CANARY} {shaped}\n".encode() for i in range(50)))
    dst = io.BytesIO()
    sync.mask_stream(src, dst)
    lines = dst.getvalue().decode().splitlines()
    assert len(lines) == 50 and lines[7] == "line 7 **** ****"
    assert [env for env in lookups if env != {}] == [None]  # the environment, read once


def test_push_to_a_local_path_copies_logs_and_metrics_only_when_changed(tmp_path):
    out = _out(tmp_path)
    bucket = tmp_path / "bucket"
    seen: dict = {}
    copied, failed = sync.push(out, str(bucket), "sftl-x-0001", seen)
    assert failed == [] and copied == ["metrics.jsonl", "logs/train.log"]
    assert (bucket / "sftl-x-0001" / "logs" / "train.log").read_text() == "train line\n"
    assert not (bucket / "sftl-x-0001" / "checkpoints").exists()
    assert sync.push(out, str(bucket), "sftl-x-0001", seen) == ([], [])  # nothing changed
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 2, "total_steps": 4}\n')
    assert sync.push(out, str(bucket), "sftl-x-0001", seen)[0] == ["metrics.jsonl"]
    assert (bucket / "sftl-x-0001" / "metrics.jsonl").read_text().count("total_steps") == 2


def test_push_to_s3_and_status_reads_it_back(tmp_path, s3):  # noqa: F811
    out = _out(tmp_path)
    sync.write_end(out, 0, stopped=False)
    proc = subprocess.run([sys.executable, "-m", "jobs", "sync", "push", "--out", str(out),
                           "--recipe", str(_recipe(tmp_path, s3)), "--run-id", "sftl-x-0002"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import fsspec

    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    keys = sorted(k.split("sftl-x-0002/", 1)[1] for k in fs.find("ckpts/sftl-x-0002"))
    assert keys == ["exit.json", "logs/train.log", "metrics.jsonl"]
    from launcher import run_outputs
    from launcher.run_record import Backend, RunRecord
    from launcher.run_state import RunState

    record = RunRecord(run_id="sftl-x-0002", name="x", state=RunState.RUNNING, created_at=0.0, updated_at=0.0,
                       bucket=s3, backend=Backend.MANAGED)
    fsspec.config.conf.setdefault("s3", {})["client_kwargs"] = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
    try:
        assert run_outputs.bucket_progress(record) == (1, 4)
        assert run_outputs.end_record(record)["exit_code"] == 0
    finally:
        fsspec.config.conf.clear()


def test_an_unreachable_bucket_is_a_warning_not_a_crash(tmp_path, capsys):
    out = _out(tmp_path)
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    copied, failed = sync.push(out, str(blocker), "sftl-x-0003")
    assert copied == [] and failed == ["metrics.jsonl", "logs/train.log"]
    assert "sync: warning: could not copy metrics.jsonl" in capsys.readouterr().err


def test_loop_copies_while_running_and_stops_with_its_parent(tmp_path):
    out = _out(tmp_path)
    bucket = tmp_path / "bucket"
    # The parent is a shell that outlives nothing: when it exits, the loop must end by itself.
    recipe = _recipe(tmp_path, str(bucket))
    parent = subprocess.Popen(["bash", "-c", f"{sys.executable} -m jobs sync push --out {out} --recipe {recipe} "
                               "--run-id sftl-x-0004 --every 0.2 --parent $$ & echo $!; sleep 2"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    loop_pid = int(parent.stdout.readline())
    target = bucket / "sftl-x-0004" / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not target.exists():
        time.sleep(0.05)
    assert target.exists()
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "total_steps": 4}\n')
    while time.monotonic() < deadline and "step\": 3" not in target.read_text():
        time.sleep(0.05)
    assert '"step": 3' in target.read_text()  # a later change arrives without another call
    parent.wait(timeout=60)
    while time.monotonic() < deadline:
        try:
            os.kill(loop_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.kill(loop_pid, 0)


def test_end_record(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert sync.write_end(out, 1, stopped=False)["stopped"] is None
    (out / "STOPPED").write_text(json.dumps({"reason": "budget", "step": 5}))
    rec = sync.write_end(out, 0, stopped=True)
    assert json.loads((out / "exit.json").read_text()) == rec
    assert rec["exit_code"] == 0 and rec["stopped"] == {"reason": "budget", "step": 5}
    assert sync.main(["push", "--out", str(out), "--recipe", str(_recipe(tmp_path, str(tmp_path / "b"))),
                      "--run-id", "r", "--every", "-1"]) == 2


def test_push_copies_to_the_recipes_bucket_and_nowhere_without_one(tmp_path, monkeypatch):
    """The bucket is the recipe's output.bucket; SFTLAUNCH_BUCKET (up's default on the laptop) is
    not a job setting, and a recipe without a bucket copies nothing."""
    out = _out(tmp_path)
    monkeypatch.setenv("SFTLAUNCH_BUCKET", str(tmp_path / "shell-default"))
    bucket = tmp_path / "bucket"
    args = ["push", "--out", str(out), "--run-id", "sftl-x-0005", "--recipe"]
    assert sync.main([*args, str(_recipe(tmp_path, str(bucket)))]) == 0
    assert (bucket / "sftl-x-0005" / "metrics.jsonl").is_file()
    assert sync.main([*args, str(_recipe(tmp_path / "nobucket", None))]) == 0
    assert not (tmp_path / "shell-default").exists()


def test_a_recipe_that_does_not_load_is_one_line_and_exit_2(tmp_path):
    out = _out(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: r\n")
    proc = subprocess.run([sys.executable, "-m", "jobs", "sync", "push", "--out", str(out), "--recipe", str(bad),
                           "--run-id", "r"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
