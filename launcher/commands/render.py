"""`sftlaunch render RECIPE`: the SkyPilot task YAML a launch would use, secrets by name only."""

from __future__ import annotations

import secrets as _secrets
from pathlib import Path

import click

from sftcore.errors import UserError
from launcher.options import RunIdType, cloud_option, fallbacks_option, gpu_option, recipe_argument


def resolve_target(recipe, cloud: str | None, gpu: str | None, fallbacks: int | None = None):
    """The targets to render, in plan order: the chosen one first, then up to `fallbacks`-1
    further fitting offers (resources.fallbacks by default) for SkyPilot to fall over to.

    An explicit GPU is checked against what the allowed clouds sell (name and count, with a
    did-you-mean) and spot / multi-node against what they can do, so a bad request is exit 2
    with the reason, before any planning. An explicit GPU the planner thinks does not fit is
    still rendered as asked (on the first allowed cloud that sells it).
    """
    from sftcore.clouds import CLOUDS
    from launcher.render import Target

    allowed = [c for c in recipe.resources.clouds if c in CLOUDS]
    if cloud is None:
        if not allowed:
            raise UserError(
                f"{recipe.source_path or 'recipe'}: resources.clouds: only local is allowed; "
                "run it with `sftlaunch up --local`, or add a cloud (lambda, runpod, gcp, kubernetes)"
            )
    from launcher import catalog
    from launcher.estimate import plan, refuse_unsold, refuse_unsupported, requested_gpu

    name, count = requested_gpu(recipe, gpu)
    considered = [cloud] if cloud else allowed
    if cloud is None or cloud in allowed:  # render.check_target words the not-allowed case
        refuse_unsupported(recipe, considered, recipe.resources.spot, recipe.resources.nodes, cloud)
        refuse_unsold(recipe, considered, name, count, gpu is not None)
    n = fallbacks or recipe.resources.fallbacks
    if cloud is not None and cloud not in allowed:
        return [Target(cloud=cloud, gpu=name or "auto", gpus_per_node=count or 1, nodes=recipe.resources.nodes,
                       spot=recipe.resources.spot)]
    result = plan(recipe, cloud=cloud, gpu=gpu)
    if result.chosen is not None:
        return result.failover(n, recipe.resources.max_usd)
    if name is not None and result.reason_field != "resources.regions":
        sellers = [c for c in considered if c == "kubernetes"
                   or any(o.gpu == name and (count is None or o.count == count) for o in catalog.offers(c))]
        return [Target(cloud=(sellers or considered)[0], gpu=name, gpus_per_node=count or 1,
                       nodes=recipe.resources.nodes, spot=recipe.resources.spot)]
    field = "" if result.reason_field == "model.id" else f"{result.reason_field}: nothing fits: "
    raise UserError(f"{recipe.source_path or 'recipe'}: {field}{result.reason}")


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
def render(recipe: str, cloud: str | None, gpu: str | None, output: Path | None, run_id: str | None, steps: tuple[str, ...],
           fallbacks: int | None) -> None:
    """Print the SkyPilot task YAML for RECIPE (secrets appear by name only)."""
    from launcher.images import sftlaunch_home
    from sftcore.recipe import load_recipe
    from launcher.render import STEPS, container_recipe_yaml, render_task, to_yaml

    if output:
        _check_output(output, recipe)
    r = load_recipe(recipe)
    targets = resolve_target(r, cloud.lower() if cloud else None, gpu, fallbacks)
    target = targets[0]
    run_id = run_id or new_run_id(r.name)
    # The container reads the resolved recipe from a file mount; write it where the mount points.
    mount_dir = sftlaunch_home() / "rendered" / run_id
    mount_dir.mkdir(parents=True, exist_ok=True)
    mount_src = mount_dir / "recipe.yaml"
    mount_src.write_text(container_recipe_yaml(r))
    task = render_task(r, target, run_id, str(mount_src), steps=tuple(steps) or STEPS, fallbacks=targets[1:])
    order = " → ".join(f"{t.cloud} {t.accelerators}" for t in targets)
    flag = f" --cloud {cloud.lower()}" if cloud else ""
    text = f"# sftlaunch render {recipe}{flag}  (run id {run_id}; {order})\n" + to_yaml(task)
    if output:
        try:
            output.write_text(text)
        except OSError as exc:
            raise UserError(f"-o {output}: cannot write it ({exc.strerror or type(exc).__name__}); "
                            "check the path and its permissions, or pick another file") from None
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
