"""Candidates (one offer, its memory, time and cost) and the plan: the cheapest that fits.

Also `fit_verdict`, the one rule for "fits", "borderline" and "does not fit" (headroom, paged
optimizer spill, the post-training eval on the same GPU). What the planner refuses, and why
nothing fits, is worded in refusals.py. It imports neither torch nor sky.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from launcher import catalog
from launcher.estimate.memory import Memory, UnknownModel, _shape, eval_memory, memory
from launcher.estimate.plan_data import Candidate, Plan
from launcher.estimate.refusals import (
    eval_fix,
    field_where,
    kubernetes_empty_note,
    nothing_fits,
    refuse_unknown_regions,
    refuse_unsold,
    refuse_unsupported,
    sold_elsewhere,
)
from launcher.estimate.timing import timing
from launcher.failover import best_fit
from sftcore.clouds import CLOUDS
from sftcore.errors import UserError
from sftcore.recipe import GPU_RE, MAX_GPUS_PER_NODE, Recipe


def requested_gpu(recipe: Recipe, gpu: str | None = None, workload: str = "train") -> tuple[str | None, int | None]:
    """(name, count) asked for by --gpu or resources.gpu, checked against the GPU catalog;
    (None, None) for auto. An unknown name is bad input (exit 2), not "nothing fits"."""
    if gpu is not None:
        text, where = gpu, lambda: "--gpu"
    elif workload == "train":
        text, where = recipe.resources.gpu, lambda: field_where(recipe, "resources", "gpu")
    else:
        return None, None
    if text == "auto":
        return None, None
    m = GPU_RE.match(text)
    if not m:
        raise UserError(f'{where()}: {text!r}: expected NAME[:COUNT], e.g. "H100:1" or "A100-80GB:8", or auto')
    name = catalog.canonical_gpu(m.group("name"))
    if name is None and recipe.resources.clouds == ["local"] and m.group("name").upper() == "CPU":
        name = "CPU"
    if name is None:
        raise UserError(f"{where()}: {catalog.unknown_gpu_message(m.group('name'))}")
    count = int(m.group("count")) if m.group("count") else None
    if count is not None and count > MAX_GPUS_PER_NODE:
        raise UserError(f"{where()}: {text!r}: at most {MAX_GPUS_PER_NODE} GPUs per node are sold; "
                        "use resources.nodes for more")
    return name, count


class Fit(NamedTuple):
    fits: bool
    borderline: bool
    why: str  # how it fits, why it is borderline, or why it does not fit
    eval_tight: bool = False  # the post-training eval is what does not fit, or what is borderline


def fit_verdict(mem: Memory, avail: float, ev_mem: Memory | None = None) -> Fit:
    """Whether `mem` fits a GPU of `avail` GB, the one rule the planner and `plan --explain` use.

    Under the headroom it fits; within it, it is borderline (the estimate is not precise enough
    to promise); above the GPU it fits only if a paged optimizer may spill its states to CPU
    (borderline too). With `ev_mem`, the post-training eval on the same GPU must fit as well.
    """
    headroom = catalog.workloads()["headroom"]
    limit = avail * (1 - headroom)
    need = mem.total
    if need <= limit:
        fit = Fit(True, False, f"fits {avail:.0f} GB with more than the {headroom:.0%} headroom")
    elif need <= avail:
        fit = Fit(True, True, f"{need:.1f} GB is within the {headroom:.0%} headroom of {avail:.0f} GB")
    elif mem.pageable and need - mem.pageable <= avail:
        fit = Fit(True, True, f"fits {avail:.0f} GB only if the paged optimizer spills {mem.pageable:.2f} GB "
                              "of its states to CPU memory")
    else:
        fit = Fit(False, False, f"needs {need:.1f} GB per GPU, has {avail:.0f} GB")
    if not fit.fits or ev_mem is None:
        return fit
    ev = ev_mem.total
    if ev > avail:
        return Fit(False, False, f"eval needs {ev:.1f} GB per GPU, has {avail:.0f} GB", eval_tight=True)
    if ev > limit:
        ev_why = f"eval's {ev:.1f} GB is within the {headroom:.0%} headroom"
        return Fit(True, True, f"{fit.why}; {ev_why}" if fit.borderline else ev_why, eval_tight=True)
    return fit


def _with_eval_fix(fit: Fit, recipe: Recipe, shape: dict[str, Any]) -> str:
    return f"{fit.why}; {eval_fix(recipe, shape)}" if fit.eval_tight else fit.why


def _cloud_offers(cloud: str, name: str | None, count: int | None, workload: str, notes: list[str]) -> list[catalog.Offer]:
    """The cloud's offers matching the request. Kubernetes offers what the user declared; an
    explicit GPU there is assumed to exist (the planner cannot see the cluster) and said so."""
    offers = catalog.offers(cloud)
    if cloud == "kubernetes":
        _, source = catalog.kubernetes_inventory()
        if name and not any(o.gpu == name and (count is None or o.count == count) for o in offers):
            o = catalog.kubernetes_assumed_offer(name, count or 1)
            where = f"not declared in {source}" if source else "no inventory declared"
            notes.append(f"kubernetes: assuming your cluster has {o.count}×{o.gpu} at ${o.on_demand:.2f}/GPU-hour "
                         f"({where}); {catalog.kubernetes_help(suggest_explicit_gpu=False)}")
            return [o]
        if not name and not offers:
            notes.append(kubernetes_empty_note())
    out = []
    for offer in offers:
        if name and offer.gpu.lower() != name.lower():
            continue
        if count and offer.count != count:
            continue
        if workload == "eval" and count is None and offer.count > 1:
            continue
        why = None if offer.assumed or cloud == "kubernetes" else catalog.unusable_reason(offer)
        if why:
            note = f"{cloud}: not offered: {why}"
            if note not in notes:
                notes.append(note)
            continue
        out.append(offer)
    return out


def choose_checkpointing(recipe: Recipe, gpus: int, avail: float, workload: str, shape: dict[str, Any],
                         ev_mem: Memory | None = None) -> tuple[bool, Memory, str]:
    """(checkpointing on, training memory with that choice, why) for one GPU offer.

    `auto` turns it off where the activations of every layer fit the GPU with the headroom to
    spare (no recompute: a quarter to a third fewer FLOPs per token) and on otherwise; true/false
    in the recipe are kept as they are."""
    gc = recipe.train.gradient_checkpointing
    if workload != "train":
        return False, memory(recipe, gpus=gpus, workload=workload, shape=shape), ""
    if gc != "auto":
        return bool(gc), memory(recipe, gpus=gpus, workload=workload, shape=shape, gradient_checkpointing=bool(gc)), \
            f"train.gradient_checkpointing: {str(bool(gc)).lower()} in the recipe"
    off = memory(recipe, gpus=gpus, workload=workload, shape=shape, gradient_checkpointing=False)
    fit = fit_verdict(off, avail, ev_mem)
    if fit.fits and not fit.borderline:
        return False, off, f"auto: off, all activations fit ({off.total:.1f} GB of {avail:.0f} GB)"
    on = memory(recipe, gpus=gpus, workload=workload, shape=shape, gradient_checkpointing=True)
    return True, on, f"auto: on, without it training needs {off.total:.1f} GB of {avail:.0f} GB"


def _candidate(recipe: Recipe, offer: catalog.Offer, nodes: int, spot: bool, workload: str,
               ev_mem: Memory | None, shape: dict[str, Any]) -> Candidate | None:
    per_gpu = offer.spot if spot else offer.on_demand
    if per_gpu is None:
        return None
    gpus = offer.count * nodes
    avail = catalog.gpu_memory_gb(offer.gpu, offer)
    gc, mem, gc_why = choose_checkpointing(recipe, gpus, avail, workload, shape, ev_mem)
    fit = fit_verdict(mem, avail, ev_mem)
    fits, borderline, why = fit.fits, fit.borderline, _with_eval_fix(fit, recipe, shape)
    blocked_by_eval = fit.eval_tight and not fits
    if not catalog.has_bf16(offer.gpu) and recipe.train.precision == "bf16" and workload == "train":
        fits, borderline, blocked_by_eval = False, False, False
        why = f"{offer.gpu} has no bf16; use precision: fp16 (and quantization.compute_dtype: float16)"
    t = timing(recipe, offer.cloud, offer.gpu, gpus, workload, gpus_per_node=offer.count, shape=shape,
               gradient_checkpointing=gc)
    usd_h = per_gpu * gpus
    usd_h_max = (offer.price_max(bool(spot)) or per_gpu) * gpus
    by_region = {r: p * gpus for r, p in offer.prices_by_region(bool(spot)).items()}
    return Candidate(offer.cloud, offer.region_for(bool(spot)), offer.gpu, offer.count, nodes, bool(spot), usd_h, mem.total, avail, fits,
                     borderline, t.total_hours, usd_h * t.total_hours, mem, t, None if fits else why, ev_mem,
                     why if borderline else None, offer.assumed, blocked_by_eval, usd_h_max, offer.regions,
                     by_region, gc, gc_why)


def plan(recipe: Recipe, cloud: str | None = None, gpu: str | None = None, spot: bool | None = None,
         workload: str = "train") -> Plan:
    """Every offer on the allowed clouds, ranked cheapest first; the cheapest that fits is chosen.

    Raises UserError for bad input the plan cannot work around: an unknown GPU name, or spot /
    multi-node asked by a flag (--cloud, `spot`) of clouds that cannot do it. This is where
    plan, render and up resolve the clouds a run may go to; `launcher.failover.launch_order`
    then orders the candidates.
    """
    clouds = [c for c in recipe.resources.clouds if c in CLOUDS]
    if cloud:
        clouds = [c for c in clouds if c == cloud]
    spot_flag = spot is True and not recipe.resources.spot
    spot = recipe.resources.spot if spot is None else spot
    nodes = recipe.resources.nodes if workload == "train" else 1
    want_name, want_count = requested_gpu(recipe, gpu, workload)
    local = recipe.resources.clouds == ["local"]
    if not local and (cloud or spot_flag):  # the recipe's own clouds passed validation's check
        refuse_unsupported(recipe, clouds, spot, nodes, cloud, spot_flag)
    if not local:
        refuse_unsold(recipe, clouds, want_name, want_count, gpu is not None)
    try:
        shape = _shape(recipe)
    except UnknownModel as exc:
        return Plan([], None, str(exc), recipe.model.id, workload, reason_field="model.id")

    notes: list[str] = []
    ev_mem = eval_memory(recipe, shape=shape) if workload == "train" and recipe.eval is not None else None
    cands: list[Candidate] = []
    if local:
        cands.append(_local_candidate(recipe, want_name, want_count, workload, ev_mem, shape))
    regions = list(recipe.resources.regions or []) if not local else []
    if regions:
        refuse_unknown_regions(recipe, clouds, regions)
    elsewhere: list[Candidate] = []  # fitting offers sold only outside the pinned regions
    for c in clouds:
        for offer in _cloud_offers(c, want_name, want_count, workload, notes):
            pinned = offer.in_regions(regions) if regions else offer
            cand = _candidate(recipe, pinned or offer, nodes, spot, workload, ev_mem, shape)
            if cand is not None:
                (cands if pinned is not None else elsewhere).append(cand)
    notes += _measured_notes(recipe, cands)
    cands.sort(key=lambda x: (not x.fits, x.total_usd, x.eta_hours))
    chosen = best_fit([x for x in cands if x.fits])
    reason = None
    if chosen is None and regions and any(x.fits for x in elsewhere):
        reason = sold_elsewhere(regions, elsewhere)
        return Plan(cands, None, reason, recipe.model.id, workload, notes, reason_field="resources.regions")
    if chosen is None:
        no_k8s_inventory = "kubernetes" in clouds and not want_name and not catalog.offers("kubernetes")
        reason = nothing_fits(recipe, cands, clouds, spot, want_name, want_count, shape, no_k8s_inventory)
    return Plan(cands, chosen, reason, recipe.model.id, workload, notes)


def _measured_notes(recipe: Recipe, cands: list[Candidate]) -> list[str]:
    """Say where the plan's speed comes from the user's own measured runs, not published figures."""
    seen: dict[str, str] = {}
    for c in cands:
        t = c.timing.terms if c.timing else {}
        if "mfu_measured_runs" in t and c.gpu not in seen:
            n = int(t["mfu_measured_runs"])
            seen[c.gpu] = (f"{c.gpu}: MFU {t['mfu']:.2f} measured on {n} of your {recipe.method} run{'s' if n > 1 else ''} "
                           f"(~{t['params_b']:.1f}B; calibration probe) instead of the published {t['mfu_published']:.2f}")
    return list(seen.values())


def _local_candidate(recipe: Recipe, gpu: str | None, count: int | None, workload: str,
                     ev_mem: Memory | None, shape: dict[str, Any]) -> Candidate:
    """`up --local`: the recipe's named GPU (e.g. a Colab T4) or, with none named, the CPU."""
    name = gpu if gpu and gpu in catalog.gpus() else "CPU"
    n = count or 1
    avail = catalog.gpu_memory_gb(name)
    gc, mem, gc_why = choose_checkpointing(recipe, n, avail, workload, shape, ev_mem)
    fit = fit_verdict(mem, avail, ev_mem)
    why = _with_eval_fix(fit, recipe, shape)
    t = timing(recipe, "local", name, n, workload, shape=shape, gradient_checkpointing=gc)
    return Candidate("local", None, name, n, 1, False, 0.0, mem.total, avail, fit.fits, fit.borderline, t.total_hours,
                     0.0, mem, t, None if fit.fits else why, ev_mem, why if fit.borderline else None,
                     blocked_by_eval=fit.eval_tight and not fit.fits, gradient_checkpointing=gc, checkpointing_why=gc_why)


