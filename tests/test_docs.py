"""docs/recipes.md is generated from the recipe schema and must not drift from it."""

from __future__ import annotations

from pathlib import Path

from launcher import docgen
from sftcore.recipe import Recipe, TrainSpec

REPO = Path(__file__).resolve().parents[1]


def _paths(model, prefix=""):
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path
        sub, is_list = docgen._section_model(field.annotation)
        if sub is not None:
            yield from _paths(sub, f"{path}{'[]' if is_list else ''}.")


def test_recipes_md_is_up_to_date():
    on_disk = (REPO / "docs" / "recipes.md").read_text()
    assert on_disk == docgen.generate(), "docs/recipes.md is stale: run `python -m launcher.docgen`"
    assert docgen.main(["--check"]) == 0


def test_every_key_is_documented_with_its_default():
    text = docgen.generate()
    paths = list(_paths(Recipe))
    assert len(paths) > 40
    for path in paths:
        assert f"| `{path}` |" in text, path
    assert "| `train.seed` | integer; ≥ 0 | `42` |" in text
    assert "| `resources.clouds` | list of `lambda` \\| `runpod` \\| `gcp` \\| `kubernetes` \\| `local`" in text
    assert "| `model.id` | text | **required** |" in text


def test_a_schema_change_shows_up_as_a_diff(monkeypatch):
    before = docgen.generate()
    monkeypatch.setattr(TrainSpec.model_fields["seed"], "description", "A changed meaning.")
    assert docgen.generate() != before
    assert docgen.main(["--check"]) == 1


def test_every_schema_field_has_a_description():
    # The reference is only as good as the schema's Field(description=...) texts.
    missing = docgen.missing_descriptions()
    assert not missing, "add Field(description=...) in sftcore/recipe/schema.py for: " + ", ".join(missing)
