"""`sftlaunch teardown [RUN...] [--all] [--dry-run] [--yes]`: stop what sftlaunch launched.

Why proof before every stop: a user's other SkyPilot clusters and jobs, and a teammate's under a
shared API server, must be safe from us even with `--all`. A cluster or managed job is a target
only when launcher.backends.ownership proves it is this run's (our label with the run id; a
still-PENDING managed job, which has no labels yet, by the name and id we recorded launching it)
and this SkyPilot user's; it is proven again right before it is downed or cancelled. A local run
is a target only while its recorded pid is alive with the recorded start time, leading the
process group we created (a reused pid or a `tail -f run.sh` is never signalled), or, that
wrapper killed, while processes of its group still run with the run's id in their environment:
the whole group is stopped. A label value that is not a run id of the contract's shape is never
trusted (reported as foreign with --all). Teardown is idempotent: what is already gone is skipped,
and the end is recorded once. With SkyPilot's API server unreachable it says so in one line
(exit 2) and touches nothing.

`--all` also takes down the SkyServe services `sftlaunch serve` launched (recorded in runs.db,
our name prefix, this SkyPilot user's: launcher.backends.ownership.service_refusal), so nothing
sftlaunch started is left billing. Naming runs leaves their services serving (a trained model is
often served on after its training is torn down) and prints how to take each one down.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from launcher.options import dry_run_option, yes_option
from launcher.run_record import Backend, RunRecord
from launcher.run_state import RunState
from sftcore.errors import UserError, one_line, printable
from sftcore.masking import mask

_WHAT = {Backend.CLUSTER: "cluster", Backend.MANAGED: "managed job", Backend.LOCAL: "local process"}


@dataclass
class Target:
    kind: Backend
    run_id: str
    name: str  # cluster name, managed job id, or pid
    record: RunRecord | None
    ref: object = None  # SkyPilot's Cluster / ManagedJob

    def describe(self) -> str:
        cost = f"${self.record.cost_usd:.2f} so far" if self.record else "cost unknown (not in this registry)"
        state = self.record.state if self.record else "?"
        return f"{self.run_id}: {_WHAT[self.kind]} {self.name} [{state}] · {cost}"


def find_targets(registry, backend_factory, run_ids: set[str] | None, foreign: list[str] | None = None) -> list[Target]:
    """What teardown would touch: clusters/jobs proven ours (and live local runs) for these runs.
    `foreign` collects the labelled resources whose label value is no run id sftlaunch makes."""
    from launcher.backends import local
    from launcher.backends.ownership import cluster_refusal, job_refusal, not_run_id

    records = {r.run_id: r for r in registry.list()}
    wanted = (lambda rid: rid in run_ids) if run_ids is not None else (lambda rid: True)
    targets: list[Target] = []
    # Only named local runs can skip SkyPilot (a name may also be a labelled cluster we never recorded).
    need_sky = run_ids is None or any(getattr(records.get(rid), "backend", None) is not Backend.LOCAL
                                      for rid in run_ids)
    if need_sky:
        backend = backend_factory()
        try:
            clusters, jobs = backend.status(None), backend.jobs_queue()
            user = backend.current_user() if clusters or jobs else None
        except Exception as exc:  # noqa: BLE001 - API server unreachable, ...: say so, touch nothing
            raise UserError(f"cannot reach SkyPilot to find what to tear down ({one_line(exc, with_type=True)}); "
                            "nothing was torn down. Start or reach its API server (`sky api info`) and retry"
                            ) from None
        if foreign is not None and run_ids is None:  # --all: say what was left alone as foreign
            foreign += [cluster_refusal(c, c.run_id, user) for c in clusters if not_run_id(c.run_id)]
            foreign += [job_refusal(j, j.run_id, user, None) for j in jobs if not_run_id(j.run_id) and not j.finished]
        for c in clusters:
            rid = c.run_id
            if rid and not not_run_id(rid) and wanted(rid) and cluster_refusal(c, rid, user) is None:
                targets.append(Target(Backend.CLUSTER, rid, c.name, records.get(rid), c))
        for j in jobs:
            rec = records.get(j.run_id or j.name)
            rid = j.run_id or (j.name if rec is not None and rec.backend is Backend.MANAGED else None)
            if (rid and not not_run_id(rid) and not j.finished and wanted(rid)
                    and job_refusal(j, rid, user, rec.job_id if rec is not None else None) is None):
                targets.append(Target(Backend.MANAGED, rid, str(j.job_id), records.get(rid), j))
    # Local runs by proof alone, whatever their recorded state: one whose wrapper was killed may
    # have been recorded `failed` while its training still runs in the group we started.
    for rid, rec in records.items():
        if (rec.backend is Backend.LOCAL and wanted(rid)
                and rec.local_dir and local.exit_code(Path(rec.local_dir)) is None and local.is_ours(rec)):
            targets.append(Target(Backend.LOCAL, rid, str(rec.pid), rec))
    return targets


@dataclass
class ServiceTarget:
    """A SkyServe service `sftlaunch serve` launched (recorded in runs.db), proven ours now."""

    name: str
    status: str
    usd_per_hour: float | None  # per replica, as planned when it was launched

    def describe(self) -> str:
        rate = f" · ${self.usd_per_hour:.2f}/h per replica" if self.usd_per_hour else ""
        return f"{self.name}: service [{self.status}]{rate}"


def find_services(run_ids: set[str] | None, dry_run: bool) -> tuple[list[ServiceTarget], list[str]]:
    """(services to take down, notes). With --all (`run_ids` None) every service `sftlaunch serve`
    recorded and SkyServe still runs as this user's; for named runs none (a run's model may be
    served on after its training is torn down), only a note naming the service and how to stop it.
    Asks SkyPilot only when a service is recorded; one recorded but gone is marked down."""
    from launcher import services

    live_recs = [r for r in services.all_records() if not r["downed_at"]]
    if run_ids is not None:
        return [], [f"service {r['name']} serves run {r['run_id']} and keeps serving; `sftlaunch serve down "
                    f"{r['name']}` takes it down" for r in live_recs if r["run_id"] in run_ids]
    if not live_recs:
        return [], []
    from launcher.backends.ownership import service_refusal
    from launcher.backends.serve import get_serve_backend

    backend = get_serve_backend()
    try:
        live = {s.name: s for s in backend.status([r["name"] for r in live_recs])}
        user = backend.current_user()
    except Exception as exc:  # noqa: BLE001 - API server unreachable: say so, touch nothing
        raise UserError(f"cannot reach SkyPilot to find the services to tear down ({one_line(exc, with_type=True)}); "
                        "nothing was torn down. Start or reach its API server (`sky api info`) and retry") from None
    targets, notes = [], []
    for rec in live_recs:
        svc = live.get(rec["name"])
        if svc is None:
            if not dry_run:
                services.mark_down(rec["name"])  # taken down outside sftlaunch: nothing bills
            continue
        refusal = service_refusal(svc, True, user)
        if refusal:
            notes.append(f"left alone: {refusal}")
        else:
            targets.append(ServiceTarget(svc.name, svc.status, rec["usd_per_hour"]))
    return targets, notes


def _down_service(target: ServiceTarget) -> str | None:
    """Take one service down after proving it ours again; the refusal, if any."""
    from launcher import services
    from launcher.backends.serve import get_serve_backend

    return services.take_down(get_serve_backend(), target.name, recorded=True)[1]


def _run_ids(registry, runs: tuple[str, ...], all_: bool) -> set[str] | None:
    """The run ids named (full ids, or unique prefixes of recorded ones); None for --all."""
    from launcher.runid import looks_like_run_id
    from launcher.runs import check_reference

    if all_ and not runs:
        return None
    run_ids = set()
    for ref in runs:
        check_reference(ref)
        if registry.get(ref, history=False) is not None or looks_like_run_id(ref):
            run_ids.add(ref)  # also a labelled run launched from another machine
        else:
            run_ids.add(registry.resolve(ref).run_id)
    return run_ids


def _stop(target: Target, backend_factory) -> str | None:
    """Stop one target through its runner (which proves ownership again); the refusal, if any."""
    from launcher.backends.runner import Runners

    record = target.record
    if record is None or record.backend is not target.kind:  # labelled, but not (so) in this registry
        record = RunRecord(run_id=target.run_id, name="", state=RunState.RUNNING, created_at=0.0, updated_at=0.0,
                           backend=target.kind, cluster_name=target.name if target.kind is Backend.CLUSTER else None,
                           job_id=target.name if target.kind is Backend.MANAGED else None)
    if target.kind is Backend.CLUSTER:
        record = dataclasses.replace(record, cluster_name=target.name)
    return Runners(backend_factory).for_record(record).stop(record).refusal


def _stop_all(registry, targets: list[Target], served: list[ServiceTarget], backend_factory) -> list[str]:
    """Stop every target (each proven ours again) and record it; the failures, one line each, for
    the end: one failing target does not keep the others running."""
    failures: list[str] = []
    for t in targets:
        try:
            refusal = _stop(t, backend_factory)
        except Exception as exc:  # noqa: BLE001 - keep going; report every failure at the end
            failures.append(mask(f"{t.run_id}: {one_line(exc)}"))
            continue
        if refusal is not None:
            failures.append(mask(f"{t.run_id}: not touched: {refusal}"))
            continue
        click.echo(f"  done: {t.run_id} ({_WHAT[t.kind]} {t.name})")
        if t.record is not None:
            rec = registry.get(t.run_id, history=False)
            registry.update(t.run_id, torn_down=True)
            if rec.state.is_active:
                registry.set_state(t.run_id, RunState.CANCELLED, f"torn down by sftlaunch teardown ({_WHAT[t.kind]} {t.name})")
    for svc in served:
        try:
            refusal = _down_service(svc)
        except Exception as exc:  # noqa: BLE001 - keep going; report every failure at the end
            failures.append(mask(f"service {svc.name}: {one_line(exc)}"))
            continue
        if refusal is not None:
            failures.append(mask(f"service {svc.name}: not touched: {refusal}"))
        else:
            click.echo(f"  done: service {svc.name} taken down")
    return failures


@click.command()
@click.argument("runs", nargs=-1)
@click.option("--all", "all_", is_flag=True,
              help="Every cluster, job and local run sftlaunch launched (labelled sftlaunch-run), and every "
                   "service `sftlaunch serve` launched.")
@dry_run_option
@yes_option
def teardown(runs: tuple[str, ...], all_: bool, dry_run: bool, yes: bool) -> None:
    """Stop everything sftlaunch launched (only labelled resources)."""
    from launcher.backends.sky import get_backend
    from launcher.runs import Registry

    if not runs and not all_:
        raise UserError("name the runs to tear down (see `sftlaunch status`) or pass --all")
    registry = Registry()
    run_ids = _run_ids(registry, runs, all_)
    backend_cache = {}

    def backend_factory():
        if "b" not in backend_cache:
            backend_cache["b"] = get_backend()
        return backend_cache["b"]

    foreign: list[str] = []
    targets = find_targets(registry, backend_factory, run_ids, foreign)
    served, service_notes = find_services(run_ids, dry_run)
    for note in foreign + service_notes:
        click.echo(printable(mask(f"  {note}")))
    # Runs recorded as active whose resources are already gone: learn how they ended (their exit
    # record, SkyPilot's last word), then record the end of whatever is still unaccounted for.
    # Only a look (budget=False): the budget guard would write a stop flag into the bucket, which
    # nothing is left to read and which a later relaunch of the same run id would obey at once.
    stale = [
        r for r in registry.list(active_only=True)
        if (run_ids is None or r.run_id in run_ids) and r.run_id not in {t.run_id for t in targets}
        and r.state.is_active
    ]
    if stale and not dry_run:
        from launcher.lifecycle import refresh

        try:
            refresh(registry, backend_factory, stale, remote_progress=False, budget=False)
        except Exception:  # noqa: BLE001 - knowing the outcome is a bonus; the end is recorded below
            pass
        stale = [r for r in (registry.get(s.run_id, history=False) for s in stale) if r.state.is_active]
    if not targets and not served:
        click.echo("nothing to tear down: no running cluster, managed job, local run or service carries an sftlaunch label"
                   + (f" for {', '.join(sorted(run_ids))}" if run_ids else ""))
        if not dry_run:
            for r in stale:
                registry.set_state(r.run_id, RunState.CANCELLED, "teardown: nothing was left running")
        return
    click.echo("sftlaunch would tear down:" if dry_run else "sftlaunch will tear down:")
    for t in [*targets, *served]:
        click.echo(printable(mask(f"  {t.describe()}")))
    total = sum(t.record.cost_usd for t in targets if t.record)
    click.echo(f"total so far: ${total:.2f}")
    if dry_run:
        click.echo("dry run: nothing changed.")
        return
    if not yes:
        if not sys.stdin or not sys.stdin.isatty():
            raise UserError("no terminal to confirm on; rerun with --yes to tear down without asking")
        if not click.confirm("Tear these down?", default=False):
            raise click.Abort()
    failures = _stop_all(registry, targets, served, backend_factory)
    for r in stale:
        registry.set_state(r.run_id, RunState.CANCELLED, "teardown: nothing was left running")
    if failures:
        from sftcore.errors import JobFailed

        raise JobFailed("teardown failed for: " + "; ".join(failures))
