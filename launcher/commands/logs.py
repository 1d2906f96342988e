"""`sftlaunch logs RUN [--follow]`: a run's logs, wherever they live now.

Why several sources: a running cluster's job log comes from SkyPilot; a managed job's from the
jobs controller (which keeps it after the job ends); a local run's from its run.log; and once a
cluster is gone, from the copy the job uploaded to `<bucket>/<run id>/logs/` (docker/entrypoint.sh
writes `logs/<step>.log`, masked, and `python -m jobs sync` copies it every minute and at the end).
"""

from __future__ import annotations

import click

from launcher.commands.up_follow import Interrupted
from launcher.run_record import Backend, RunRecord
from sftcore import contract
from sftcore.errors import JobFailed, UserError, one_line
from sftcore.masking import mask


def _print(line: str) -> None:
    click.echo(mask(line))


STEP_ORDER = ("train", "eval", "publish")


def _log_order(path: str) -> tuple:
    """Steps in the order they ran (train, eval, publish; head node first), then anything else."""
    name = path.rsplit("/", 1)[-1]
    step, _, rest = name.partition(".")
    rank = STEP_ORDER.index(step) if step in STEP_ORDER else len(STEP_ORDER)
    return (rank, rest != "log", name)


def bucket_logs(record: RunRecord, on_line) -> bool:
    """Print `<bucket>/<run id>/logs/*` in step order; False when there is no copy to read."""
    bucket = record.bucket
    if not bucket:
        return False
    import importlib.util

    if importlib.util.find_spec("fsspec") is None:
        return False
    from sftcore import store

    base = contract.RunLayout.in_bucket(bucket, record.run_id).logs
    try:
        # Short per-request timeouts and no GCE metadata probe, as for status's bucket reads.
        fs, path = store.filesystem(base, fail_fast=True)
        files = sorted((p for p in fs.find(path) if not p.endswith("/")), key=_log_order)
    except Exception:  # noqa: BLE001 - unreachable or absent: say so below
        return False
    if not files:
        return False
    for p in files:
        with fs.open(p, "r") as fh:
            for line in fh:
                on_line(line.rstrip("\n"))
    return True


def _read_only_hint(exc: BaseException) -> str:
    """Reading logs needs no write of ours; SkyPilot's client, though, writes its state under
    ~/.sky. On a read-only home say so, with the way around it, rather than only its OSError."""
    import errno

    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES):
            return (f"; SkyPilot could not write {exc.filename or '~/.sky'} (a read-only home): local runs' "
                    "logs and bucket copies read fine, a cluster's log needs a writable ~/.sky")
        exc = exc.__cause__ or exc.__context__
    return ""


@click.command()
@click.argument("run")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the run ends.")
def logs(run: str, follow: bool) -> None:
    """Show (or --follow) a run's logs."""
    from launcher.backends.runner import Runners
    from launcher.runs import Registry

    registry = Registry()
    record = registry.resolve(run)
    run_id = record.run_id
    runners = Runners()
    runner = runners.for_record(record)
    try:
        active = record.state.is_active
        # A local run's log is its run.log; SkyPilot keeps a managed job's log after it ends, a
        # cluster's only while the cluster lives.
        if runner is not None and (active or runner.kind is not Backend.CLUSTER):
            try:
                runner.logs(record, follow=follow, on_line=_print)
                if follow and active and registry.writable:
                    from launcher.lifecycle import refresh

                    refresh(registry, None, [registry.get(run_id, history=False)])
                return
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - gone from SkyPilot: fall back to the bucket copy
                if runner.kind is Backend.LOCAL:
                    raise
                if not bucket_logs(record, _print):
                    raise JobFailed(mask(f"cannot read logs of {run_id} from SkyPilot ({one_line(exc)}) "
                                         f"and there is no bucket copy{_read_only_hint(exc)}")) from None
                return
        if bucket_logs(record, _print):
            return
        where = contract.RunLayout.in_bucket(record.bucket, run_id).logs + "/" if record.bucket else None
        raise UserError(
            f"{run_id} has ended and its cluster is gone; "
            + (f"no log copy found at {where}" if where else "it had no output.bucket, so no log copy was kept")
        )
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; the run keeps going. Reattach: sftlaunch logs {run_id} --follow", err=True)
        raise Interrupted() from None
