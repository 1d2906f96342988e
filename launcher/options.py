"""Shared Click options, as decorators, so every command spells them the same way."""

from __future__ import annotations

import click

CLOUD_CHOICES = ("runpod", "lambda", "gcp", "kubernetes")


def _merge_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    # `sftlaunch --json status` and `sftlaunch status --json` mean the same thing.
    root = ctx.find_root()
    return bool(value or (root.obj or {}).get("json"))


def json_option(f):
    return click.option(
        "--json", "as_json", is_flag=True, callback=_merge_json, expose_value=True,
        help="Print machine-readable JSON instead of a table.",
    )(f)


def cloud_option(f):
    return click.option(
        "--cloud", type=click.Choice(CLOUD_CHOICES, case_sensitive=False), default=None,
        help="Only consider this cloud (must be allowed by the recipe).",
    )(f)


def gpu_option(f):
    return click.option(
        "--gpu", default=None, metavar="GPU[:N]",
        help='Override resources.gpu, e.g. "H100:1" or "A100-80GB:8".',
    )(f)


def yes_option(f):
    return click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")(f)


def dry_run_option(f):
    return click.option("--dry-run", is_flag=True, help="Show what would happen; change nothing.")(f)


def recipe_argument(f):
    return click.argument("recipe", type=click.Path(dir_okay=False, path_type=str))(f)
