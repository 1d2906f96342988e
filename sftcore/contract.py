"""The contract between the laptop half (`launcher/`) and the container half (`jobs/`,
`docker/entrypoint.sh`): every name both sides must spell the same, defined here once.

Why one module: the two halves run on different machines, from different processes, often from
different versions of the checkout (a run launched yesterday, a `status` today). A name spelled
twice drifts; a name spelled here once cannot. Standard library only, because `jobs/` imports it
inside the image (which installs the whole project, launcher included: docker/Dockerfile) and
`launcher/` imports it at `--help` speed. tests/test_contract.py fails when an `SFTLAUNCH_` literal,
a run file's name (RunLayout) or a `<bucket>/<run id>` f-string appears outside this module, and checks docker/entrypoint.sh
(bash cannot import Python) against the names below. docs/architecture.md explains the flow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class Env:
    """Every `SFTLAUNCH_*` environment variable. Plain strings (not an Enum) because they are
    written into YAML task files and subprocess environments as they are."""

    # -- read by the launcher on the laptop ----------------------------------------------------
    HOME = "SFTLAUNCH_HOME"  # the user's state dir (runs.db, images.json, prices.yaml); default ~/.sftlaunch
    BUCKET = "SFTLAUNCH_BUCKET"  # the user's default for `up --bucket` (jobs read output.bucket from the recipe)
    DEBUG = "SFTLAUNCH_DEBUG"  # 1: tracebacks instead of one-line errors
    IMAGE_REPO = "SFTLAUNCH_IMAGE_REPO"  # the image repository instead of ghcr.io/sftlaunch/sftlaunch
    LOCAL_DOCKER = "SFTLAUNCH_LOCAL_DOCKER"  # 0/1: force `up --local` to run directly / in Docker
    K8S_GPUS = "SFTLAUNCH_K8S_GPUS"  # the user's Kubernetes GPUs, e.g. "H100:8,A100-80GB:8"
    K8S_USD_PER_GPU_HOUR = "SFTLAUNCH_K8S_USD_PER_GPU_HOUR"
    # -- set by the launcher (render, local backend, eval), read by the job ----------------------
    RUN_ID = "SFTLAUNCH_RUN_ID"  # keys bucket copies and resume
    RECIPE = "SFTLAUNCH_RECIPE"  # path of the (resolved) recipe YAML
    OUT = "SFTLAUNCH_OUT"  # the job's output dir; default container_out(run id)
    STEPS = "SFTLAUNCH_STEPS"  # comma list for `entrypoint.sh all`
    CONTROL = "SFTLAUNCH_CONTROL"  # local runs: the control dir (stop flag) instead of the bucket's
    HARDWARE = "SFTLAUNCH_HARDWARE"  # e.g. "gcp 1×A100-80GB spot", for the model card
    # The budget guard's rate: RATES (render) is a JSON list, one entry per ordered SkyPilot
    # choice {cloud, region|null, accelerator, count, nodes, spot, usd_per_hour, usd_per_hour_max,
    # region_usd_per_hour}; the job charges the entry SkyPilot launched (jobs/rate.py).
    # USD_PER_HOUR is one explicit rate for runs without a table (local runs, tests).
    RATES = "SFTLAUNCH_RATES"
    USD_PER_HOUR = "SFTLAUNCH_USD_PER_HOUR"
    PLAN = "SFTLAUNCH_PLAN"  # the plan's prediction (JSON, PLAN_KEYS) that the job's calibration checks
    CALIBRATION = "SFTLAUNCH_CALIBRATION"  # "STEPS,SECONDS": the probe's length (default CALIBRATION_DEFAULT)
    EVAL_WITH_BASE = "SFTLAUNCH_EVAL_WITH_BASE"  # 1: eval also scores the base model
    EVAL_PARALLEL = "SFTLAUNCH_EVAL_PARALLEL"  # auto | data | model
    # 1/0: the plan's choice for train.gradient_checkpointing: auto (unset: auto means on)
    GRADIENT_CHECKPOINTING = "SFTLAUNCH_GRADIENT_CHECKPOINTING"
    EVAL_BACKEND = "SFTLAUNCH_EVAL_BACKEND"  # auto | vllm | hf (default: the recipe's eval.backend)
    VLLM_PYTHON = "SFTLAUNCH_VLLM_PYTHON"  # the vLLM venv's interpreter (default VLLM_PYTHON below)
    # -- knobs of the job itself (tests, quick looks, multi-node tuning) -------------------------
    MAX_STEPS = "SFTLAUNCH_MAX_STEPS"
    SYNC_EVERY = "SFTLAUNCH_SYNC_EVERY"  # seconds between bucket copies of metrics and logs (60)
    PYTHON = "SFTLAUNCH_PYTHON"  # the interpreter entrypoint.sh runs the steps with
    CPU_PROCS = "SFTLAUNCH_CPU_PROCS"
    MASTER_PORT = "SFTLAUNCH_MASTER_PORT"
    RENDEZVOUS_TIMEOUT = "SFTLAUNCH_RENDEZVOUS_TIMEOUT"
    LARGE_UPLOAD_BYTES = "SFTLAUNCH_LARGE_UPLOAD_BYTES"
    TINY_EVAL = "SFTLAUNCH_TINY_EVAL"  # where the tiny eval tasks' data lives when copied elsewhere
    CACHE = "SFTLAUNCH_CACHE"  # the tiny model's build cache
    WANDB_TIMEOUT_S = "SFTLAUNCH_WANDB_TIMEOUT_S"  # bound on the W&B reachability probe (10 s)
    # -- the image's own (docker/Dockerfile ENV, ARG) ---------------------------------------------
    DATA = "SFTLAUNCH_DATA"
    VERSION = "SFTLAUNCH_VERSION"

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(v for k, v in vars(cls).items() if k.isupper() and isinstance(v, str))


@dataclass(frozen=True)
class JobEnv:
    """What the launcher tells a job through its environment, read and checked once
    (`JobEnv.from_env()`). It carries only what the recipe cannot: the run's identity and paths,
    the rate the budget guard charges, and what the plan decided for the hardware it chose. What
    the recipe owns (output.bucket, resources.max_usd) the job reads from the recipe, so the two
    cannot disagree. Raw JSON stays a string here: jobs/rate.py and jobs/calibration.py interpret
    RATES and PLAN and say what they fall back to when either is unreadable."""

    run_id: str | None = None
    recipe: str | None = None  # Env.RECIPE
    out: str | None = None  # Env.OUT
    control: str | None = None  # local runs: the stop channel instead of <bucket>/<run id>/control
    hardware: str | None = None  # for the model card
    rates: str | None = None  # Env.RATES (JSON)
    usd_per_hour: float | None = None  # Env.USD_PER_HOUR
    plan: str | None = None  # Env.PLAN (JSON)
    calibration: str | None = None  # Env.CALIBRATION "STEPS,SECONDS"
    gradient_checkpointing: bool | None = None  # the plan's answer for train.gradient_checkpointing: auto
    eval_with_base: bool = False  # `sftlaunch eval --with-base`: also score the base model
    eval_parallel: str | None = None  # `sftlaunch eval --parallel` (jobs eval checks the choice)
    eval_backend: str | None = None  # `sftlaunch eval --backend` (jobs eval checks the choice)
    # Knobs for smoke runs, tests and unusual hosts; unset on a normal run.
    max_steps: int | None = None  # Env.MAX_STEPS: stop training after this many steps
    vllm_python: str | None = None  # Env.VLLM_PYTHON: the vLLM venv's interpreter
    large_upload_bytes: int | None = None  # Env.LARGE_UPLOAD_BYTES: publish's switch to upload_large_folder
    wandb_timeout_s: float | None = None  # Env.WANDB_TIMEOUT_S: bound on the W&B reachability probe
    cache: str | None = None  # Env.CACHE: the tiny model's build cache
    tiny_eval: str | None = None  # Env.TINY_EVAL: the tiny eval task's data file
    master_port: int | None = None  # Env.MASTER_PORT: the head's rendezvous port
    cpu_procs: int | None = None  # Env.CPU_PROCS: processes per node without GPUs
    rendezvous_timeout_s: float | None = None  # Env.RENDEZVOUS_TIMEOUT: how long workers wait for the head

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> JobEnv:
        """The job's settings from `env` (default os.environ); a malformed value is a UserError
        (one line, exit 2) naming the variable and what it should hold."""
        env = os.environ if env is None else env

        def text(name: str) -> str | None:
            return (env.get(name) or "").strip() or None

        usd = text(Env.USD_PER_HOUR)
        try:
            usd_h = float(usd) if usd is not None else None
        except ValueError:
            usd_h = -1.0
        if usd_h is not None and not usd_h >= 0:
            raise _bad(Env.USD_PER_HOUR, usd, "a price in $/hour, e.g. 2.5")
        switches = {}
        for name in (Env.GRADIENT_CHECKPOINTING, Env.EVAL_WITH_BASE):
            value = text(name)
            if value not in (None, "0", "1"):
                raise _bad(name, value, "1 (on) or 0 (off), or unset")
            switches[name] = None if value is None else value == "1"
        def number(name: str, kind: type, want: str):
            raw = text(name)
            try:
                value = kind(raw) if raw is not None else None
            except ValueError:
                value = -1
            if value is not None and not value > 0:
                raise _bad(name, raw, want)
            return value

        return cls(run_id=text(Env.RUN_ID), recipe=text(Env.RECIPE), out=text(Env.OUT), control=text(Env.CONTROL),
                   hardware=text(Env.HARDWARE), rates=text(Env.RATES), usd_per_hour=usd_h, plan=text(Env.PLAN),
                   calibration=text(Env.CALIBRATION), gradient_checkpointing=switches[Env.GRADIENT_CHECKPOINTING],
                   eval_with_base=bool(switches[Env.EVAL_WITH_BASE]), eval_parallel=text(Env.EVAL_PARALLEL),
                   eval_backend=text(Env.EVAL_BACKEND),
                   max_steps=number(Env.MAX_STEPS, int, "a positive number of steps"),
                   vllm_python=text(Env.VLLM_PYTHON),
                   large_upload_bytes=number(Env.LARGE_UPLOAD_BYTES, int, "a positive number of bytes"),
                   wandb_timeout_s=number(Env.WANDB_TIMEOUT_S, float, "a positive number of seconds"),
                   cache=text(Env.CACHE), tiny_eval=text(Env.TINY_EVAL),
                   master_port=number(Env.MASTER_PORT, int, "a port number"),
                   cpu_procs=number(Env.CPU_PROCS, int, "a positive number of processes"),
                   rendezvous_timeout_s=number(Env.RENDEZVOUS_TIMEOUT, float, "a positive number of seconds"))


def _bad(name: str, value: str | None, want: str):
    from sftcore.errors import UserError

    return UserError(f"{name}={value!r}: expected {want}")


# -- files in a run's output dir (and, copied, in <bucket>/<run id>/): RunLayout joins them -------
METRICS = "metrics.jsonl"  # one JSON row per logged step; status reads progress from it
END_RECORD = "exit.json"  # how the job ended: {exit_code, stopped, at, run_id}
STOPPED_MARKER = "STOPPED"  # training stopped early after a checkpoint: {reason, step, checkpoint}
LOGS_DIR = "logs"  # <step>.log, <step>.node<R>.log
RECIPE_COPY = "recipe.yaml"  # the resolved recipe the run trains (local runs: also the one it starts from)
CHECKPOINTS_DIR = "checkpoints"  # step-N/ folders, locally and in the bucket
STEP_PREFIX = "step-"  # a checkpoint folder is STEP_PREFIX + the global step
FINAL_DIR = "final"  # the trained model (or adapter) in the output dir
RUN_META = "sftlaunch.json"  # beside a trained model: how it was made (recipe, run id, steps, data)
EVAL_DIR = "eval"  # the run model's eval; EVAL_BASE_DIR: the base model's, beside it
EVAL_BASE_DIR = "eval-base"
RESULTS = "results.json"  # eval scores, in an eval dir, the publish dir and <bucket>/<run id>/
PUBLISH_DIR = "publish"  # the publish dir: model, card, results (what the Hub receives)
MODEL_DIR = "model"  # <bucket>/<run id>/model/: the published model
CONTROL_DIR = "control"  # the stop channel: the launcher writes STOP_FLAG, the job STOPPED_FLAG
STOP_FLAG = "stop"
STOPPED_FLAG = "stopped"


@dataclass(frozen=True)
class RunLayout:
    """Where each file of one run lives under `root`: the run's output dir (a Path: every path is
    a Path) or `<bucket>/<run id>` (a string: every path is a URI string). The job writes a file
    and the launcher reads its bucket copy through the same attribute, so a name cannot differ
    between the sides."""

    root: Path | str

    @classmethod
    def in_bucket(cls, bucket: str, run_id: str) -> RunLayout:
        """`<bucket>/<run id>`: everything of one run (metrics, logs, exit record, results, model)."""
        return cls(f"{bucket.rstrip('/')}/{run_id}")

    def join(self, *parts: str) -> Path | str:
        if isinstance(self.root, Path):
            return self.root.joinpath(*parts)
        return "/".join([str(self.root).rstrip("/"), *parts])

    @property
    def metrics(self):
        return self.join(METRICS)

    @property
    def end_record(self):
        return self.join(END_RECORD)

    @property
    def stopped_marker(self):
        return self.join(STOPPED_MARKER)

    @property
    def logs(self):
        return self.join(LOGS_DIR)

    @property
    def recipe(self):
        return self.join(RECIPE_COPY)

    @property
    def checkpoints(self):
        return self.join(CHECKPOINTS_DIR)

    def step(self, n: int):
        """The checkpoint folder of global step `n`."""
        return self.join(CHECKPOINTS_DIR, step_dir(n))

    @property
    def final(self):
        return self.join(FINAL_DIR)

    @property
    def final_meta(self):
        return self.join(FINAL_DIR, RUN_META)

    def eval_dir(self, base: bool = False):
        return self.join(EVAL_BASE_DIR if base else EVAL_DIR)

    def eval_results(self, base: bool = False):
        """An eval's results: `eval/` for the run's model, `eval-base/` for its base model."""
        return self.join(EVAL_BASE_DIR if base else EVAL_DIR, RESULTS)

    @property
    def results(self):
        """results.json at the root: beside the published model in the bucket."""
        return self.join(RESULTS)

    @property
    def publish(self):
        return self.join(PUBLISH_DIR)

    @property
    def model(self):
        """The published model (the publish dir's copy) of a run."""
        return self.join(MODEL_DIR)

    @property
    def control(self):
        return self.join(CONTROL_DIR)

    @property
    def stop_flag(self):
        return self.join(CONTROL_DIR, STOP_FLAG)

    @property
    def stopped_flag(self):
        return self.join(CONTROL_DIR, STOPPED_FLAG)


def step_dir(n: int) -> str:
    """`step-N`: a checkpoint folder's name."""
    return f"{STEP_PREFIX}{n}"


def step_of(name: str) -> int | None:
    """The step a checkpoint folder's name holds (`step-12` -> 12), None for any other name."""
    digits = name[len(STEP_PREFIX):] if name.startswith(STEP_PREFIX) else ""
    return int(digits) if digits.isdigit() and digits.isascii() else None


# -- calibration: the first minutes of a run measured against the plan (jobs/calibration.py) ----------
PLAN_KEYS = ("tokens_per_s", "train_hours", "eval_hours", "eta_hours", "total_usd", "mfu", "params_b")  # Env.PLAN's JSON
CALIBRATION_DEFAULT = (20, 180)  # measure over 20 steps or 3 minutes after the first, whichever ends first
CALIBRATION_ROW = "calibration"  # the metrics.jsonl row key holding the measured figures


def last_calibration(lines) -> dict | None:
    """The newest CALIBRATION_ROW's figures among metrics.jsonl lines (the last attempt's machine):
    read by the job for its card and by the launcher's status refresh, from the same rows."""
    import json

    found = None
    for line in lines:
        if f'"{CALIBRATION_ROW}"' not in line:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by a preemption
        if isinstance(row, dict) and isinstance(row.get(CALIBRATION_ROW), dict):
            found = row[CALIBRATION_ROW]
    return found

# -- steps of a job, in the order they run -------------------------------------------------------
STEPS = ("train", "eval", "publish")
STOPPED_LINE = "sftlaunch: run stopped"  # entrypoint.sh prints it when training ended early

# -- the container ---------------------------------------------------------------------------------
CONTAINER_ROOT = "/sftlaunch"  # the recipe and its local data are mounted under it
CONTAINER_RECIPE = f"{CONTAINER_ROOT}/recipe.yaml"
CONTAINER_OUT_ROOT = "/data/sftlaunch"  # run outputs, caches (the data disk)
IMAGE_HOME = "/opt/sftlaunch"  # the project inside the image
ENTRYPOINT = f"{IMAGE_HOME}/docker/entrypoint.sh"
# vLLM and its own torch live in a second venv (docker/Dockerfile, stage vllm): the training
# venv's torch pin and vLLM's differ. `jobs eval --backend vllm` runs under this interpreter.
VLLM_PYTHON = "/opt/vllm/bin/python"
CONTAINER_HF_HOME = f"{CONTAINER_OUT_ROOT}/cache/huggingface"  # as the image's ENV HF_HOME

# Every cluster, job and container sftlaunch starts carries RUN_LABEL=<run id> (docs/architecture.md).
RUN_LABEL = "sftlaunch-run"
RUN_ID_PREFIX = "sftl-"  # run ids are sftl-<recipe name>-<4 hex>

# -- the recipe's vocabulary, which the job implements (one name list each) -------------------------
TEMPLATES = ("plain", "llama2-chat", "mistral-inst", "chatml", "tokenizer")  # jobs/templates.py
EVAL_PRESETS = ("leaderboard-v1", "leaderboard-v2")  # jobs/eval_presets.py PRESETS
TINY_MODEL_ID = "sftlaunch/tiny-llama"  # built locally by jobs/tiny.py, never downloaded


def container_out(run_id: str) -> str:
    """The job's output dir inside the container (entrypoint.sh's default for SFTLAUNCH_OUT)."""
    return f"{CONTAINER_OUT_ROOT}/{run_id}"
