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
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click
from click.core import ParameterSource

from launcher import contract
from launcher.contract import Env
from launcher.errors import JobFailed, UserError, one_line
from launcher.options import (
    cloud_option,
    dry_run_option,
    fallbacks_option,
    gpu_option,
    recipe_argument,
    yes_option,
)
from launcher.run_record import Backend
from launcher.secrets import mask

PROGRESS_EVERY_S = 10.0  # how often streaming writes progress/cost to the registry


class Interrupted(JobFailed):
    """Ctrl-C while following a run: the run goes on; exit 130 (the hints are already printed)."""

    exit_code = 130

    def __init__(self, message: str = "interrupted; the run keeps going"):
        super().__init__(message)


def echo(text: str = "", err: bool = False) -> None:
    click.echo(mask(text), err=err)


def _src(recipe) -> str:
    return str(recipe.source_path) if recipe.source_path else "recipe"


LOST_RESULTS = ("results would be lost when the cluster is torn down: set output.bucket (gs://, s3://) "
                "or output.hub_repo, or pass --bucket URI")


def _outputs_line(recipe, run_id: str) -> str:
    bucket = recipe.output.bucket
    if bucket:
        base = contract.run_prefix(bucket, run_id)
        text = f"checkpoints → {base}/checkpoints/, results and logs → {base}/"
    elif recipe.output.hub_repo:
        text = "no output.bucket: checkpoints and logs are lost at teardown"
    else:
        text = "no output.bucket or output.hub_repo: everything is lost at teardown"
    if recipe.output.hub_repo:
        text += f"; model → https://huggingface.co/{recipe.output.hub_repo}"
    return text


def print_plan(recipe, cand, run_id: str) -> None:
    spot = "yes (managed job, recovers from preemption)" if cand.spot else "no"
    where = cand.cloud + (f" ({cand.region})" if getattr(cand, "region", None) else "")
    nodes = f"{cand.nodes} node(s) × " if cand.nodes > 1 else ""
    mem = ""
    if getattr(cand, "mem_needed_gb", None) and getattr(cand, "mem_available_gb", None):
        mem = f"  [{cand.mem_needed_gb:.0f} of {cand.mem_available_gb:.0f} GB per GPU]"
    echo(f"Plan for {_src(recipe)} ({recipe.name} · {recipe.method} · {recipe.model.id})")
    echo(f"  cloud     {where}")
    echo(f"  GPUs      {nodes}{cand.gpu}×{cand.gpus_per_node}{mem}")
    echo(f"  spot      {spot}")
    echo(f"  price     ${cand.usd_per_hour:.2f}/h")
    echo(f"  ETA       {cand.eta_hours:.1f} h")
    budget = f" (max_usd ${recipe.resources.max_usd:.2f})" if recipe.resources.max_usd is not None else ""
    echo(f"  total     ~${cand.total_usd:.2f}{budget}")
    echo(f"  outputs   {_outputs_line(recipe, run_id)}")
    echo(f"  run id    {run_id}")


def confirm(yes: bool, question: str) -> None:
    if yes:
        return
    if not sys.stdin or not sys.stdin.isatty():
        raise UserError("no terminal to confirm on; rerun with --yes to launch without asking")
    if not click.confirm(question, default=False):
        raise click.Abort()


def reattach_hints(run_id: str) -> None:
    echo("", err=True)
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
        from launcher.lifecycle import STOPPED_LINE, parse_progress

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
    from_cli = click.get_current_context().get_parameter_source("bucket") == ParameterSource.COMMANDLINE
    r = _load(recipe, local, bucket, from_cli)
    is_local = local or r.resources.clouds == ["local"]
    if is_local and cloud:  # never silently ignored: the user asked for a cloud and would get this machine
        c = cloud.lower()
        if local:
            raise UserError(f"--cloud {c}: --local runs on this machine; drop --cloud, or drop --local to launch on {c}")
        raise UserError(f"--cloud {c}: {_src(r)}: resources.clouds allows only local; drop --cloud, or replace local "
                        f"with {c} in resources.clouds (with a gs:// or s3:// output.bucket)")
    if is_local:
        _up_local(r, dry_run, detach, yes)
    else:
        _up_cloud(r, dry_run, detach, yes, cloud.lower() if cloud else None, gpu, fallbacks)


def _record_what_runs(backend, registry, run_id: str, choices: list):
    """With failover, SkyPilot may have launched a later choice: record the one the cluster
    actually runs (cloud, region, GPU, its $/h and estimate), so status and the cost so far are
    that offer's. A managed (spot) job is recorded as planned: its controller may move it."""
    import re

    try:
        cluster = next((c for c in backend.status([run_id]) if c.name == run_id), None)
    except Exception:  # noqa: BLE001 - the launch succeeded; the record keeps the first choice
        return choices[0]
    if cluster is None or not cluster.cloud:
        return choices[0]
    acc = re.search(r"\{'([^']+)': (\d+)\}", cluster.resources or "")
    same_cloud = [c for c in choices if c.cloud == str(cluster.cloud).lower()]
    ran = next((c for c in same_cloud if acc and (c.gpu, c.gpus_per_node) == (acc.group(1), int(acc.group(2)))),
               same_cloud[0] if same_cloud else choices[0])
    if ran is not choices[0]:
        echo(f"note: no capacity for {choices[0].cloud} {choices[0].accelerators}; SkyPilot launched "
             f"{ran.cloud} {ran.accelerators} (${ran.usd_per_hour:.2f}/h, ~${ran.total_usd:.2f})", err=True)
    registry.update(run_id, cloud=ran.cloud, region=cluster.region or ran.region, gpu=ran.gpu,
                    gpus_per_node=ran.gpus_per_node, usd_per_hour=ran.usd_per_hour, eta_hours=ran.eta_hours,
                    total_usd=ran.total_usd)
    return ran


def _load(recipe: str, local: bool, bucket: str | None, from_cli: bool):
    """The recipe with --bucket/$SFTLAUNCH_BUCKET applied before validation, so the recipe's own
    rules (spot needs a bucket; a cloud run needs gs:// or s3://) judge it, and a bad value is
    reported against the flag. The environment's bucket is not applied to local runs (`--local`
    or `clouds: [local]`): the demo must not start writing to a cloud."""
    from launcher.recipe import load_recipe

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
    bucket = {Env.BUCKET: r.output.bucket} if r.output.bucket else {}  # the job's one bucket source
    # The row exists before any process starts (no orphan window).
    fields = start_local_recorded(registry, run_id, lambda: registry.create(
        run_id, r, state="launching", backend=Backend.LOCAL, cloud="local", gpu=None, spot=False, usd_per_hour=0.0,
        max_usd=r.resources.max_usd, bucket=r.output.bucket, local_dir=str(out),
        log_uri=str(local.paths(out)["log"])), Launch(recipe=r, use_docker=use_docker, extra_env=bucket))
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
    if code != 0 and final["state"] != "stopped":
        raise JobFailed(f"run {run_id} failed (exit code {code}); see {fields['log_uri']}")


def _report_end(record: dict) -> None:
    avg = record.get("eval_average")
    score = f", eval average {avg:.3f}" if isinstance(avg, (int, float)) else ""
    echo(f"{record['run_id']}: {record['state']}{score}, cost ${record['cost_usd']:.2f}")
    if record.get("local_dir"):
        _report_local_outputs(Path(record["local_dir"]))
    if record.get("result_uri") or record.get("local_dir"):
        echo(f"results: {record.get('result_uri') or record['local_dir']}")
    echo(record["run_id"])


def _report_local_outputs(run_dir: Path) -> None:
    """The end of a local run: the results table again (the job printed it mid-log) and where the
    model, its card and the loss plot are, so nobody has to dig through run.log for them."""
    from launcher.results import load_results, render_table

    results = run_dir / "eval" / "results.json"
    if results.is_file():
        try:
            echo("\n" + render_table([load_results(results)]))
        except UserError:
            pass  # an unreadable results.json was already reported by the eval step
    published = run_dir / "publish"
    for label, path in (("model", published if published.is_dir() else run_dir / "final"),
                        ("model card", published / "README.md"), ("loss plot", published / "training_loss.png"),
                        ("eval results", results)):
        if path.exists():
            echo(f"{label + ':':14}{path}")


def _candidates(r, cloud: str | None, gpu: str | None):
    from launcher.estimate import plan

    return plan(r, cloud=cloud, gpu=gpu)


def pick(result, enabled: dict[str, bool]):
    """The cheapest fitting candidate on a cloud with credentials (planner order is by cost)."""
    if result.chosen is not None and enabled.get(result.chosen.cloud):
        return result.chosen
    for cand in result.candidates:
        if cand.fits and enabled.get(cand.cloud):
            return cand
    return None


def _missing_lines(clouds: list[str], enabled: dict[str, bool]) -> list[str]:
    from launcher.backends.sky import CREDENTIAL_HINTS

    return [f"  {CREDENTIAL_HINTS.get(c, c)}" for c in clouds if not enabled.get(c)]


def _up_cloud(r, dry_run: bool, detach: bool, yes: bool, cloud: str | None, gpu: str | None,
              n_fallbacks: int | None = None) -> None:
    from launcher.backends.sky import get_backend
    from launcher.clouds import CLOUDS, not_allowed

    src = _src(r)
    if not r.output.bucket and not r.output.hub_repo:
        if not dry_run:
            raise UserError(f"{src}: output: {LOST_RESULTS}")
        echo(f"warning: {src}: output: {LOST_RESULTS}", err=True)
    if cloud and cloud not in r.resources.clouds:
        raise UserError(not_allowed(cloud, r.resources.clouds, src))
    result = _candidates(r, cloud, gpu)
    if result.chosen is None:
        raise UserError(f"{src}: resources.gpu: nothing fits: {result.reason or 'no candidate'}")
    from launcher.runid import new_run_id
    from launcher.runs import Registry

    registry = Registry()
    run_id = new_run_id(r.name, taken=lambda rid: registry.get(rid, history=False) is not None)
    print_plan(r, result.chosen, run_id)
    max_usd = r.resources.max_usd
    if max_usd is not None and result.chosen.total_usd > max_usd:
        raise UserError(
            f"{src}: resources.max_usd: the estimate ${result.chosen.total_usd:.2f} exceeds max_usd "
            f"${max_usd:.2f}; raise max_usd, lower data.max_samples/train.epochs, or allow cheaper clouds"
        )

    clouds = [c for c in ([cloud] if cloud else r.resources.clouds) if c in CLOUDS]
    backend = get_backend()
    try:
        enabled = backend.enabled_clouds(clouds)
    except Exception as exc:  # noqa: BLE001 - SkyPilot's check itself failed (no API server, ...)
        if not dry_run:
            raise UserError(f"SkyPilot's credential check failed: {one_line(exc)}; run `sky check` to see why") from None
        echo(f"note: SkyPilot's credential check failed: {one_line(exc)}", err=True)
        enabled = {c: False for c in clouds}
    missing = _missing_lines(clouds, enabled)
    chosen = pick(result, enabled)
    from launcher.preflight import PREFLIGHT_FAILED, gate

    # Hub, bucket, data, the usable clouds (those without credentials have their own lines below)
    preflight_failed = gate(r, dry_run=dry_run, clouds=[c for c in clouds if enabled.get(c)], enabled=enabled)
    if chosen is None:
        lines = "\n".join(missing)
        if dry_run:
            echo("")
            echo(f"No credentials for any allowed cloud ({', '.join(clouds)}); to launch, set up one of:")
            echo(lines)
            echo("dry run: nothing launched.")
            if preflight_failed:
                raise UserError(PREFLIGHT_FAILED)
            return
        raise UserError(f"no credentials for any allowed cloud ({', '.join(clouds)}); set up one of:\n{lines}")
    if chosen is not result.chosen:
        echo(f"note: no credentials for {result.chosen.cloud}; using {chosen.cloud} instead:")
        print_plan(r, chosen, run_id)
        if max_usd is not None and chosen.total_usd > max_usd:
            raise UserError(f"{src}: resources.max_usd: on {chosen.cloud} the estimate ${chosen.total_usd:.2f} "
                            f"exceeds max_usd ${max_usd:.2f}; set up {result.chosen.cloud} credentials or raise max_usd")
    if missing:
        echo("clouds without credentials (not considered):", err=True)
        for line in missing:
            echo(line, err=True)
    # Failover: the next fitting offers (on clouds with credentials, same spot and nodes) as
    # SkyPilot's ordered resources; those over max_usd are left out, so the budget holds for
    # whichever one SkyPilot launches.
    rest = [c for c in result.failover(len(result.candidates), max_usd)
            if c is not chosen and enabled.get(c.cloud) and c.spot == chosen.spot and c.nodes == chosen.nodes]
    fallbacks = rest[:max(0, (n_fallbacks or r.resources.fallbacks) - 1)]
    if fallbacks:
        echo("  failover  " + " → ".join(f"{c.cloud} {c.accelerators} ~${c.total_usd:.0f}" for c in [chosen, *fallbacks]))

    from launcher.render import container_recipe_yaml, render_task
    from launcher.runs import run_dir

    if dry_run:
        _optimizer_dry_runs(backend, r, result, clouds, enabled, chosen, run_id)
        echo("dry run: nothing launched.")
        if preflight_failed:
            raise UserError(PREFLIGHT_FAILED)
        return

    _check_secrets(r)
    confirm(yes, f"Launch {run_id} on {chosen.cloud} for ~${chosen.total_usd:.2f}?")
    out = run_dir(run_id, registry.home)
    out.mkdir(parents=True, exist_ok=True)
    mount = out / "recipe.yaml"
    mount.write_text(container_recipe_yaml(r))
    task = render_task(r, chosen, run_id, str(mount), fallbacks=fallbacks)
    streamer = _launch_recorded(registry, backend, r, chosen, run_id, out, task, fallbacks)
    if detach:
        echo(f"follow it with: sftlaunch logs {run_id} --follow   ·   stop it: sftlaunch teardown {run_id}")
        echo(run_id)
        return
    code = stream_until_end(registry, backend, run_id, streamer)
    final = registry.get(run_id, history=False)
    _report_end(final)
    if final["state"] == "failed" or (code not in (None, 0) and final["state"] != "stopped"):
        raise JobFailed(f"run {run_id} failed ({final['state']}); see `sftlaunch logs {run_id}`")


def _launch_recorded(registry, backend, r, chosen, run_id: str, out: Path, task: dict,
                     fallbacks: list | tuple = ()) -> Streamer:
    """Record the run (launching), then launch it through its runner. A failed launch is
    recorded and what it left is released if proven ours; Ctrl-C leaves the recorded run going."""
    from launcher import render
    from launcher.backends.runner import Launch, runner_for
    from launcher.images import resolve_image
    from launcher.secrets import launch_secrets

    bucket = r.output.bucket
    record = registry.create(
        run_id, r, state="launching", backend=Backend.MANAGED if chosen.spot else Backend.CLUSTER,
        cloud=chosen.cloud, region=getattr(chosen, "region", None), gpu=chosen.gpu,
        gpus_per_node=chosen.gpus_per_node, nodes=chosen.nodes, spot=chosen.spot, usd_per_hour=chosen.usd_per_hour,
        max_usd=r.resources.max_usd, eta_hours=chosen.eta_hours, total_usd=chosen.total_usd,
        image=resolve_image(r.image, cloud=chosen.cloud), bucket=r.output.bucket,
        cluster_name=None if chosen.spot else run_id,
        checkpoint_uri=contract.checkpoints_prefix(bucket, run_id) + "/" if bucket else None,
        result_uri=contract.run_prefix(bucket, run_id) + "/" if bucket else None,
        log_uri=contract.logs_prefix(bucket, run_id) + "/" if bucket else None,
        local_dir=str(out), owner=_current_user(backend),
    )
    names = list((task.get("secrets") or {}).keys()) or list(render.SECRET_NAMES)
    present, _missing = launch_secrets(names)
    streamer = Streamer(registry, run_id, backend)
    runner = runner_for(record, backend)
    try:
        job_id = runner.start(record, Launch(task=task, secrets=present, on_line=streamer,
                                             idle_minutes=r.resources.autostop_minutes))["job_id"]
    except KeyboardInterrupt:
        reattach_hints(run_id)
        raise Interrupted() from None
    except Exception as exc:  # noqa: BLE001 - provisioning failed: record it, one line, exit 1
        detail = one_line(exc)
        registry.set_state(run_id, "failed", f"launch failed: {detail}")
        _release_failed_launch(registry, backend, run_id)  # a half-provisioned cluster must not keep billing
        raise JobFailed(f"launch of {run_id} failed: {detail}") from None
    finally:
        del present
    what = "managed job" if runner.kind is Backend.MANAGED else "cluster job"
    registry.update(run_id, job_id=job_id)
    if fallbacks and runner.kind is not Backend.MANAGED:  # SkyPilot may have launched a later choice
        chosen = _record_what_runs(backend, registry, run_id, [chosen, *fallbacks])
    registry.set_state(run_id, "launching" if runner.kind is Backend.MANAGED else "running",
                       f"submitted ({what} {job_id})")
    echo(f"launched {run_id} ({'managed job' if runner.kind is Backend.MANAGED else 'cluster'} on {chosen.cloud})")
    return streamer


def _current_user(backend) -> str | None:
    """The SkyPilot user the launch runs as (recorded with the run; ownership is proven against
    SkyPilot's own records before anything is stopped)."""
    try:
        return backend.current_user()
    except Exception:  # noqa: BLE001 - recorded for reference only
        return None


def _release_failed_launch(registry, backend, run_id: str) -> None:
    """Down what a failed launch left, if it is proven ours; otherwise say what was left alone."""
    from launcher.backends.runner import runner_for

    try:
        result = runner_for(registry.get(run_id, history=False), backend).stop(registry.get(run_id, history=False))
    except Exception as exc:  # noqa: BLE001 - the launch error is the one to report
        echo(f"warning: could not check for a half-provisioned cluster {run_id}: {one_line(exc)}; "
             f"see `sky status {run_id}`", err=True)
        return
    if result.refusal:
        echo(f"warning: left alone: {result.refusal}; if it is yours: `sky down {run_id}`", err=True)


def _cheapest_on(result, cloud: str, chosen):
    if chosen.cloud == cloud:
        return chosen
    return next((c for c in result.candidates if c.cloud == cloud and c.fits), None)


def _optimizer_dry_runs(backend, r, result, clouds: list[str], enabled: dict, chosen, run_id: str) -> None:
    """SkyPilot's optimizer over our task on every allowed cloud that has credentials, each with
    the cheapest planned GPU there: what each would really provision, not only the chosen one.
    The chosen cloud failing is a refusal (exit 2); another failing is shown and skipped."""
    from launcher.render import container_recipe_yaml, render_task

    echo("SkyPilot optimizer (dry run), per allowed cloud with credentials:")
    max_usd = r.resources.max_usd
    worked: list[str] = []
    failure = None
    with tempfile.TemporaryDirectory() as tmp:
        mount = Path(tmp) / "recipe.yaml"
        mount.write_text(container_recipe_yaml(r))
        for cloud in [chosen.cloud] + [c for c in clouds if c != chosen.cloud and enabled.get(c)]:
            cand = _cheapest_on(result, cloud, chosen)
            mark = " (chosen)" if cloud == chosen.cloud else ""
            if cand is None:
                echo(f"  {cloud}: no planned GPU fits there")
                continue
            over = f"; over max_usd ${max_usd:.2f}" if max_usd is not None and cand.total_usd > max_usd else ""
            echo(f"  {cloud}{mark}: {cand.gpu}×{cand.gpus_per_node}" + (f" ×{cand.nodes} nodes" if cand.nodes > 1 else "")
                 + f", ~${cand.total_usd:.2f} planned{over}")
            try:
                choice = backend.optimize(render_task(r, cand, run_id, str(mount)))
            except Exception as exc:  # noqa: BLE001 - SkyPilot's reason, one line
                reason = one_line(exc)
                echo(f"    SkyPilot found no resources: {reason}")
                if cloud == chosen.cloud:
                    failure = reason
                continue
            worked.append(cloud)
            for line in choice.splitlines():
                echo(f"    {line}")
    if failure is not None:
        others = f"; it did find resources on {', '.join(worked)} (--cloud {worked[0]})" if worked else ""
        raise UserError(f"SkyPilot's optimizer found no resources for {chosen.accelerators} on {chosen.cloud}: "
                        f"{failure}{others}")


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


def _check_secrets(r) -> None:
    import os

    if r.output.hub_repo and not os.environ.get("HF_TOKEN"):
        raise UserError(
            f"{_src(r)}: output.hub_repo: pushing to the Hub needs HF_TOKEN in your environment; "
            "export HF_TOKEN=... (a write token) or remove output.hub_repo"
        )
    if "/" in r.model.id and not Path(r.model.id).exists() and not os.environ.get("HF_TOKEN"):
        echo("note: HF_TOKEN is not set; gated models (e.g. meta-llama/*) will fail to download", err=True)
