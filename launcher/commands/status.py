"""`sftlaunch status [RUN]`: the runs table, refreshed from SkyPilot and local processes.

Why refresh here: the registry is only as true as its last look. Active runs are checked against
SkyPilot's clusters and managed-jobs queue (and local process ids) before printing, which is also
when ended on-demand clusters are torn down and the budget guard acts for detached runs.
Finished runs are not queried, so the table stays fast with many runs recorded.
"""

from __future__ import annotations

import json

import click

from launcher.options import json_option
from launcher.run_record import Backend, RunRecord
from sftcore.masking import mask

COLUMNS = ("RUN", "RECIPE", "WHERE", "STATE", "PROGRESS", "$ SO FAR", "EVAL AVG")


def where(record: RunRecord) -> str:
    if record.backend is Backend.LOCAL:
        return "local" + (" (docker)" if record.image else "")
    if not record.cloud:
        return "-"
    gpu = f"{record.gpu}×{record.gpus_per_node or 1}"
    if (record.nodes or 1) > 1:
        gpu = f"{record.nodes}×{gpu}"
    region = f"/{record.region}" if record.region else ""
    return f"{record.cloud}{region} {gpu}" + (" spot" if record.spot else "")


def progress(record: RunRecord) -> str:
    step, total = record.progress_step, record.progress_total
    if step is None or not total:
        return "-"
    return f"{step}/{total} ({100.0 * step / total:.0f}%)"


def row(record: RunRecord) -> dict:
    avg = record.eval_average
    return {
        "run_id": record.run_id,
        "recipe": record.name,
        "where": where(record),
        "state": record.state.value,
        "progress": progress(record),
        "progress_step": record.progress_step,
        "progress_total": record.progress_total,
        "cost_usd": record.cost_usd,
        "usd_per_hour": record.usd_per_hour,
        "max_usd": record.max_usd,
        "eval_average": avg,
        "eval_scores": (record.eval or {}).get("scores"),
        "backend": record.backend.value if record.backend else None,
        "cluster_name": record.cluster_name,
        "job_id": record.job_id,
        "created_at": record.created_at,
        "ended_at": record.ended_at,
        "checkpoint_uri": record.checkpoint_uri,
        "result_uri": record.result_uri,
        # predicted (the plan at launch) vs measured (the job's calibration probe) vs actual (billed)
        "running_hours": record.running_hours,
        "recovery_count": record.recovery_count,
        "predicted_eta_hours": record.eta_hours,
        "predicted_usd": record.total_usd,
        "predicted_tokens_per_s": record.predicted_tokens_per_s,
        "measured_tokens_per_s": record.measured_tokens_per_s,
        "measured_mfu": record.measured_mfu,
        "peak_mem_gb": record.peak_mem_gb,
        "calibrated_eta_hours": record.calibrated_eta_hours,
        "calibrated_usd": record.calibrated_usd,
    }


def cost_lines(r: dict) -> list[str]:
    """`status RUN`: the running cost against the plan, and what the calibration probe measured."""
    hours = r.get("running_hours") or 0.0
    rate = f" at ${r['usd_per_hour']:.2f}/h" if r.get("usd_per_hour") else ""
    rec = r.get("recovery_count") or 0
    recoveries = f", {rec} recover{'y' if rec == 1 else 'ies'} included" if rec else ""
    plan = ""
    if r.get("predicted_usd") is not None and r.get("predicted_eta_hours") is not None:
        plan = f"; planned ${r['predicted_usd']:.2f} over {r['predicted_eta_hours']:.2f} h"
    lines = [f"  cost: ${(r.get('cost_usd') or 0):.2f} so far, {hours:.2f} h billed{rate}{recoveries}{plan}"]
    if r.get("measured_tokens_per_s") is not None:
        pred = f" (plan {r['predicted_tokens_per_s']:.0f})" if r.get("predicted_tokens_per_s") else ""
        eta = f", ETA {r['calibrated_eta_hours']:.2f} h" if r.get("calibrated_eta_hours") is not None else ""
        usd = f", projected ${r['calibrated_usd']:.2f}" if r.get("calibrated_usd") is not None else ""
        mem = f", peak memory {r['peak_mem_gb']:.1f} GB" if r.get("peak_mem_gb") is not None else ""
        lines.append(f"  measured: {r['measured_tokens_per_s']:.0f} tokens/s{pred}{eta}{usd}{mem}")
    return lines


def format_table(rows: list[dict]) -> str:
    cells = [COLUMNS] + [
        (r["run_id"], r["recipe"] or "-", r["where"], r["state"] or "-", r["progress"],
         f"${(r['cost_usd'] or 0):.2f}", "-" if r["eval_average"] is None else f"{r['eval_average']:.3f}")
        for r in rows
    ]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(str(c[i]).ljust(widths[i]) for i in range(len(COLUMNS))).rstrip() for c in cells)


@click.command()
@click.argument("run", required=False)
@json_option
@click.option("--no-refresh", is_flag=True, help="Show what the registry recorded; ask no one.")
def status(run: str | None, as_json: bool, no_refresh: bool) -> None:
    """Show runs: where, state, progress, cost so far, eval average."""
    from launcher.runs import Registry
    from launcher.runs_errors import RegistryError

    registry = Registry()
    records = [registry.resolve(run)] if run is not None else registry.list()
    if not no_refresh and not registry.writable:
        click.echo(f"note: {registry.path} is read-only; showing recorded states (refreshing records them)", err=True)
    elif not no_refresh:
        from launcher.lifecycle import refresh

        active = [r for r in records if r.state.is_active]
        if active:
            from launcher.backends.sky import get_backend

            try:
                changed = refresh(registry, get_backend, active)
            except RegistryError:
                raise
            except Exception as exc:  # noqa: BLE001 - SkyPilot unreachable: show what we know
                click.echo(mask(f"note: could not refresh from SkyPilot ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                                "showing recorded states"), err=True)
                changed = []
            if changed:
                records = [registry.resolve(run)] if run is not None else registry.list()
    rows = [row(r) for r in records]
    if as_json:
        click.echo(mask(json.dumps(rows[0] if run is not None else rows, indent=2, default=str)))
        return
    if not rows:
        click.echo("no runs yet; start one with `sftlaunch up RECIPE`")
        return
    click.echo(mask(format_table(rows)))
    if run is not None:
        rec = registry.get(records[0].run_id)
        for line in cost_lines(rows[0]):
            click.echo(mask(line))
        for h in rec.history or []:
            import time as _t

            when = _t.strftime("%Y-%m-%d %H:%M:%S", _t.localtime(h["at"]))
            click.echo(mask(f"  {when}  {h['state']}" + (f"  {h['detail']}" if h.get("detail") else "")))
        for key in ("checkpoint_uri", "result_uri"):
            if getattr(rec, key):
                click.echo(f"  {key.replace('_uri', 's')}: {getattr(rec, key)}")
