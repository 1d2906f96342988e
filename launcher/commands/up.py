"""`sftlaunch up RECIPE`: validate → plan → show → confirm → launch → (stream logs) → record.

Why the order: everything that can refuse without spending money runs first — the recipe (with
--bucket applied, so its rules judge it: spot needs a bucket, a cloud run needs gs:// or s3://),
the plan and its cost against max_usd, credentials from SkyPilot's check, preflight (the Hub
token, the bucket, the data: launcher.preflight) — each refusal one line and exit 2. Only then
is anything provisioned. Once launched, the run is the remote job's: Ctrl-C stops our log
stream, never the run; the reattach and teardown commands are printed instead.

A cloud run must persist something: the cluster's disk is deleted at teardown, so a run with
neither output.bucket nor output.hub_repo (nor `--bucket`) would train a model only to destroy
it; `up` refuses it (exit 2) and `--dry-run` warns.

On-demand runs are a cluster named after the run id whose autostop deletes it (`down: true`, on
every cloud) once its job has ended and it has been idle for autostop_minutes, whether or not
anyone is watching; when `up` is streaming the end it downs the cluster at once. Spot runs are
managed jobs that SkyPilot relaunches after preemption; the job resumes from the bucket
checkpoint.

This module holds the command, local runs and the log stream; the cloud path (plan, credentials,
failover, launch and record) is launcher/commands/up_cloud.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from click.core import ParameterSource

from launcher.options import (
    cloud_option,
    dry_run_option,
    fallbacks_option,
    gpu_option,
    recipe_argument,
    yes_option,
)
from launcher.run_record import Backend, RunRecord
from launcher.run_state import RunState
from launcher.signals import signals_as_interrupts
from sftcore import contract
from sftcore.contract import Env
from sftcore.errors import JobFailed, UserError
from sftcore.masking import mask

PROGRESS_EVERY_S = 10.0  # how often streaming writes progress/cost to the registry


class Interrupted(JobFailed):
    """Ctrl-C while following a run: the run goes on; exit 130 (the hints are already printed)."""

    exit_code = 130

    def __init__(self, message: str = "interrupted; the run keeps going"):
        cause = sys.exc_info()[1]  # SIGTERM / SIGHUP (launcher.signals.Terminated): exit 143 / 129
        if getattr(cause, "signum", None):
            self.exit_code = cause.exit_code
            message = f"{cause.name} received; the run keeps going"
        super().__init__(message)


def echo(text: str = "", err: bool = False) -> None:
    click.echo(mask(text), err=err)


def _src(recipe) -> str:
    return str(recipe.source_path) if recipe.source_path else "recipe"


def confirm(yes: bool, question: str) -> None:
    if yes:
        return
    if not sys.stdin or not sys.stdin.isatty():
        raise UserError("no terminal to confirm on; rerun with --yes to launch without asking")
    if not click.confirm(question, default=False):
        raise click.Abort()


def reattach_hints(run_id: str, doing: str = "following the logs of") -> None:
    echo("", err=True)
    cause = sys.exc_info()[1]
    if getattr(cause, "signum", None):  # say what stopped us, and what we were doing
        echo(f"sftlaunch up got {cause.name} while {doing} {run_id}; it stops, the run does not.", err=True)
    echo(f"Detached from the logs; the run {run_id} keeps going.", err=True)
    echo(f"  reattach:  sftlaunch logs {run_id} --follow", err=True)
    echo(f"  status:    sftlaunch status {run_id}", err=True)
    echo(f"  stop it:   sftlaunch teardown {run_id}", err=True)


class Streamer:
    """Prints log lines (masked), turns metrics lines into a progress line, and keeps the
    registry's progress and the budget guard current while the run streams."""

    def __init__(self, registry, run_id: str, backend=None, show_progress: bool = True):
        self.registry, self.run_id, self.backend = registry, run_id, backend
        self.progress: tuple[int, int] | None = None
        self.show_progress = show_progress
        self._last_save = 0.0
        self._last_pct = -1

    def __call__(self, line: str) -> None:
        from launcher.run_outputs import parse_progress
        from sftcore.contract import STOPPED_LINE

        echo(line)
        if STOPPED_LINE in line:
            self._record_job_stop()
        p = parse_progress(line)
        if p and p != self.progress:
            self.progress = p
            pct = int(100 * p[0] / p[1]) if p[1] else 0
            if self.show_progress and pct != self._last_pct:  # one line per percent, not per log step
                self._last_pct = pct
                echo(f"progress: step {p[0]}/{p[1]} ({pct}%)", err=True)
            self._save()

    def _save(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_save < PROGRESS_EVERY_S:
            return
        self._last_save = now
        if self.progress:
            self.registry.update(self.run_id, progress_step=self.progress[0], progress_total=self.progress[1])
        if self.backend is not None:
            from launcher.lifecycle import guard_budget

            record = self.registry.get(self.run_id, history=False)
            if guard_budget(self.registry, self.backend, record) == "requested":
                echo(f"budget: cost passed max_usd; asked {self.run_id} to checkpoint and stop", err=True)

    def _record_job_stop(self) -> None:
        """The job's budget guard stopped training (the entrypoint said so): the run ends as
        `stopped`, not `succeeded`, although SkyPilot reports the job's exit 0 as SUCCEEDED."""
        if not self.registry.get(self.run_id, history=False).job_stopped:
            self.registry.update(self.run_id, job_stopped=True)

    def flush(self) -> None:
        self._save(force=True)


# -- the command ----------------------------------------------------------------------------------
@click.command()
@recipe_argument
@click.option("--local", is_flag=True, help="Run on this machine (Docker if a daemon is reachable, else directly).")
@dry_run_option
@click.option("--detach", is_flag=True, help="Return once the run is submitted; do not stream logs.")
@yes_option
@cloud_option
@gpu_option
@click.option("--bucket", envvar=Env.BUCKET, default=None, metavar="URI",
              help="Checkpoints, results and logs go to URI (gs://, s3://), overriding output.bucket "
                   f"[default: ${Env.BUCKET}].")
@fallbacks_option
def up(recipe: str, local: bool, dry_run: bool, detach: bool, yes: bool, cloud: str | None, gpu: str | None,
       bucket: str | None, fallbacks: int | None) -> None:
    """Launch RECIPE: print the plan, confirm, launch, print the run id."""
    with signals_as_interrupts():  # SIGTERM / SIGHUP: like Ctrl-C, said in words, exit 143 / 129
        _up(recipe, local, dry_run, detach, yes, cloud, gpu, bucket, fallbacks)


def _up(recipe: str, local: bool, dry_run: bool, detach: bool, yes: bool, cloud: str | None, gpu: str | None,
        bucket: str | None, fallbacks: int | None) -> None:
    from_cli = click.get_current_context().get_parameter_source("bucket") == ParameterSource.COMMANDLINE
    r = _load(recipe, local, bucket, from_cli)
    is_local = local or r.resources.clouds == ["local"]
    if is_local and cloud:  # never silently ignored: the user asked for a cloud and would get this machine
        c = cloud.lower()
        if local:
            raise UserError(f"--cloud {c}: --local runs on this machine; drop --cloud, or drop --local to launch on {c}")
        raise UserError(f"--cloud {c}: {_src(r)}: resources.clouds allows only local; drop --cloud, or replace local "
                        f"with {c} in resources.clouds (with a gs:// or s3:// output.bucket)")
    if is_local and (gpu or fallbacks):  # likewise: this machine's devices are what a local run gets
        flag = f"--gpu {gpu}" if gpu else f"--fallbacks {fallbacks}"
        raise UserError(f"{flag}: a local run uses this machine's devices; drop {flag.split()[0]}, or launch on a "
                        "cloud the recipe allows (without --local)")
    if is_local:
        _up_local(r, dry_run, detach, yes)
    else:
        from launcher.commands.up_cloud import up_cloud

        up_cloud(r, dry_run, detach, yes, cloud.lower() if cloud else None, gpu, fallbacks)


def _load(recipe: str, local: bool, bucket: str | None, from_cli: bool):
    """The recipe with --bucket/$SFTLAUNCH_BUCKET applied before validation, so the recipe's own
    rules (spot needs a bucket; a cloud run needs gs:// or s3://) judge it, and a bad value is
    reported against the flag. The environment's bucket is not applied to local runs (`--local`
    or `clouds: [local]`): the demo must not start writing to a cloud."""
    from sftcore.recipe import load_recipe

    if not bucket or (local and not from_cli):
        return load_recipe(recipe)
    flag = "--bucket" if from_cli else Env.BUCKET
    key = ("output", "bucket")
    r = load_recipe(recipe, overrides={key: bucket}, labels={key: flag}, cloud_only=not from_cli)
    previous = r.replaced(*key)
    if r.override_label(*key) and previous and previous != bucket:
        echo(f"note: {flag} {bucket} replaces {_src(r)}'s output.bucket {previous}", err=True)
    return r


def _up_local(r, dry_run: bool, detach: bool, yes: bool) -> None:
    from launcher.backends import local
    from launcher.backends.runner import Launch, runner_for, start_local_recorded
    from launcher.runid import new_run_id
    from launcher.runs import Registry, run_dir

    registry = Registry()
    run_id = new_run_id(r.name, taken=lambda rid: registry.get(rid, history=False) is not None)
    out = run_dir(run_id, registry.home)
    use_docker, image, why = local.choose_runner(r)
    how = f"in Docker, image {image} ({why})" if use_docker else f"directly with {sys.executable} ({why})"
    echo(f"Plan for {_src(r)} ({r.name} · {r.method} · {r.model.id})")
    echo(f"  where     this machine, {how}")
    echo("  price     $0.00/h (local)")
    echo(f"  outputs   {out}/ (checkpoints, metrics, eval results, run.log)")
    echo(f"  run id    {run_id}")
    from launcher.preflight import PREFLIGHT_FAILED, gate

    preflight_failed = gate(r, dry_run=dry_run, local=True)  # Hub and bucket only; exit 2 if one fails
    if dry_run:
        echo("dry run: nothing started.")
        if preflight_failed:
            raise UserError(PREFLIGHT_FAILED)
        return
    confirm(yes, "Start this run here?")
    # The row exists before any process starts (no orphan window).
    fields = start_local_recorded(registry, run_id, lambda: registry.create(
        run_id, r, state=RunState.LAUNCHING, backend=Backend.LOCAL, cloud="local", gpu=None, spot=False, usd_per_hour=0.0,
        max_usd=r.resources.max_usd, bucket=r.output.bucket, local_dir=str(out),
        log_uri=str(local.paths(out)["log"])), Launch(recipe=r, use_docker=use_docker))
    echo(f"running {'in Docker (' + str(fields['image']) + ')' if fields.get('image') else 'directly, without Docker'}")
    echo(f"started {run_id} (pid {fields['pid']}); log: {fields['log_uri']}")
    if detach:
        echo(f"follow it with: sftlaunch logs {run_id} --follow")
        echo(run_id)
        return
    record = registry.get(run_id, history=False)
    streamer = Streamer(registry, run_id)
    try:
        code = runner_for(record).logs(record, follow=True, on_line=streamer)
    except KeyboardInterrupt:
        reattach_hints(run_id)
        raise Interrupted() from None
    streamer.flush()
    from launcher import lifecycle

    lifecycle.refresh(registry, lambda: None, [registry.get(run_id, history=False)])
    final = registry.get(run_id, history=False)
    _report_end(final)
    if code != 0 and final.state is not RunState.STOPPED:
        raise JobFailed(f"run {run_id} failed (exit code {code}); see {fields['log_uri']}")


def _report_end(record: RunRecord) -> None:
    avg = record.eval_average
    score = f", eval average {avg:.3f}" if isinstance(avg, (int, float)) else ""
    echo(f"{record.run_id}: {record.state}{score}, cost ${record.cost_usd:.2f}")
    if record.local_dir:
        _report_local_outputs(Path(record.local_dir))
    if record.result_uri or record.local_dir:
        echo(f"results: {record.result_uri or record.local_dir}")
    echo(record.run_id)


def _report_local_outputs(run_dir: Path) -> None:
    """The end of a local run: the results table again (the job printed it mid-log) and where the
    model, its card and the loss plot are, so nobody has to dig through run.log for them."""
    from sftcore.results import load_results, render_table

    layout = contract.RunLayout(run_dir)
    results = layout.eval_results()
    if results.is_file():
        try:
            echo("\n" + render_table([load_results(results)]))
        except UserError:
            pass  # an unreadable results.json was already reported by the eval step
    published = layout.publish
    for label, path in (("model", published if published.is_dir() else layout.final),
                        ("model card", published / "README.md"), ("loss plot", published / "training_loss.png"),
                        ("eval results", results)):
        if path.exists():
            echo(f"{label + ':':14}{path}")


def stream_until_end(registry, backend, run_id: str, streamer=None) -> int | None:
    """Follow the run's logs to the end, then record the outcome (and down an on-demand cluster).
    Ctrl-C leaves the run alone: print how to reattach and tear down, exit 130."""
    from launcher import lifecycle
    from launcher.backends.runner import runner_for
    from launcher.backends.sky import Unavailable

    record = registry.get(run_id, history=False)
    streamer = streamer or Streamer(registry, run_id, backend)
    try:
        code = runner_for(record, backend).logs(record, follow=True, on_line=streamer)
    except Unavailable as exc:  # the cluster or controller went away under the stream
        echo(f"note: the log stream ended: {exc}", err=True)
        code = None
    except KeyboardInterrupt:
        streamer.flush()
        reattach_hints(run_id)
        raise Interrupted() from None
    streamer.flush()
    lifecycle.refresh(registry, lambda: backend, [registry.get(run_id, history=False)], remote_progress=False)
    return code

