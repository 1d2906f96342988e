"""`sftlaunch plan RECIPE`: ranked GPU offers with memory, ETA and cost; the choice marked."""

from __future__ import annotations

import json

import click

from launcher.options import (
    check_credentials_option,
    cloud_option,
    fallbacks_option,
    gpu_option,
    json_option,
    recipe_argument,
)
from sftcore.clouds import not_allowed
from sftcore.errors import UserError


def _fmt_hours(h: float) -> str:
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h"


@click.command()
@recipe_argument
@cloud_option
@gpu_option
@click.option("--spot/--no-spot", default=None, help="Override resources.spot (spot needs output.bucket).")
@click.option("--explain", is_flag=True, help="Print every memory and time term of the chosen candidate.")
@click.option("--all", "show_all", is_flag=True, help="Show every candidate, not only the 12 cheapest.")
@click.option("--refresh-prices", is_flag=True,
              help="First re-read the offers from SkyPilot's catalog (SkyPilot fetches CSVs it finds stale; "
                   "needs the cloud extra).")
@fallbacks_option
@check_credentials_option
@json_option
def plan(recipe: str, cloud: str | None, gpu: str | None, spot: bool | None, explain: bool, show_all: bool,
         refresh_prices: bool, fallbacks: int | None, check_credentials: bool, as_json: bool) -> None:
    """Estimate memory, time and cost of RECIPE on every allowed GPU offer; pick the cheapest that fits.

    The failover order printed is `launcher.failover.launch_order`, the one `render` writes and
    `up` launches. Credentials are not asked unless --check-credentials (SkyPilot's check, as
    `up --dry-run` asks it): without it the order is over every allowed cloud and the output
    names the clouds whose credentials were not checked."""
    from launcher import offers
    from launcher.estimate.candidates import plan as make_plan
    from launcher.failover import (
        considered_clouds,
        credentialed,
        launch_order,
        no_usable_cloud,
        unchecked_note,
    )
    from sftcore.recipe import load_recipe

    if refresh_prices:
        click.echo(offers.refresh(), err=True)
    # --spot/--no-spot go through the loader, so the recipe's own spot rules (a bucket, a cloud
    # that has spot) judge the flag, and their messages name it.
    key = ("resources", "spot")
    r = load_recipe(recipe, overrides=None if spot is None else {key: spot},
                    labels={key: "--spot" if spot else "--no-spot"})
    cloud = cloud.lower() if cloud else None
    if cloud and cloud not in r.resources.clouds:
        raise UserError(not_allowed(cloud, r.resources.clouds, recipe))
    result = make_plan(r, cloud=cloud, gpu=gpu)
    clouds = considered_clouds(r, cloud)
    usable = credentialed(clouds) if check_credentials and clouds and result.chosen is not None else None
    table = offers.table()
    order = launch_order(result, fallbacks or r.resources.fallbacks, r.resources.max_usd, usable)
    unchecked = unchecked_note(clouds) if usable is None and clouds and result.chosen is not None else None
    max_usd = r.resources.max_usd
    # `up` refuses when the plan's choice, or the first choice it launches, is over budget.
    over = next((c for c in (result.chosen, *order[:1]) if max_usd is not None and c is not None
                 and c.total_usd > max_usd), None)
    over_budget = over is not None
    if as_json:
        out = result.as_dict()
        out["offers_source"] = table.source
        out["offers_date"] = table.date
        out["offers_path"] = table.path
        out["offers_notes"] = list(table.notes)
        out["failover"] = [c.as_dict() for c in order]
        out["credentials_checked"] = sorted(usable) if usable is not None else None
        out["credentials_note"] = unchecked
        out["max_usd"] = r.resources.max_usd
        out["over_budget"] = over_budget
        click.echo(json.dumps(out, indent=2, default=float))
    else:
        _table(r, result, show_all, table, order, unchecked)
        if explain and order:
            _explain(order[0])
    if result.chosen is None:
        if result.reason_field == "model.id":
            raise UserError(f"{recipe}: {result.reason}")
        raise UserError(f"{recipe}: {result.reason_field}: nothing fits: {result.reason}")
    if not order:
        raise UserError(f"{recipe}: {no_usable_cloud(clouds, usable or ())}")
    if over_budget:
        raise UserError(budget_message(recipe, r, result, over, usable))


def budget_message(recipe: str, r, result, over, usable=None) -> str:
    cheaper = [c for c in result.candidates if c.fits and c.total_usd <= r.resources.max_usd
               and (usable is None or c.cloud in usable)]
    hint = (f"; within budget: {cheaper[0].cloud} {cheaper[0].accelerators} at ${cheaper[0].total_usd:.0f}"
            if cheaper else "; raise resources.max_usd, use fewer rows or epochs, or a cheaper method")
    return (f"{recipe}: resources.max_usd: the estimate ${over.total_usd:.2f} exceeds "
            f"max_usd ${r.resources.max_usd:.2f}{hint}")


def _note(c) -> str:
    if c.why_not:
        return c.why_not
    parts = []
    if c.borderline:
        parts.append(f"borderline: {c.borderline_why or 'within headroom'}")
    if c.assumed:
        parts.append("assumed to exist in your cluster")
    return "; ".join(parts)


def _price(c) -> str:
    if c.usd_per_hour_max and c.usd_per_hour_max > c.usd_per_hour * 1.005:
        return f"{c.usd_per_hour:.2f}-{c.usd_per_hour_max:.2f}"
    return f"{c.usd_per_hour:.2f}"


def _table(recipe, result, show_all: bool, table_src, order, unchecked: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 132))
    title = f"{recipe.name}: {recipe.method} {recipe.model.id}, seq {recipe.data.seq_len}"
    table = Table(title=title, title_justify="left")
    for col, justify in (("", "left"), ("cloud", "left"), ("region", "left"), ("GPU×n", "left"), ("spot", "left"),
                         ("GB/GPU train/eval/have", "right"), ("ETA", "right"), ("$/h", "right"), ("total $", "right"),
                         ("note", "left")):
        table.add_column(col, justify=justify)
    rows = result.candidates if show_all else result.candidates[:12]
    rank = {id(c): i + 1 for i, c in enumerate(order)}
    for c in rows:
        mark = "→" if order and c is order[0] else (str(rank[id(c)]) if id(c) in rank else "")
        nodes = f"{c.nodes}×" if c.nodes > 1 else ""
        ev = f"{c.eval_mem_gb:.1f}" if c.eval_mem_gb is not None else "-"
        style = None if c.fits else "dim"
        table.add_row(mark, c.cloud, c.region or "-", f"{nodes}{c.gpu}×{c.gpus_per_node}", "yes" if c.spot else "no",
                      f"{c.mem_needed_gb:.1f}/{ev}/{c.mem_available_gb:.0f}", _fmt_hours(c.eta_hours),
                      _price(c), f"{c.total_usd:.2f}", _note(c), style=style)
    console.print(table)
    where = "pinned region" if recipe.resources.regions else "region"
    console.print(f"offers: {table_src.describe()}; $/h at the cheapest {where} (a-b: cheapest-dearest {where})",
                  markup=False)
    for note in table_src.notes:
        console.print(f"note: {note}", markup=False)
    if len(result.candidates) > len(rows):
        console.print(f"({len(result.candidates) - len(rows)} more; --all shows them)")
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    if order:
        c = order[0]
        if c is not result.chosen:
            console.print(f"note: no credentials for {result.chosen.cloud} (the cheapest fit, "
                          f"{result.chosen.accelerators}); `up` launches on {c.cloud}", markup=False)
        console.print(f"plan: {c.cloud} {c.accelerators}{' ×' + str(c.nodes) + ' nodes' if c.nodes > 1 else ''}"
                      f"{' spot' if c.spot else ''}, ~{_fmt_hours(c.eta_hours)}, ~${c.total_usd:.0f}"
                      + (f" (borderline fit: {c.borderline_why})" if c.borderline else ""), markup=False)
        if len(order) > 1 or recipe.resources.fallbacks > 1:
            console.print("failover order (no capacity on one → the next; each within max_usd): "
                          + " → ".join(f"{x.cloud} {x.accelerators} ${x.total_usd:.0f}" for x in order), markup=False)
        if unchecked:
            console.print(f"note: {unchecked}", markup=False)
    elif result.chosen is not None:
        console.print("nothing to launch: no credentials for a cloud with a fitting offer", markup=False)
    elif result.reason_field == "model.id":
        console.print(f"cannot plan: {result.reason}", markup=False)
    else:
        console.print(f"nothing fits: {result.reason}", markup=False)


def _memory_lines(title: str, m, have: float) -> list[str]:
    from launcher.estimate.candidates import fit_verdict

    fit = fit_verdict(m, have)
    verdict = f"borderline: {fit.why}" if fit.borderline else fit.why
    return [
        title,
        f"  weights                 {m.weights:8.2f} GB",
        f"  grads + optimizer       {m.trainable:8.2f} GB" + (f"  ({m.pageable:.2f} GB pageable to CPU)" if m.pageable else ""),
        f"  activations             {m.activations:8.2f} GB",
        f"  logits (+ fp32, grad)   {m.logits:8.2f} GB",
        f"  CUDA context/workspace  {m.fixed:8.2f} GB",
        f"  total                   {m.total:8.2f} GB  ({verdict})",
    ] + [f"  note: {n}" for n in m.notes]


def _explain(c) -> None:
    m, t = c.memory, c.timing
    lines = _memory_lines(f"training memory per GPU on {c.gpu} ({c.mem_available_gb:.0f} GB):", m, c.mem_available_gb)
    if c.checkpointing_why:
        lines.append(f"gradient checkpointing: {'on' if c.gradient_checkpointing else 'off'} "
                     f"({c.checkpointing_why})")
    if c.eval_memory is not None:
        lines += _memory_lines(f"post-training eval memory per GPU (one replica per GPU, {c.gpus_per_node} on the "
                               f"head node):", c.eval_memory, c.mem_available_gb)
    else:
        lines.append("post-training eval: none (eval: null)")
    lines += [
        f"time on {c.gpus}×{c.gpu}:",
        f"  rows                    {t.terms.get('rows', 0):12,.0f}",
        f"  tokens                  {t.tokens:12,.0f}",
        f"  FLOPs per token         {t.terms.get('flops_per_token', 0):12.3e}"
        + ("  (with the recompute of gradient checkpointing)" if t.terms.get("gradient_checkpointing") else ""),
        f"  FLOPs                   {t.flops:12.3e}",
        f"  peak × MFU              {t.terms.get('peak_tflops', 0):.3g} TFLOP/s × {t.terms.get('mfu', 0):.2f}"
        + (f"  (measured on {t.terms['mfu_measured_runs']:.0f} of your runs; published {t.terms['mfu_published']:.2f})"
           if "mfu_measured_runs" in t.terms else "  (published)"),
        f"  training                {t.train_hours:8.2f} h",
        f"  provisioning            {t.terms['provision_hours']:8.2f} h",
        f"  image pull              {t.terms['image_pull_hours']:8.2f} h",
        f"  weights download        {t.terms['weights_download_hours']:8.2f} h",
        f"  checkpoints             {t.terms.get('checkpoint_hours', 0):8.2f} h ({t.terms.get('checkpoints', 0):.0f} saves)",
        f"  eval                    {t.eval_hours:8.2f} h" + (f"  ({t.eval_what})" if t.eval_what else ""),
        f"  total                   {t.total_hours:8.2f} h × ${c.usd_per_hour:.2f}/h = ${c.total_usd:.2f}",
    ]
    click.echo("\n".join(lines))
