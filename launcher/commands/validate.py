"""`sftlaunch validate RECIPE...`: every problem in every recipe, then exit 0 or 2."""

from __future__ import annotations

from pathlib import Path

import click

from sftcore.errors import RecipeError, printable

RECIPE_SUFFIXES = (".yaml", ".yml")


@click.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=str))
@click.option("--quiet", "-q", is_flag=True, help="Print only problems.")
def validate(recipes: tuple[str, ...], quiet: bool) -> None:
    """Check RECIPES (files, or directories of *.yaml/*.yml); print `file:line: field: message` for every problem (exit 2 if any)."""
    from sftcore.recipe import load_recipe

    files, problems = _expand(recipes)
    for path in files:
        try:
            recipe = load_recipe(path)
        except RecipeError as exc:
            problems.extend(exc.problems)
            continue
        if not quiet:
            click.echo(printable(f"{path}: ok ({recipe.name}: {recipe.method} {recipe.model.id})"))
    if problems:
        raise RecipeError(problems)


def _expand(paths: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(recipe files, problems): a directory stands for the recipes in it, so `validate recipes/` works.

    A directory without recipes is a problem, not silence: an exit 0 with nothing checked
    would pass a CI step that points at the wrong folder.
    """
    files: list[str] = []
    problems: list[str] = []
    for path in paths:
        p = Path(path)
        if not p.is_dir():
            files.append(path)
            continue
        found = sorted(str(f) for f in p.iterdir() if f.suffix in RECIPE_SUFFIXES and f.is_file())
        if not found:
            problems.append(f"{path}: no recipe files (*.yaml, *.yml); pass a recipe file or a directory of recipes")
        files.extend(found)
    return files, problems
