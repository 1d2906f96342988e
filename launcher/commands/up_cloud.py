"""`sftlaunch up` on a cloud: plan and check, pick a cloud with credentials, then launch and record.

The command and local runs are launcher/commands/up.py, whose docstring gives the order and why
(everything that can refuse without spending money first).
`sky` is imported only inside the functions that launch, so importing this module stays light.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from launcher.commands.up_follow import (
    Interrupted,
    Streamer,
    confirm,
    echo,
    reattach_hints,
    recipe_source,
    report_end,
    stream_until_end,
)
from launcher.run_record import Backend
from launcher.run_state import RunState
from sftcore import contract
from sftcore.errors import JobFailed, UserError, one_line

LOST_RESULTS = ("results would be lost when the cluster is torn down: set output.bucket (gs://, s3://) "
                "or output.hub_repo, or pass --bucket URI")


def _outputs_line(recipe, run_id: str) -> str:
    bucket = recipe.output.bucket
    if bucket:
        layout = contract.RunLayout.in_bucket(bucket, run_id)
        text = f"checkpoints → {layout.checkpoints}/, results and logs → {layout.root}/"
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
    echo(f"Plan for {recipe_source(recipe)} ({recipe.name} · {recipe.method} · {recipe.model.id})")
    echo(f"  cloud     {where}")
    echo(f"  GPUs      {nodes}{cand.gpu}×{cand.gpus_per_node}{mem}")
    echo(f"  spot      {spot}")
    echo(f"  price     ${cand.usd_per_hour:.2f}/h")
    echo(f"  ETA       {cand.eta_hours:.1f} h")
    budget = f" (max_usd ${recipe.resources.max_usd:.2f})" if recipe.resources.max_usd is not None else ""
    echo(f"  total     ~${cand.total_usd:.2f}{budget}")
    echo(f"  outputs   {_outputs_line(recipe, run_id)}")
    echo(f"  run id    {run_id}")


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
    # The price in the region it landed in (what the job's budget guard charges, jobs/rate.py).
    usd_h = (getattr(ran, "region_usd_per_hour", None) or {}).get(cluster.region) or ran.usd_per_hour
    registry.update(run_id, cloud=ran.cloud, region=cluster.region or ran.region, gpu=ran.gpu,
                    gpus_per_node=ran.gpus_per_node, usd_per_hour=usd_h, eta_hours=ran.eta_hours,
                    total_usd=usd_h * ran.eta_hours)
    return ran


def _candidates(r, cloud: str | None, gpu: str | None):
    from launcher.estimate.candidates import plan

    return plan(r, cloud=cloud, gpu=gpu)


def _missing_lines(clouds: list[str], enabled: dict[str, bool]) -> list[str]:
    from launcher.backends.sky import CREDENTIAL_HINTS

    return [f"  {CREDENTIAL_HINTS.get(c, c)}" for c in clouds if not enabled.get(c)]


def up_cloud(r, dry_run: bool, detach: bool, yes: bool, cloud: str | None, gpu: str | None,
             n_fallbacks: int | None = None) -> None:
    """Plan and check (nothing spent), order the launch over the clouds with credentials
    (launcher.failover.launch_order) and preflight, then either SkyPilot's dry run or confirm →
    record → launch → follow."""
    from launcher.backends.sky import get_backend
    from launcher.failover import considered_clouds, launch_order
    from launcher.preflight import PREFLIGHT_FAILED, gate

    result, registry, run_id = _plan_checked(r, dry_run, cloud, gpu)
    clouds = considered_clouds(r, cloud)
    backend = get_backend()
    # A dry run asks SkyPilot's check and optimizer without its API server: none is started, none left running.
    asked = backend.offline() if dry_run else backend
    enabled = _enabled_clouds(asked, clouds, dry_run)
    missing = _missing_lines(clouds, enabled)
    # The one launch order (plan and render print the same for the same usable clouds).
    order = launch_order(result, n_fallbacks or r.resources.fallbacks, r.resources.max_usd,
                         {c for c, ok in enabled.items() if ok})
    chosen = order[0] if order else None
    # Hub, bucket, data, the usable clouds (those without credentials have their own lines below)
    preflight_failed = gate(r, dry_run=dry_run, clouds=[c for c in clouds if enabled.get(c)], enabled=enabled)
    if chosen is None:
        _no_credentials(clouds, missing, dry_run)
        if preflight_failed:
            raise UserError(PREFLIGHT_FAILED)
        return
    _switched_cloud(r, result, chosen, run_id, missing)
    fallbacks = order[1:]
    if fallbacks:
        echo("  failover  " + " → ".join(f"{c.cloud} {c.accelerators} ~${c.total_usd:.0f}" for c in order))
    if dry_run:
        _optimizer_dry_runs(asked, r, result, clouds, enabled, chosen, run_id, fallbacks)
        echo("dry run: nothing launched.")
        if preflight_failed:
            raise UserError(PREFLIGHT_FAILED)
        return
    _confirm_and_launch(registry, backend, r, chosen, run_id, fallbacks, detach, yes)


def _plan_checked(r, dry_run: bool, cloud: str | None, gpu: str | None):
    """(plan, registry, run id) once the refusals that cost nothing have passed: outputs that
    would be lost, a --cloud the recipe does not allow, nothing fits, the estimate over max_usd."""
    from launcher.runid import new_run_id
    from launcher.runs import Registry
    from sftcore.clouds import not_allowed

    src = recipe_source(r)
    if not r.output.bucket and not r.output.hub_repo:
        if not dry_run:
            raise UserError(f"{src}: output: {LOST_RESULTS}")
        echo(f"warning: {src}: output: {LOST_RESULTS}", err=True)
    if cloud and cloud not in r.resources.clouds:
        raise UserError(not_allowed(cloud, r.resources.clouds, src))
    result = _candidates(r, cloud, gpu)
    if result.chosen is None:
        raise UserError(f"{src}: resources.gpu: nothing fits: {result.reason or 'no candidate'}")
    registry = Registry()
    run_id = new_run_id(r.name, taken=lambda rid: registry.get(rid, history=False) is not None)
    print_plan(r, result.chosen, run_id)
    max_usd = r.resources.max_usd
    if max_usd is not None and result.chosen.total_usd > max_usd:
        raise UserError(
            f"{src}: resources.max_usd: the estimate ${result.chosen.total_usd:.2f} exceeds max_usd "
            f"${max_usd:.2f}; raise max_usd, lower data.max_samples/train.epochs, or allow cheaper clouds"
        )
    return result, registry, run_id


def _enabled_clouds(backend, clouds: list[str], dry_run: bool) -> dict[str, bool]:
    """SkyPilot's credential check; its own failure refuses a launch and is a note in a dry run."""
    try:
        return backend.enabled_clouds(clouds)
    except Exception as exc:  # noqa: BLE001 - SkyPilot's check itself failed (no API server, ...)
        if not dry_run:
            raise UserError(f"SkyPilot's credential check failed: {one_line(exc)}; run `sky check` to see why") from None
        echo(f"note: SkyPilot's credential check failed: {one_line(exc)}", err=True)
        return {c: False for c in clouds}


def _no_credentials(clouds: list[str], missing: list[str], dry_run: bool) -> None:
    """No allowed cloud has credentials: a dry run says how to set one up, a launch refuses."""
    lines = "\n".join(missing)
    if not dry_run:
        raise UserError(f"no credentials for any allowed cloud ({', '.join(clouds)}); set up one of:\n{lines}")
    echo("")
    echo(f"No credentials for any allowed cloud ({', '.join(clouds)}); to launch, set up one of:")
    echo(lines)
    echo("dry run: nothing launched.")


def _switched_cloud(r, result, chosen, run_id: str, missing: list[str]) -> None:
    """The plan's choice had no credentials: show the plan on the cloud used instead (its
    estimate judged against max_usd again) and list the clouds left out."""
    max_usd = r.resources.max_usd
    if chosen is not result.chosen:
        echo(f"note: no credentials for {result.chosen.cloud}; using {chosen.cloud} instead:")
        print_plan(r, chosen, run_id)
        if max_usd is not None and chosen.total_usd > max_usd:
            raise UserError(f"{recipe_source(r)}: resources.max_usd: on {chosen.cloud} the estimate ${chosen.total_usd:.2f} "
                            f"exceeds max_usd ${max_usd:.2f}; set up {result.chosen.cloud} credentials or raise max_usd")
    if missing:
        echo("clouds without credentials (not considered):", err=True)
        for line in missing:
            echo(line, err=True)


def _confirm_and_launch(registry, backend, r, chosen, run_id: str, fallbacks: list, detach: bool, yes: bool) -> None:
    """Confirm, write the container's recipe, record and launch; then follow it to the end
    unless --detach (a failed or budget-stopped end is reported as such)."""
    from launcher.render import container_recipe_yaml, render_task
    from launcher.runs import run_dir

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
    report_end(final)
    if final.state is RunState.FAILED or (code not in (None, 0) and final.state is not RunState.STOPPED):
        raise JobFailed(f"run {run_id} failed ({final.state}); see `sftlaunch logs {run_id}`")


def _launch_recorded(registry, backend, r, chosen, run_id: str, out: Path, task: dict,
                     fallbacks: list | tuple = ()) -> Streamer:
    """Record the run (launching), then launch it through its runner. A failed launch is
    recorded and what it left is released if proven ours; Ctrl-C leaves the recorded run going."""
    from launcher import render
    from launcher.backends.runner import Launch, runner_for
    from launcher.images import resolve_image
    from sftcore.masking import launch_secrets

    bucket = r.output.bucket
    record = registry.create(
        run_id, r, state=RunState.LAUNCHING, backend=Backend.MANAGED if chosen.spot else Backend.CLUSTER,
        cloud=chosen.cloud, region=getattr(chosen, "region", None), gpu=chosen.gpu,
        gpus_per_node=chosen.gpus_per_node, nodes=chosen.nodes, spot=chosen.spot, usd_per_hour=chosen.usd_per_hour,
        max_usd=r.resources.max_usd, eta_hours=chosen.eta_hours, total_usd=chosen.total_usd,
        image=resolve_image(r.image, cloud=chosen.cloud), bucket=r.output.bucket,
        cluster_name=None if chosen.spot else run_id,
        checkpoint_uri=contract.RunLayout.in_bucket(bucket, run_id).checkpoints + "/" if bucket else None,
        result_uri=contract.RunLayout.in_bucket(bucket, run_id).root + "/" if bucket else None,
        log_uri=contract.RunLayout.in_bucket(bucket, run_id).logs + "/" if bucket else None,
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
        reattach_hints(run_id, doing="launching")
        raise Interrupted() from None
    except Exception as exc:  # noqa: BLE001 - provisioning failed: record it, one line, exit 1
        detail = one_line(exc)
        registry.set_state(run_id, RunState.FAILED, f"launch failed: {detail}")
        _release_failed_launch(registry, backend, run_id)  # a half-provisioned cluster must not keep billing
        raise JobFailed(f"launch of {run_id} failed: {detail}") from None
    finally:
        del present
    what = "managed job" if runner.kind is Backend.MANAGED else "cluster job"
    registry.update(run_id, job_id=job_id)
    if fallbacks and runner.kind is not Backend.MANAGED:  # SkyPilot may have launched a later choice
        chosen = _record_what_runs(backend, registry, run_id, [chosen, *fallbacks])
    registry.set_state(run_id, RunState.LAUNCHING if runner.kind is Backend.MANAGED else RunState.RUNNING,
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


def _optimizer_dry_runs(backend, r, result, clouds: list[str], enabled: dict, chosen, run_id: str,
                        fallbacks: list = ()) -> None:
    """SkyPilot's optimizer over our task on every allowed cloud that has credentials. The chosen
    cloud gets the very task `up` would launch (with its fallbacks as SkyPilot's ordered list, so
    the optimizer says which of them it would start); each other cloud gets its cheapest planned
    GPU alone: what each would really provision, not only the chosen one. The launch task finding
    nothing is a refusal (exit 2); another cloud finding nothing is shown and skipped."""
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
            ordered = list(fallbacks) if cand is chosen else []
            if ordered:
                echo("    the launch task, in order: " + " → ".join(f"{c.cloud} {c.accelerators}" for c in [chosen, *ordered]))
            try:
                choice = backend.optimize(render_task(r, cand, run_id, str(mount), fallbacks=ordered))
            except Exception as exc:  # noqa: BLE001 - SkyPilot's reason, one line
                reason = one_line(exc)
                echo(f"    SkyPilot found no resources: {reason}")
                if cand is chosen:
                    failure = reason + (f" (nor for its {len(ordered)} fallback(s))" if ordered else "")
                continue
            worked.append(cloud)
            for line in choice.splitlines():
                echo(f"    {line}")
    if failure is not None:
        others = f"; it did find resources on {', '.join(worked)} (--cloud {worked[0]})" if worked else ""
        raise UserError(f"SkyPilot's optimizer found no resources for {chosen.accelerators} on {chosen.cloud}: "
                        f"{failure}{others}")


def _check_secrets(r) -> None:
    import os

    if r.output.hub_repo and not os.environ.get("HF_TOKEN"):
        raise UserError(
            f"{recipe_source(r)}: output.hub_repo: pushing to the Hub needs HF_TOKEN in your environment; "
            "export HF_TOKEN=... (a write token) or remove output.hub_repo"
        )
    if "/" in r.model.id and not Path(r.model.id).exists() and not os.environ.get("HF_TOKEN"):
        echo("note: HF_TOKEN is not set; gated models (e.g. meta-llama/*) will fail to download", err=True)
