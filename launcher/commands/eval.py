"""`sftlaunch eval RUN|MODEL`: score a run's model (or any model) and attach the scores to the run.

Why a subprocess for --local: the harness, torch and the model load in `python -m jobs.evaluate`
so this command stays light and a crash there is a failed job (exit 1), not a traceback here.
Without --local the same job runs as an eval-only SkyPilot task on the cheapest GPU the planner
picks, with the run's recipe; results come back through the bucket and `sftlaunch status`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import click

from launcher.options import dry_run_option, json_option
from launcher.run_record import RunRecord
from sftcore import contract
from sftcore.contract import Env
from sftcore.errors import JobFailed, UserError
from sftcore.eval_backend import BACKENDS

PRESETS = contract.EVAL_PRESETS


def _registry():
    from launcher.runs import Registry

    return Registry()


def find_run(target: str) -> dict | None:
    """The run `target` names, or None when it is a model path/id (paths and hub ids win)."""
    if Path(target).expanduser().exists() or "/" in target:
        return None
    from launcher.runs import sftlaunch_home

    if not (sftlaunch_home() / "runs.db").exists():
        if target.startswith(contract.RUN_ID_PREFIX):
            raise UserError(f"no run {target!r}: no runs recorded yet in {sftlaunch_home()}")
        return None
    reg = _registry()
    if reg.get(target, history=False) is None and not reg.find(target):
        if target.startswith(contract.RUN_ID_PREFIX):
            raise UserError(f"no run {target!r}; `sftlaunch status` lists runs")
        return None
    return reg.resolve(target)


def run_model_dir(record: RunRecord) -> Path:
    """The run's trained model (or adapter) on this machine; fetched from the bucket if needed."""
    from launcher.runs import run_dir

    final = contract.RunLayout(Path(record.local_dir or run_dir(record.run_id))).final
    if final.is_dir():
        return final
    bucket = record.bucket
    if bucket:
        from sftcore import store

        src = contract.RunLayout.in_bucket(bucket, record.run_id).model
        fs, path = store.filesystem(src)
        if fs.exists(path):
            final.mkdir(parents=True, exist_ok=True)
            fs.get(path.rstrip("/") + "/", str(final), recursive=True)
            return final
    raise UserError(f"run {record.run_id}: no trained model in {final}"
                    + (f" or {contract.RunLayout.in_bucket(bucket, record.run_id).model}" if bucket else "")
                    + "; has training finished? (`sftlaunch status`)")


def eval_args(record: RunRecord | None, preset, tasks, tasks_dir, limit, batch_size, load_4bit, backend=None) -> list[str]:
    """Flags for the job: the command line's, else the run's recipe eval section, else the preset."""
    ev = ((record.recipe if record is not None else None) or {}).get("eval") or {}
    if not preset and not tasks:
        preset = ev.get("preset")
        tasks = ",".join(ev.get("tasks") or []) or None
        tasks_dir = tasks_dir or ev.get("tasks_dir")
        if not preset and not tasks:
            preset = "leaderboard-v1"
    limit = limit if limit is not None else ev.get("limit")
    batch_size = batch_size or ev.get("batch_size")
    load_4bit = load_4bit or bool(ev.get("load_4bit"))
    backend = backend or ev.get("backend")
    args = []
    if preset:
        args += ["--preset", preset]
    if tasks:
        args += ["--tasks", tasks]
    if tasks_dir:
        args += ["--tasks-dir", str(tasks_dir)]
    if limit is not None:
        args += ["--limit", str(limit)]
    if batch_size is not None:
        args += ["--batch-size", str(batch_size)]
    if load_4bit:
        args += ["--load-4bit"]
    if backend:
        args += ["--backend", backend]
    return args


def run_job(model: str, out: Path, args: list[str], extra: list[str] = ()) -> dict:
    """`python -m jobs.evaluate` in a child process; its output goes to stderr as it comes."""
    cmd = [sys.executable, "-m", "jobs.evaluate", "--model", model, "--out", str(out), *args, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    last = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip():
            last = line.strip()
        if not line.startswith("error: "):  # raised below as this command's own error
            click.echo(line.rstrip("\n"), err=True)
    code = proc.wait()
    if code == 2:
        raise UserError(last.removeprefix("error: ") or "the eval job rejected its input")
    if code != 0:
        raise JobFailed(f"the eval job failed (exit {code}): {last}")
    from sftcore.results import load_results

    return load_results(out)


@click.command("eval")
@click.argument("target", metavar="RUN|MODEL")
@click.option("--preset", type=click.Choice(PRESETS), default=None, help="Benchmark preset: leaderboard-v1 or leaderboard-v2 (default: the recipe's, else leaderboard-v1).")
@click.option("--tasks", default=None, help="Comma-separated lm-eval task names.")
@click.option("--tasks-dir", default=None, type=click.Path(file_okay=False), help="Directory of local lm-eval task YAMLs.")
@click.option("--local", is_flag=True, help="Run on this machine instead of a cloud GPU.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only N examples per task (a quick look, not a score).")
@click.option("--batch-size", default=None, help='"auto" or an integer.')
@click.option("--load-4bit", is_flag=True, help="Load the model in 4-bit NF4 (bitsandbytes).")
@click.option("--with-base", is_flag=True, help="Also score the base model and show its row beside the fine-tune's.")
@click.option("--parallel", type=click.Choice(("auto", "data", "model", "none")), default="auto", show_default=True,
              help="Several GPUs: a replica per GPU (data), one copy split across them (model, for models "
                   "that do not fit one GPU), or auto (data when the model fits one GPU).")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="lm-eval backend: vllm (NVIDIA GPU, fast generation), hf (transformers; CPU), auto "
                   "(vllm where it can run). Default: the run's eval.backend, else auto.")
@click.option("--revision", default=None, help="Hub revision of MODEL.")
@dry_run_option
@json_option
def eval_(target, preset, tasks, tasks_dir, local, limit, batch_size, load_4bit, with_base, parallel, backend,
          revision, dry_run, as_json):
    """Score RUN's model (or MODEL: a directory or hub id) with lm-evaluation-harness."""
    record = find_run(target)
    if not local:
        _eval_remote(record, target, preset, tasks, tasks_dir, limit, batch_size, load_4bit, dry_run, with_base,
                     parallel, backend)
        return
    from launcher.runs import run_dir, sftlaunch_home
    from sftcore.results import render_details, render_table

    args = eval_args(record, preset, tasks, tasks_dir, limit, batch_size, load_4bit, backend) + ["--parallel", parallel]
    if record is not None:
        model = str(run_model_dir(record))
        out = contract.RunLayout(Path(record.local_dir or run_dir(record.run_id))).eval_dir()
        if (out / contract.RESULTS).exists():  # never overwrite the run's earlier scores
            out = out.with_name(f"eval-{time.strftime('%Y%m%d-%H%M%S')}")
        extra = ["--run-id", record.run_id]
        if record.recipe_sha256:
            extra += ["--recipe-sha256", record.recipe_sha256]
    else:
        model = target
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", target.strip("/"))[-60:]
        out = sftlaunch_home() / "evals" / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
        extra = ["--revision", revision] if revision else []
    if with_base:
        # The job scores the base too, in the same process, into OUT-base/ (named by the base's id).
        extra = [*extra, "--with-base"]
    results = [run_job(model, out, args, extra)]
    if with_base:
        from sftcore.results import base_out, load_results

        results.insert(0, load_results(base_out(str(out))))
    if record is not None and (limit is None or not record.eval):
        # A --limit look does not replace a full score already on the run.
        _registry().set_eval(record.run_id, results[-1])
    if as_json:
        click.echo(json.dumps(results if len(results) > 1 else results[0], indent=2, sort_keys=True))
        return
    click.echo(render_table(results))
    click.echo()
    click.echo(render_details(results[-1]))
    click.echo(f"\nresults: {out / contract.RESULTS}" + (f" (stored in run {record.run_id})" if record else ""))


def _eval_remote(record, target, preset, tasks, tasks_dir, limit, batch_size, load_4bit, dry_run=False,
                 with_base=False, parallel="auto", backend=None) -> None:
    """An eval-only SkyPilot task for a run, on the cheapest GPU the planner finds for it.
    With --with-base the same job also scores the base model (SFTLAUNCH_EVAL_WITH_BASE=1) and
    leaves its results in <bucket>/<run id>/eval-base/."""
    if record is None:
        raise UserError(f"{target}: remote eval takes a run id (its recipe names clouds and model); "
                        "for a model path or hub id use --local")
    import tempfile

    from launcher.backends.sky import get_backend
    from launcher.estimate.candidates import plan
    from launcher.render import render_task, to_yaml
    from sftcore.recipe import recipe_from_dict

    data = dict(record.recipe)
    overrides = {k: v for k, v in {"preset": preset, "tasks": tasks.split(",") if tasks else None,
                                   "tasks_dir": tasks_dir, "limit": limit, "batch_size": batch_size,
                                   "backend": backend}.items()
                 if v is not None}
    if load_4bit:
        overrides["load_4bit"] = True
    if overrides:
        data["eval"] = {**(data.get("eval") or {}), **overrides}
    if data.get("eval") is None:
        data["eval"] = {"preset": "leaderboard-v1"}
    recipe = recipe_from_dict(data, source=f"run {record.run_id}")
    import inspect

    # Inference needs far less memory than training; use the planner's eval workload if it has one
    # (otherwise its training estimate is an upper bound).
    params = inspect.signature(plan).parameters
    result = plan(recipe, workload="eval") if "workload" in params else plan(recipe)
    chosen = result.chosen
    if chosen is None:
        raise UserError(f"no GPU fits this model for eval: {result.reason}")
    tmp = Path(tempfile.mkdtemp(prefix="sftlaunch-eval-")) / "recipe.yaml"
    tmp.write_text(recipe.to_yaml())
    task = render_task(recipe, chosen, record.run_id, str(tmp), steps=("eval",))
    if with_base:
        task["envs"][Env.EVAL_WITH_BASE] = "1"
    if parallel != "auto":
        task["envs"][Env.EVAL_PARALLEL] = parallel
    cluster = f"{record.run_id}-eval"[:35]
    click.echo(f"eval of {record.run_id} on {chosen.cloud} {chosen.accelerators} "
               f"(${chosen.usd_per_hour:.2f}/h); cluster {cluster}", err=True)
    if dry_run:
        click.echo(to_yaml(task))
        return
    from sftcore.masking import launch_secrets

    present, _ = launch_secrets(list((task.get("secrets") or {}).keys()))
    backend = get_backend()
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    try:
        job_id = backend.launch(task, cluster_name=cluster, idle_minutes=recipe.resources.autostop_minutes,
                                down=True, secrets=present, on_line=echo)
        code = backend.tail_logs(cluster, job_id, follow=True, on_line=echo)
    finally:
        from launcher.backends.ownership import destroy_cluster

        # An eval cluster has nothing worth keeping once results are in the bucket; it is downed
        # only if it carries this run's label and is this user's.
        _downed, refusal = destroy_cluster(backend, record.run_id, cluster)
        if refusal:
            click.echo(f"warning: left alone: {refusal}", err=True)
    if code:
        raise JobFailed(f"remote eval of {record.run_id} failed (exit {code})")
    from launcher.run_outputs import find_results

    res = find_results(_registry().get(record.run_id, history=False))
    if res:
        _registry().set_eval(record.run_id, res)
        from sftcore.results import render_table

        base = _bucket_base_results(record) if with_base else None
        click.echo(render_table(([base] if base else []) + [res]))


def _bucket_base_results(record: RunRecord) -> dict | None:
    """The base model's results the remote job left beside the run's (eval-base/results.json)."""
    from launcher.run_outputs import read_text

    if not record.bucket:
        return None
    text = read_text(contract.RunLayout.in_bucket(record.bucket, record.run_id).eval_results(base=True))
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
