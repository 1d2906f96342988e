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

This module holds the command and local runs; the cloud path (plan, credentials, failover, launch
and record) is launcher/commands/up_cloud.py; following a run to its end, up_follow.py.
"""

from __future__ import annotations

import sys

import click
from click.core import ParameterSource

from launcher.commands.up_follow import (
    Interrupted,
    Streamer,
    confirm,
    echo,
    reattach_hints,
    recipe_source,
    report_end,
)
from launcher.options import (
    cloud_option,
    dry_run_option,
    fallbacks_option,
    gpu_option,
    recipe_argument,
    yes_option,
)
from launcher.run_record import Backend
from launcher.run_state import RunState
from launcher.signals import signals_as_interrupts
from sftcore.contract import Env
from sftcore.errors import JobFailed, UserError


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
        raise UserError(f"--cloud {c}: {recipe_source(r)}: resources.clouds allows only local; drop --cloud, or replace local "
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
        echo(f"note: {flag} {bucket} replaces {recipe_source(r)}'s output.bucket {previous}", err=True)
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
    echo(f"Plan for {recipe_source(r)} ({r.name} · {r.method} · {r.model.id})")
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
    report_end(final)
    if code != 0 and final.state is not RunState.STOPPED:
        raise JobFailed(f"run {run_id} failed (exit code {code}); see {fields['log_uri']}")


