"""`sftlaunch preflight RECIPE`: before renting GPUs, check what the run will need from the world.

The Hugging Face token can read the model (gated: where to accept the licence) and the
datasets and write `output.hub_repo`; the bucket exists and takes a probe object; local data
resolves; the image the run pulls is in its registry; the clouds have credentials (SkyPilot's
own check). One table, each failure with its fix; exit 2 when any check fails, 0 otherwise
("could not check" is shown, not fatal).
"""

from __future__ import annotations

import click

from launcher.options import cloud_option, json_option, recipe_argument
from sftcore.contract import Env
from sftcore.errors import UserError


@click.command()
@recipe_argument
@cloud_option
@click.option("--local", is_flag=True, help="Check for a run on this machine (no cloud credentials).")
@click.option("--bucket", envvar=Env.BUCKET, default=None, metavar="URI",
              help="Check URI (gs://, s3://) instead of output.bucket, as `up --bucket` would use it "
                   f"[default: ${Env.BUCKET}].")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=600), default=None, metavar="SECONDS",
              help="Give up on one Hub or bucket check after this long [default: 20].")
@json_option
def preflight(recipe: str, cloud: str | None, local: bool, bucket: str | None, timeout: float | None,
              as_json: bool) -> None:
    """Check RECIPE's token, model, datasets, bucket, image and cloud credentials; exit 2 if any check fails."""
    from click.core import ParameterSource

    from launcher import preflight as pf
    from launcher.commands.up import _load

    from_cli = click.get_current_context().get_parameter_source("bucket") == ParameterSource.COMMANDLINE
    r = _load(recipe, local, bucket, from_cli)
    local = local or r.resources.clouds == ["local"]
    cloud = cloud.lower() if cloud else None
    if cloud and cloud not in r.resources.clouds:
        raise UserError(f"--cloud {cloud}: {r.source_path or recipe}: resources.clouds allows only "
                        f"{', '.join(r.resources.clouds)}; add {cloud} there or pick one of those")
    lines = pf.preflight(r, local=local, clouds=[cloud] if cloud else None,
                         timeout=timeout or pf.CHECK_TIMEOUT_S)
    if as_json:
        click.echo(pf.to_json(lines))
    else:
        where = "this machine" if local else ", ".join([cloud] if cloud else r.resources.clouds)
        pf.render(lines, f"Preflight for {recipe} ({r.name} · {r.model.id} · {where})")
    if pf.failed(lines):
        raise click.exceptions.Exit(2)
