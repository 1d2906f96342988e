"""`sftlaunch render RECIPE`: the SkyPilot task YAML a launch would use, secrets by name only."""

from __future__ import annotations

import secrets as _secrets
from pathlib import Path

import click

from launcher.options import (
    RunIdType,
    check_credentials_option,
    cloud_option,
    fallbacks_option,
    gpu_option,
    recipe_argument,
)
from sftcore.errors import UserError


def resolve_target(recipe, cloud: str | None, gpu: str | None, fallbacks: int | None = None,
                   usable: frozenset[str] | None = None):
    """The targets to render: `launcher.failover.launch_order` over the plan (the order `plan`
    prints and `up` launches), the first choice then up to `fallbacks`-1 (resources.fallbacks by
    default) further fitting offers for SkyPilot to fall over to. `usable`: the clouds with
    credentials (--check-credentials), None when not checked.

    The plan refuses an explicit GPU no allowed cloud sells (name and count, with a did-you-mean)
    and spot / multi-node a --cloud cannot do, so a bad request is exit 2 with the reason. An
    explicit GPU the planner thinks does not fit is still rendered as asked (on the first allowed
    cloud that sells it).
    """
    from launcher import catalog
    from launcher.estimate.candidates import plan, requested_gpu
    from launcher.failover import launch_order, no_usable_cloud
    from launcher.render import Target
    from sftcore.clouds import CLOUDS, not_allowed

    src = recipe.source_path or "recipe"
    allowed = [c for c in recipe.resources.clouds if c in CLOUDS]
    if cloud is None and not allowed:
        raise UserError(f"{src}: resources.clouds: only local is allowed; "
                        "run it with `sftlaunch up --local`, or add a cloud (lambda, runpod, gcp, kubernetes)")
    if cloud is not None and cloud not in CLOUDS:
        raise UserError(f"--cloud {cloud}: unknown cloud; use one of {', '.join(CLOUDS)}")
    if cloud is not None and cloud not in allowed:
        raise UserError(not_allowed(cloud, recipe.resources.clouds, str(src)))
    name, count = requested_gpu(recipe, gpu)
    considered = [cloud] if cloud else allowed
    result = plan(recipe, cloud=cloud, gpu=gpu)
    if result.chosen is not None:
        order = launch_order(result, fallbacks or recipe.resources.fallbacks, recipe.resources.max_usd, usable)
        if not order:
            raise UserError(f"{src}: {no_usable_cloud(considered, usable or ())}")
        return order
    if name is not None and result.reason_field != "resources.regions":
        sellers = [c for c in considered if (usable is None or c in usable) and (c == "kubernetes"
                   or any(o.gpu == name and (count is None or o.count == count) for o in catalog.offers(c)))]
        return [Target(cloud=(sellers or considered)[0], gpu=name, gpus_per_node=count or 1,
                       nodes=recipe.resources.nodes, spot=recipe.resources.spot)]
    field = "" if result.reason_field == "model.id" else f"{result.reason_field}: nothing fits: "
    raise UserError(f"{src}: {field}{result.reason}")


def _check_output(output: Path, recipe: str) -> None:
    """Refuse an -o path that cannot be written, before anything is planned or rendered."""
    if output.exists() and output.resolve() == Path(recipe).resolve():
        raise UserError(f"-o {output}: refusing to overwrite the recipe itself; pick another file")
    if output.exists() and not output.is_file():  # writing to a FIFO would wait for a reader forever
        raise UserError(f"-o {output}: not a regular file; pick a file path")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise UserError(f"-o {output}: the directory {parent} {what}; create it (mkdir -p {parent}) or pick another path")


def new_run_id(name: str) -> str:
    try:
        from launcher.runid import new_run_id as registry_run_id
    except ImportError:
        return f"sftl-{name}-{_secrets.token_hex(2)}"
    return registry_run_id(name)


@click.command()
@recipe_argument
@cloud_option
@gpu_option
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the YAML to this file instead of stdout (an existing file is replaced).")
@click.option("--run-id", type=RunIdType(), default=None, help="Use this run id (sftl-NAME-1a2b) instead of a fresh one.")
@click.option("--step", "steps", multiple=True, type=click.Choice(["train", "eval", "publish"]),
              help="Steps to run (default: train, eval, publish).")
@fallbacks_option
@check_credentials_option
def render(recipe: str, cloud: str | None, gpu: str | None, output: Path | None, run_id: str | None, steps: tuple[str, ...],
           fallbacks: int | None, check_credentials: bool) -> None:
    """Print the SkyPilot task YAML for RECIPE (secrets appear by name only)."""
    from launcher.failover import considered_clouds, credentialed, unchecked_note
    from launcher.images import sftlaunch_home
    from launcher.render import STEPS, container_recipe_yaml, render_task, to_yaml
    from sftcore.recipe import load_recipe

    if output:
        _check_output(output, recipe)
    r = load_recipe(recipe)
    cloud = cloud.lower() if cloud else None
    clouds = considered_clouds(r, cloud)
    ask = check_credentials and clouds and (cloud is None or cloud in r.resources.clouds)
    usable = credentialed(clouds) if ask else None
    targets = resolve_target(r, cloud, gpu, fallbacks, usable)
    target = targets[0]
    run_id = run_id or new_run_id(r.name)
    # The container reads the resolved recipe from a file mount; write it where the mount points.
    mount_dir = sftlaunch_home() / "rendered" / run_id
    mount_dir.mkdir(parents=True, exist_ok=True)
    mount_src = mount_dir / "recipe.yaml"
    mount_src.write_text(container_recipe_yaml(r))
    task = render_task(r, target, run_id, str(mount_src), steps=tuple(steps) or STEPS, fallbacks=targets[1:])
    order = " → ".join(f"{t.cloud} {t.accelerators}" for t in targets)
    flag = f" --cloud {cloud}" if cloud else ""
    note = "" if usable is not None else f"# note: {unchecked_note(clouds)}\n"
    text = f"# sftlaunch render {recipe}{flag}  (run id {run_id}; {order})\n{note}" + to_yaml(task)
    if output:
        try:
            output.write_text(text)
        except OSError as exc:
            raise UserError(f"-o {output}: cannot write it ({exc.strerror or type(exc).__name__}); "
                            "check the path and its permissions, or pick another file") from None
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
