"""The planner's refusals: bad input it cannot plan around (an unknown region, a GPU nobody
sells, spot or multi-node on clouds that cannot do it) and why nothing fits, each one line naming
the recipe field (file:line) and the fix.

Why apart from candidates.py: what is wrong with a request is worded here, once; candidates.py
builds and ranks what can be planned. It imports neither torch nor sky.
"""

from __future__ import annotations

from typing import Any

from launcher import catalog
from launcher import offers as offers_mod
from launcher.estimate.memory import GB, eval_memory, memory
from launcher.estimate.plan_data import Candidate
from sftcore.clouds import CLOUDS, Feature, able_clouds, asked_features, check_features
from sftcore.errors import UserError
from sftcore.recipe import Recipe

CLOUD_LABELS = {"lambda": "Lambda", "runpod": "RunPod", "gcp": "GCP", "kubernetes": "Kubernetes"}


def field_where(recipe: Recipe, *path: str) -> str:
    """`file:line: a.b` (or `--flag: a.b` where a flag set it) for a recipe field, so an error
    points where to edit."""
    where, name = recipe.where(*path), ".".join(path)
    return f"{where}: {name}" if where else name


def _counts(counts: list[int]) -> str:
    return "/".join(str(c) for c in counts) + "x"


def refuse_unsold(recipe: Recipe, clouds: list[str], name: str | None, count: int | None, gpu_flag: bool) -> None:
    """Refuse a GPU name or count that no considered cloud sells, quoting what each does sell,
    with a did-you-mean for near misses (H200 → H200-SXM on RunPod). Kubernetes is the user's
    own cluster: it may have anything, so it never refuses."""
    if name is None or not clouds or "kubernetes" in clouds or clouds == ["local"]:
        return
    why = []
    for c in (c for c in clouds if c in offers_mod.CATALOG_CLOUDS):
        sold: dict[str, set[int]] = {}
        for o in catalog.offers(c):
            sold.setdefault(o.gpu, set()).add(o.count)
        label = CLOUD_LABELS.get(c, c)
        if name not in sold:
            guess = catalog.did_you_mean(name, sorted(sold))
            hint = f"did you mean {guess}? " if guess else ""
            why.append(f"{label} does not sell {name}; {hint}it sells {', '.join(sorted(sold)) or 'nothing here'}")
        elif count is not None and count not in sold[name]:
            counts = sorted(sold[name])
            why.append(f"{label} sells {name} only as {_counts(counts)}; use --gpu {name}:{counts[-1]} or another cloud")
        else:
            return  # at least one cloud sells it
    if why:
        where = "--gpu" if gpu_flag else field_where(recipe, "resources", "gpu")
        raise UserError(f"{where}: " + "; ".join(why))


def refuse_unsupported(recipe: Recipe, clouds: list[str], spot: bool, nodes: int, cloud_flag: str | None = None,
                       spot_flag: bool = False) -> None:
    """Refuse spot or multi-node when none of the clouds considered can do it, quoting SkyPilot's
    reason (sftcore/clouds.py) and naming a cloud that can; planning would only say "no offer".

    Recipe validation already made this check over resources.clouds; `plan` asks it again only
    when a flag changed what validation saw (--cloud narrowing the clouds, a spot override)."""
    allowed = [c for c in recipe.resources.clouds if c in CLOUDS]
    for feature, reasons in check_features(asked_features(spot, nodes), clouds).items():
        in_recipe = [c for c in able_clouds(feature, allowed) if c not in clouds]
        elsewhere = [c for c in able_clouds(feature) if c not in allowed]
        if feature is Feature.SPOT:
            flag = "--spot" if spot_flag else recipe.override_label("resources", "spot")
            where = "--spot" if spot_flag else field_where(recipe, "resources", "spot")
            fix = f"drop {flag}" if flag else "remove `spot: true`"
        else:
            where, fix = field_where(recipe, "resources", "nodes"), "set nodes: 1"
        if cloud_flag and in_recipe:
            fix += f" or use --cloud {in_recipe[0]}"
        elif elsewhere:
            fix += f" or allow {elsewhere[0]} in resources.clouds"
        prefix = f"--cloud {cloud_flag}: " if cloud_flag else ""
        raise UserError(f"{prefix}{where}: {reasons}; {fix}")


def eval_fix(recipe: Recipe, shape: dict[str, Any] | None = None) -> str:
    if recipe.eval is not None and not recipe.eval.load_4bit:
        return f"set eval.load_4bit: true (≈{eval_memory(recipe, load_4bit=True, shape=shape).total:.0f} GB) or eval: null"
    return "set eval: null (skip it) or use a larger GPU"


def kubernetes_empty_note() -> str:
    return "kubernetes offers nothing for gpu: auto: no GPU inventory declared; " + catalog.kubernetes_help()


def _list(items: list[str], limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def refuse_unknown_regions(recipe: Recipe, clouds: list[str], regions: list[str]) -> None:
    """A pinned region none of the considered clouds sells anything in is bad input (exit 2):
    SkyPilot would reject the rendered task, or never find capacity. Names the regions each
    cloud does sell. Kubernetes regions are the user's contexts: not checked."""
    catalog_clouds = [c for c in clouds if c in offers_mod.CATALOG_CLOUDS]
    if not catalog_clouds or len(catalog_clouds) < len([c for c in clouds if c != "local"]):
        return
    sold = {c: sorted({r for o in catalog.offers(c) for r in o.region_prices}) for c in catalog_clouds}
    unknown = [r for r in regions if not any(r in have for have in sold.values())]
    if unknown:
        where = "; ".join(f"{CLOUD_LABELS.get(c, c)} sells GPUs in {_list(have) or 'no region'}" for c, have in sold.items())
        who = " or ".join(CLOUD_LABELS.get(c, c) for c in catalog_clouds)
        raise UserError(f"{field_where(recipe, 'resources', 'regions')}: {', '.join(unknown)}: {who} sells no GPU there; "
                        f"{where}; fix the region or set regions: null")


def sold_elsewhere(regions: list[str], elsewhere: list[Candidate]) -> str:
    """Why a region-pinned plan has no choice: what fits and where it is sold instead."""
    fits = sorted((x for x in elsewhere if x.fits), key=lambda x: x.total_usd)
    where = "; ".join(f"{x.cloud} {x.accelerators} in {_list(sorted(x.region_usd_per_hour)) or 'any region'} "
                      f"(~${x.total_usd:.0f})" for x in fits[:3])
    return (f"nothing that fits is sold in {', '.join(regions)}; what fits is sold in: {where}; "
            "add one of those regions to resources.regions or set regions: null")


def nothing_fits(recipe: Recipe, cands: list[Candidate], clouds: list[str], spot: bool, want_name: str | None,
                  want_count: int | None, shape: dict[str, Any], no_k8s_inventory: bool) -> str:
    if recipe.resources.clouds == ["local"]:
        c = cands[0]
        return f"on this machine ({c.gpu}): {c.why_not}"
    if not clouds:
        return "no SkyPilot cloud is allowed; add one to resources.clouds"
    if not cands:
        if clouds == ["kubernetes"] and no_k8s_inventory:
            return kubernetes_empty_note()
        what = (f"{want_count}×{want_name}" if want_count else want_name) if want_name else "any GPU"
        fix = "pick another GPU, or auto" if want_name else "allow another cloud in resources.clouds"
        return f"no offer of {what} on {', '.join(clouds)}{' as spot' if spot else ''}; {fix}"
    label = recipe.model.id.split("/")[-1]
    method = {"full": "full fine-tune", "lora": "LoRA", "qlora": "QLoRA"}[recipe.method]
    by_eval = [c for c in cands if c.blocked_by_eval]
    if by_eval:
        best = max(by_eval, key=lambda x: x.mem_available_gb)
        kind = "4-bit" if recipe.eval is not None and recipe.eval.load_4bit else "bf16"
        return (f"{label} {method} trains on {best.gpu} ({best.mem_needed_gb:.0f} of {best.mem_available_gb:.0f} GB), "
                f"but its post-training eval needs ≈{best.eval_mem_gb:.0f} GB per GPU ({kind} weights, one replica "
                f"per GPU), more than any GPU it trains on: {eval_fix(recipe, shape)}")
    one = memory(recipe, gpus=1, shape=shape)
    needed = one.total
    size = f"≈{needed / 1000:.1f} TB" if needed >= 1000 else f"≈{needed:.0f} GB"
    hints = []
    if recipe.method == "full":
        hints.append("use method qlora")
        n = shape["params_b"] * 1e9
        # ZeRO-3-offload keeps bf16 weights+grads sharded on GPUs (4 bytes/param) + activations.
        acts = one.activations + one.fixed
        for gpus_total in (8, 16, 32, 64):
            per_gpu = n * 4 / gpus_total / GB + acts
            if per_gpu <= 80 * (1 - catalog.workloads()["headroom"]):
                nodes = max(1, gpus_total // 8)
                hints.append(f"{nodes}×8 H100-80GB with zero3-offload" if nodes > 1 else "8 H100-80GB with zero3-offload")
                break
    else:
        if recipe.data.seq_len > 512 or recipe.train.micro_batch_size > 1:
            hints.append("lower data.seq_len or train.micro_batch_size")
        if recipe.train.gradient_checkpointing is False:
            hints.append("turn on train.gradient_checkpointing")
        if recipe.method == "lora":
            hints.append("use method qlora")
    biggest = max(cands, key=lambda x: x.mem_available_gb)
    return (f"{label} {method} needs {size} of GPU memory on one GPU (largest offered here: {biggest.gpu}, "
            f"{biggest.mem_available_gb:.0f} GB): " + (", or ".join(hints) if hints else "allow a larger GPU"))
