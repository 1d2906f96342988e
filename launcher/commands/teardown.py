"""`sftlaunch teardown [RUN...] [--all] [--dry-run] [--yes]`: stop what sftlaunch launched.

Why label-only: a user's other SkyPilot clusters and jobs must be safe from us even with
`--all`. A cluster qualifies only if it carries the `sftlaunch-run` label; a managed job only if
it carries it too, or — while it has no cluster yet, when SkyPilot reports no labels — if our
registry recorded launching exactly that job id under that name. Local runs are ours by record,
and only while they have not ended and their pid is still their wrapper (a reused pid is never
signalled). Teardown is idempotent: what is already gone is skipped (no jobs controller, a
cluster SkyPilot no longer has), and the end is recorded once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click

from launcher.errors import UserError
from launcher.options import dry_run_option, yes_option
from launcher.secrets import mask


@dataclass
class Target:
    kind: str  # cluster | managed | local
    run_id: str
    name: str  # cluster name, managed job id, or pid
    record: dict | None
    ref: object = None

    def describe(self) -> str:
        cost = f"${self.record['cost_usd']:.2f} so far" if self.record else "cost unknown (not in this registry)"
        what = {"cluster": f"cluster {self.name}", "managed": f"managed job {self.name}",
                "local": f"local process {self.name}"}[self.kind]
        state = self.record["state"] if self.record else "?"
        return f"{self.run_id}: {what} [{state}] · {cost}"


def find_targets(registry, backend_factory, run_ids: set[str] | None) -> list[Target]:
    """What teardown would touch: labelled clusters/jobs (and live local runs) for these runs."""
    from launcher.backends import local
    from launcher.lifecycle import ACTIVE_STATES

    records = {r["run_id"]: r for r in registry.list()}
    wanted = (lambda rid: rid in run_ids) if run_ids is not None else (lambda rid: True)
    targets: list[Target] = []
    # Only named local runs can skip SkyPilot (a name may also be a labelled cluster we never recorded).
    need_sky = run_ids is None or any((records.get(rid) or {}).get("backend") != "local" for rid in run_ids)
    if need_sky:
        backend = backend_factory()
        for c in backend.status(None):
            rid = c.run_id
            if rid and wanted(rid):
                targets.append(Target("cluster", rid, c.name, records.get(rid), c))
        for j in backend.jobs_queue():
            if j.finished:
                continue
            rid = j.run_id
            if rid is None:
                rec = records.get(j.name)
                if rec and rec.get("backend") == "managed" and str(rec.get("job_id")) == str(j.job_id):
                    rid = j.name
            if rid and wanted(rid):
                targets.append(Target("managed", rid, str(j.job_id), records.get(rid), j))
    for rid, rec in records.items():
        if (rec.get("backend") == "local" and wanted(rid) and rec.get("state") in ACTIVE_STATES
                and rec.get("local_dir") and local.exit_code(Path(rec["local_dir"])) is None and local.is_ours(rec)):
            targets.append(Target("local", rid, str(rec["pid"]), rec))
    return targets


@click.command()
@click.argument("runs", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every cluster and job sftlaunch launched (labelled sftlaunch-run).")
@dry_run_option
@yes_option
def teardown(runs: tuple[str, ...], all_: bool, dry_run: bool, yes: bool) -> None:
    """Stop everything sftlaunch launched (only labelled resources)."""
    from launcher.backends.sky import get_backend
    from launcher.lifecycle import ACTIVE_STATES
    from launcher.runid import looks_like_run_id
    from launcher.runs import Registry

    if not runs and not all_:
        raise UserError("name the runs to tear down (see `sftlaunch status`) or pass --all")
    registry = Registry()
    run_ids = None if all_ and not runs else set()
    for ref in runs:
        if registry.get(ref, history=False) is not None or looks_like_run_id(ref):
            run_ids.add(ref)  # also a labelled run launched from another machine
        else:
            run_ids.add(registry.resolve(ref)["run_id"])
    backend_cache = {}

    def backend_factory():
        if "b" not in backend_cache:
            backend_cache["b"] = get_backend()
        return backend_cache["b"]

    targets = find_targets(registry, backend_factory, run_ids)
    # Runs recorded as active whose resources are already gone: learn how they ended (their exit
    # record, SkyPilot's last word), then record the end of whatever is still unaccounted for.
    # Only a look (budget=False): the budget guard would write a stop flag into the bucket, which
    # nothing is left to read and which a later relaunch of the same run id would obey at once.
    stale = [
        r for r in registry.list(active_only=True)
        if (run_ids is None or r["run_id"] in run_ids) and r["run_id"] not in {t.run_id for t in targets}
        and r.get("state") in ACTIVE_STATES
    ]
    if stale and not dry_run:
        from launcher.lifecycle import refresh

        try:
            refresh(registry, backend_factory, stale, remote_progress=False, budget=False)
        except Exception:  # noqa: BLE001 - knowing the outcome is a bonus; the end is recorded below
            pass
        stale = [r for r in (registry.get(s["run_id"], history=False) for s in stale) if r["state"] in ACTIVE_STATES]
    if not targets:
        click.echo("nothing to tear down: no running cluster, managed job or local run carries an sftlaunch label"
                   + (f" for {', '.join(sorted(run_ids))}" if run_ids else ""))
        if not dry_run:
            for r in stale:
                registry.set_state(r["run_id"], "cancelled", "teardown: nothing was left running")
        return
    click.echo("sftlaunch would tear down:" if dry_run else "sftlaunch will tear down:")
    for t in targets:
        click.echo(mask(f"  {t.describe()}"))
    total = sum(t.record["cost_usd"] for t in targets if t.record)
    click.echo(f"total so far: ${total:.2f}")
    if dry_run:
        click.echo("dry run: nothing changed.")
        return
    if not yes:
        if not sys.stdin or not sys.stdin.isatty():
            raise UserError("no terminal to confirm on; rerun with --yes to tear down without asking")
        if not click.confirm("Tear these down?", default=False):
            raise click.Abort()
    from launcher.backends import local

    failures = []
    for t in targets:
        try:
            if t.kind == "cluster":
                backend_factory().down(t.name)
            elif t.kind == "managed":
                backend_factory().jobs_cancel(int(t.name))
            else:
                local.stop(t.record)
        except Exception as exc:  # noqa: BLE001 - keep going; report every failure at the end
            failures.append(mask(f"{t.run_id}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"))
            continue
        click.echo(f"  done: {t.run_id} ({t.kind} {t.name})")
        if t.record is not None:
            rec = registry.get(t.run_id, history=False)
            extra = dict(rec.get("extra") or {})
            extra["torn_down"] = True
            registry.update(t.run_id, extra=extra)
            if rec["state"] not in ("succeeded", "failed", "cancelled", "stopped"):
                registry.set_state(t.run_id, "cancelled", f"torn down by sftlaunch teardown ({t.kind} {t.name})")
    for r in stale:
        registry.set_state(r["run_id"], "cancelled", "teardown: nothing was left running")
    if failures:
        from launcher.errors import JobFailed

        raise JobFailed("teardown failed for: " + "; ".join(failures))
