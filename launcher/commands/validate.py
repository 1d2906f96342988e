"""`sftlaunch validate RECIPE...`: every problem in every recipe, then exit 0 or 2."""

from __future__ import annotations

import click

from launcher.errors import RecipeError


@click.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=str))
@click.option("--quiet", "-q", is_flag=True, help="Print only problems.")
def validate(recipes: tuple[str, ...], quiet: bool) -> None:
    """Check RECIPES; print `file:line: field: message` for every problem (exit 2 if any)."""
    from launcher.recipe import load_recipe

    problems: list[str] = []
    for path in _expand(recipes):
        try:
            recipe = load_recipe(path)
        except RecipeError as exc:
            problems.extend(exc.problems)
            continue
        if not quiet:
            click.echo(f"{path}: ok ({recipe.name}: {recipe.method} {recipe.model.id})")
    if problems:
        raise RecipeError(problems)


def _expand(paths: tuple[str, ...]) -> list[str]:
    """A directory stands for the recipes in it, so `sftlaunch validate recipes/` works."""
    from pathlib import Path

    out: list[str] = []
    for path in paths:
        p = Path(path)
        out.extend(sorted(str(f) for f in p.glob("*.yaml")) if p.is_dir() else [path])
    return out
