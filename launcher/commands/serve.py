"""`sftlaunch serve RUN|MODEL` and `sftlaunch serve status|logs|down NAME`.

Why one command with sub-verbs as its first argument: `serve RUN` is the common case and reads
like `eval RUN`; `status`, `logs` and `down` cannot be run ids (those start with `sftl-`) or Hub
ids (those have a slash), so the first word is never ambiguous.

Cloud: a SkyServe service running vLLM's OpenAI server (launcher.serve_render) on the cheapest
GPU that holds the weights plus the KV cache, scaling to zero replicas when idle; the plan shows
$/h and $ per 1M output tokens at a stated load (launcher.serve_cost). `--local`: transformers
serve on this machine (jobs.serve_local) in a child process, so torch loads there and a crash is
a failed job (exit 1), not a traceback here.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys

import click

from launcher.options import GpuType, dry_run_option, json_option, yes_option
from sftcore.errors import JobFailed, UserError

VERBS = ("status", "logs", "down")
DEFAULT_CLOUDS = ("runpod", "lambda", "gcp")


@click.command("serve")
@click.argument("target", metavar="RUN|MODEL|status|logs|down")
@click.argument("name", required=False, metavar="[NAME]")
@click.option("--local", is_flag=True, help="Serve on this machine (CPU is fine) with transformers serve.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="--local: the loopback port.")
@click.option("--prompt-log", type=click.Path(dir_okay=False), default=None,
              help="--local: append each chat request's prompt token ids to this JSONL file.")
@click.option("--cloud", "clouds", multiple=True, type=click.Choice(DEFAULT_CLOUDS + ("kubernetes",)),
              help="Only these clouds (default: the run's recipe's, else RunPod, Lambda, GCP).")
@click.option("--gpu", type=GpuType(), default=None, metavar="GPU[:N]",
              help="Only this GPU, N per replica (default: the cheapest that fits).")
@click.option("--max-model-len", type=click.IntRange(128), default=None,
              help="Longest prompt + reply in tokens (default: 4096, at least the run's seq_len).")
@click.option("--max-replicas", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--idle-minutes", type=click.IntRange(1), default=15, show_default=True,
              help="Scale to zero replicas after this long without requests.")
@click.option("--follow", is_flag=True, help="logs: keep streaming.")
@click.option("--replica", type=click.IntRange(1), default=1, show_default=True, help="logs: which replica.")
@click.option("--controller", is_flag=True, help="logs: the SkyServe controller's log instead of a replica's.")
@dry_run_option
@yes_option
@json_option
def serve(target, name, local, port, prompt_log, clouds, gpu, max_model_len, max_replicas, idle_minutes, follow,
          replica, controller, dry_run, yes, as_json):
    """Serve RUN's model (or MODEL, a Hub id) behind an OpenAI-compatible API; or show the
    status, logs of, or take down a service sftlaunch started."""
    if target in VERBS:
        if target != "status" and not name:
            raise UserError(f"`sftlaunch serve {target}` needs the service NAME (see `sftlaunch serve status`)")
        if target == "status":
            return _status(name, as_json)
        if target == "logs":
            return _logs(name, follow, "controller" if controller else "replica", None if controller else replica)
        return _down(name, dry_run, yes)
    if name:
        raise UserError(f"unexpected argument {name!r}; `sftlaunch serve RUN|MODEL [options]`")
    from launcher.commands.eval import find_run

    record = find_run(target)
    if local:
        return _local(record, target, port, prompt_log, dry_run)
    return _cloud(record, target, list(clouds), gpu, max_model_len, max_replicas, idle_minutes, dry_run, yes, as_json)


def _local(record, target: str, port: int, prompt_log: str | None, dry_run: bool) -> None:
    """transformers serve on 127.0.0.1:port in a child process, in the foreground until Ctrl-C."""
    from launcher.home import sftlaunch_home

    if record is not None:
        from launcher.commands.eval import run_model_dir

        model, slug = str(run_model_dir(record)), record.run_id
    else:
        model, slug = target, re.sub(r"[^A-Za-z0-9_.-]+", "_", target.strip("/"))[-60:]
    cmd = [sys.executable, "-m", "jobs.serve_local", "--model", model, "--port", str(port),
           "--work", str(sftlaunch_home() / "serve" / slug)]
    if prompt_log:
        cmd += ["--prompt-log", prompt_log]
    if dry_run:
        click.echo(" ".join(cmd))
        return
    click.echo(f"OpenAI-compatible endpoint: http://127.0.0.1:{port}/v1 (Ctrl-C stops it)", err=True)
    proc = subprocess.Popen(cmd)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=30)
        raise
    if code == 2:
        raise UserError(f"the local server refused its input ({target}); see its message above")
    if code not in (0, -15):
        raise JobFailed(f"the local server exited with {code}")


def _plan(record, target, clouds, gpu, max_model_len):
    """(source, choices, memory, cost, max_model_len): what to serve and on what."""
    from launcher import catalog
    from launcher.serve_cost import CONCURRENCY, CONTEXT_TOKENS, serve_cost
    from launcher.serve_render import serve_choices, serve_memory, source_from_model, source_from_run

    source = source_from_run(record) if record is not None else source_from_model(target)
    recipe = (record.recipe if record is not None else None) or {}
    if not clouds:
        allowed = [c for c in ((recipe.get("resources") or {}).get("clouds") or []) if c != "local"]
        clouds = allowed or list(DEFAULT_CLOUDS)
    seq = int((recipe.get("data") or {}).get("seq_len") or 0)
    max_model_len = max_model_len or max(4096, seq)
    try:
        shape = catalog.model_shape(source.shape_of, source.revision)
    except (catalog.HubConfigError, catalog.HubUnreachable) as exc:
        raise UserError(f"{source.shape_of}: cannot size the model ({exc}); add its shape to "
                        "launcher/data/models.yaml") from None
    if shape is None:
        raise UserError(f"{source.shape_of}: not a Hub model id the planner can size")
    # The KV cache holds the stated load (its sequences at their mean context), and at least one
    # sequence of max_model_len (vLLM refuses to start otherwise).
    mem = serve_memory(shape, max(max_model_len, CONCURRENCY * CONTEXT_TOKENS), source.lora_rank)
    name, _, count = (gpu or "").partition(":")
    choices, notes = serve_choices(mem, clouds, name or None, int(count) if count else None)
    if not choices:
        raise UserError("; ".join(notes) + "; lower --max-model-len or allow more clouds/GPUs")
    first = choices[0]
    cost = serve_cost(first.gpu, first.count, first.usd_per_hour, mem.weights_gb, mem.kv_bytes_per_token)
    return source, choices, mem, cost, max_model_len


def _cloud(record, target, clouds, gpu, max_model_len, max_replicas, idle_minutes, dry_run, yes, as_json) -> None:
    from launcher.render import to_yaml
    from launcher.serve_render import render_service, service_name

    source, choices, mem, cost, max_model_len = _plan(record, target, clouds, gpu, max_model_len)
    name = service_name(source, secrets.token_hex(2))
    task = render_service(source, choices, name, max_model_len, max_replicas=max_replicas, idle_minutes=idle_minutes)
    first = choices[0]
    plan = {"service": name, "model": source.base, "adapter": source.adapter, "cloud": first.cloud,
            "accelerators": first.accelerators, "mem_needed_gb_per_gpu": round(first.mem_needed_gb, 2),
            "mem_available_gb": first.mem_available_gb, "weights_gb": round(mem.weights_gb, 2),
            "kv_cache_gb": round(mem.kv_gb, 2), "max_model_len": max_model_len, **cost.as_dict(),
            "scale_to_zero_after_minutes": idle_minutes, "max_replicas": max_replicas, "notes": source.notes}
    if as_json and dry_run:
        click.echo(json.dumps({"plan": plan, "task": task}, indent=2, sort_keys=True))
        return
    for line in _plan_lines(plan):
        click.echo(line, err=True)
    if dry_run:
        click.echo(to_yaml(task))
        return
    if not yes:
        if not sys.stdin or not sys.stdin.isatty():
            raise UserError("no terminal to confirm on; rerun with --yes to start the service")
        if not click.confirm(f"Start service {name}?", default=False):
            raise click.Abort()
    _launch(task, name, record, source, first, plan)


def _plan_lines(plan: dict) -> list[str]:
    what = f"{plan['model']} + adapter {plan['adapter']}" if plan["adapter"] else plan["model"]
    return [
        f"service {plan['service']}: vLLM serving {what}",
        f"  GPU: {plan['cloud']} {plan['accelerators']} · needs {plan['mem_needed_gb_per_gpu']:.1f} GB/GPU "
        f"(weights {plan['weights_gb']:.1f} GB + KV cache {plan['kv_cache_gb']:.1f} GB for the load below; "
        f"max_model_len {plan['max_model_len']}) of {plan['mem_available_gb']:.0f} GB",
        f"  cost: ${plan['usd_per_hour']:.2f}/h per replica while up · ${plan['usd_per_1m_output_tokens']:.2f} per 1M "
        f"output tokens at {plan['load']} (~{plan['output_tokens_per_s']:.0f} tokens/s; {plan['assumption']})",
        f"  scales to zero replicas after {plan['scale_to_zero_after_minutes']} idle minutes, up to "
        f"{plan['max_replicas']} replicas; the SkyServe controller VM stays up until `sftlaunch serve down`",
        *[f"  note: {n}" for n in plan["notes"]],
    ]


def _reach(call, consequence: str):
    """`call()`, with SkyPilot unreachable (no API server, ...) as one line and exit 2."""
    from sftcore.errors import one_line

    try:
        return call()
    except (UserError, click.exceptions.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - said in one line, never a traceback
        raise UserError(f"cannot reach SkyPilot ({one_line(exc, with_type=True)})"
                        + (f"; {consequence}" if consequence else "")
                        + ". Start or reach its API server (`sky api info`) and retry") from None


def _launch(task, name, record, source, first, plan) -> None:
    from launcher import services
    from launcher.backends.serve import get_serve_backend
    from sftcore.errors import one_line
    from sftcore.masking import launch_secrets

    backend = get_serve_backend()
    try:
        user, running = backend.current_user(), [s for s in backend.status([name]) if s.name == name]
    except Exception as exc:  # noqa: BLE001 - API server unreachable, ...: say so, start nothing
        raise UserError(f"cannot reach SkyPilot ({one_line(exc, with_type=True)}); nothing was started. "
                        "Start or reach its API server (`sky api info`) and retry") from None
    if running:
        raise UserError(f"service {name} is already up ({running[0].status}); `sftlaunch serve status {name}`, "
                        f"or `sftlaunch serve down {name}` first")
    present, _ = launch_secrets(list((task.get("secrets") or {}).keys()))
    # Recorded before launching, so a half-started service can still be proven ours and downed.
    services.record(name, record.run_id if record else None, source.base, first.cloud, first.accelerators,
                    first.usd_per_hour, user, plan)
    endpoint = backend.up(task, name, secrets=present, on_line=lambda line: click.echo(line, err=True))
    click.echo(f"service {name}: http://{endpoint}/v1" if endpoint else f"service {name} started")
    model = source.name
    click.echo(f"  openai.OpenAI(base_url='http://{endpoint or '<endpoint>'}/v1', api_key='-') · model={model!r}")


def _status(name, as_json) -> None:
    from launcher import services
    from launcher.backends.serve import get_serve_backend

    ours = {r["name"]: r for r in services.all_records() if not r["downed_at"]}
    if name:
        ours = {k: v for k, v in ours.items() if k == name}
    live = _reach(lambda: {s.name: s for s in get_serve_backend().status(sorted(ours))}, "") if ours else {}
    rows = []
    for n, rec in ours.items():
        s = live.get(n)
        rows.append({"name": n, "status": s.status if s else "gone", "endpoint": s.endpoint if s else None,
                     "replicas": f"{s.ready_replicas}/{s.replicas}" if s else "0/0", "gpu": rec["accelerators"],
                     "cloud": rec["cloud"], "usd_per_hour_per_replica": rec["usd_per_hour"], "model": rec["model"]})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no services started by sftlaunch" + (f" named {name}" if name else ""))
        return
    for r in rows:
        click.echo(f"{r['name']}  {r['status']}  replicas {r['replicas']}  {r['cloud']} {r['gpu']} "
                   f"${r['usd_per_hour_per_replica']:.2f}/h  {r['endpoint'] or '-'}  {r['model']}")


def _logs(name, follow, component, replica) -> None:
    from launcher import services
    from launcher.backends.serve import get_serve_backend

    if services.get(name) is None:
        raise UserError(f"service {name}: not started by `sftlaunch serve` here; `sftlaunch serve status` lists them")
    _reach(lambda: get_serve_backend().tail_logs(name, component, replica, follow, lambda line: click.echo(line)), "")


def _down(name, dry_run, yes) -> None:
    from launcher import services
    from launcher.backends.ownership import service_refusal
    from launcher.backends.serve import get_serve_backend

    rec = services.get(name)
    backend = get_serve_backend()
    if dry_run:
        live = _reach(lambda: next((s for s in backend.status([name]) if s.name == name), None), "nothing changed")
        refusal = service_refusal(live, rec is not None, backend.current_user()) if live else None
        click.echo(f"would not touch: {refusal}" if refusal else
                   (f"would take down service {name}" if live else f"no service {name} is running"))
        return
    if not yes:
        if not sys.stdin or not sys.stdin.isatty():
            raise UserError("no terminal to confirm on; rerun with --yes to take the service down")
        if not click.confirm(f"Take down service {name} (its replicas and endpoint)?", default=False):
            raise click.Abort()
    downed, refusal = _reach(lambda: services.take_down(backend, name, rec is not None), "nothing was taken down")
    if refusal:
        raise UserError(f"not touched: {refusal}")
    click.echo(f"service {name} taken down" if downed else f"no service {name} is running (nothing to do)")
