"""pydantic's validation errors -> one line each, in the user's words: `file:line: path: message`.

Why: pydantic says "Input should be a valid integer"; a user needs "must be a whole number, got
the text '2e-4'; remove the quotes", the key path they wrote (without pydantic's union branch
labels), a "did you mean" for an unknown key, and no more than MAX_PROBLEMS lines.
"""

from __future__ import annotations

import datetime
import difflib
import math
from typing import Any

from pydantic import BaseModel, ValidationError

from sftcore.errors import printable
from sftcore.recipe.input import Located
from sftcore.recipe.input import short as _short
from sftcore.recipe.schema import Recipe


def _fmt_path(path: tuple) -> str:
    return ".".join(_short(str(p), 40) if not isinstance(p, int) else f"[{p}]" for p in path).replace(".[", "[")


MAX_MESSAGE = 600  # characters: a message quotes the user's value, which may be a 5,000-character paste
MAX_PROBLEMS = 50  # a recipe with more is not a recipe (a pasted data file): the first ones say so


def _fmt(source: str, line: int | None, path: tuple, message: str) -> str:
    """One problem line; what the user wrote (a key, a value, the file name) printed escaped."""
    return printable(f"{source}:{line or 1}: {_fmt_path(path) or '(recipe)'}: {_short(message, MAX_MESSAGE)}")


def _known_fields(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _model_at(path: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the mapping at `path`, to suggest key names."""
    model: Any = Recipe
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = _first_model(field.annotation)
        if model is None:
            return None
    return model


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found:
            return found
    return None


def _shown(value: Any) -> str:
    """A value as the user wrote it in YAML (true, null, 'text'), for messages."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"the text {_short(repr(value))}"
    if isinstance(value, int) and len(str(abs(value))) > 20:
        return f"a {len(str(abs(value)))}-digit number"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (datetime.date, datetime.datetime)):  # YAML reads 2023-01-01 as a date
        return f"the date {value.isoformat()}"
    return f"{type(value).__name__} {_short(repr(value))}"


def _numeric_text(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value.replace("_", ""))
    except ValueError:
        return False
    return True


def _wrong_type(expected: str, value: Any) -> str:
    msg = f"must be {expected}, got {_shown(value)}"
    if isinstance(value, str) and (
        (expected != "true or false" and _numeric_text(value)) or (expected == "true or false" and value.lower() in ("true", "false"))
    ):
        msg += "; remove the quotes"
    elif expected.endswith("a whole number") and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        msg += f"; write {int(value)}"
    return msg


def _bound(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _message(err: dict) -> str:
    kind = err["type"]
    msg = err["msg"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "missing":
        return "required; add it"
    if kind == "literal_error":
        return f"got {_short(repr(value))}; expected one of {ctx.get('expected', '')}".replace("'", "")
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return _wrong_type("a whole number", value)
    if kind in ("float_type", "float_parsing"):
        if isinstance(value, int) and not isinstance(value, bool):  # only an int beyond float range fails here
            return f"is far too large, got {_shown(value)}; check for a typo"
        return _wrong_type("a number", value)
    if kind in ("bool_type", "bool_parsing"):
        return _wrong_type("true or false", value)
    if kind == "finite_number":
        return f"must be a finite number, got {value!r}; write an ordinary number"
    if kind == "string_type":
        return f"must be text, got {_shown(value)}; put it in quotes"
    if kind == "list_type":
        return f"must be a list, got {type(value).__name__}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping of keys, got {_shown(value)}"
    bounds = {"greater_than": ("greater than", "gt"), "greater_than_equal": ("at least", "ge"),
              "less_than": ("less than", "lt"), "less_than_equal": ("at most", "le")}
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {_bound(ctx.get(key))}, got {_shown(value)}"
    if kind in ("too_short", "too_long"):
        return f"{msg[0].lower() + msg[1:]}, got {_short(repr(value))}"
    if msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    return msg[0].lower() + msg[1:] if msg else kind


def _clean_loc(loc_: tuple) -> tuple:
    # Drop pydantic's union/literal branch labels so the path is the user's key path.
    out = []
    for part in loc_:
        if isinstance(part, str) and (part.startswith("function-") or part in ("literal['all-linear']", "list[str]", "int", "str")
                                      or part.startswith("literal[") or part.startswith("list[")):
            continue
        out.append(part)
    return tuple(out)


def _schema_problems(data: dict, loc: Located) -> tuple[Recipe | None, list[tuple[tuple, str, int | None]]]:
    try:
        return Recipe.model_validate(data), []
    except ValidationError as exc:
        errors = exc.errors()
    by_path: dict[tuple, list[dict]] = {}
    for err in errors:
        path = _clean_loc(tuple(err["loc"]))
        if not any(path[: len(r)] == r for r in loc.rejected):  # a rejected tag was reported already
            by_path.setdefault(path, []).append(err)
    problems: list[tuple[tuple, str, int | None]] = []
    for path, errs in by_path.items():  # a union reports each branch: one message per path
        err = errs[0]
        if err["type"] == "extra_forbidden":  # suggestions for the ones shown: difflib on 50,000 pasted keys takes seconds
            problems.append((path, _unknown_key(path) if len(problems) < MAX_PROBLEMS else "unknown key", None))
        else:
            problems.append((path, _union_message(errs) or _message(err), None))
    return None, problems


def _union_message(errs: list[dict]) -> str | None:
    """`auto` or a whole number, a list or `all-linear`: name both choices, not one branch's complaint."""
    kinds = {e["type"]: e for e in errs}
    if "literal_error" in kinds and "int_type" in kinds:
        expected = (kinds["literal_error"].get("ctx") or {}).get("expected", "").replace("'", "`")
        return _wrong_type(f"{expected} or a whole number", errs[0].get("input"))
    if "literal_error" in kinds and "list_type" in kinds:
        expected = (kinds["literal_error"].get("ctx") or {}).get("expected", "").replace("'", "`")
        return f"must be a list or {expected}, got {_shown(errs[0].get('input'))}"
    return None


def _unknown_key(path: tuple) -> str:
    owner = _model_at(path[:-1])
    if owner is None:
        return "unknown key"
    close = difflib.get_close_matches(str(path[-1]), _known_fields(owner), n=1, cutoff=0.6)
    return f"unknown key; did you mean {close[0]}?" if close else f"unknown key; known keys: {', '.join(_known_fields(owner))}"


def _capped(problems: list[str], source: str) -> list[str]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return problems[:MAX_PROBLEMS] + [f"{source}:1: (recipe): {len(problems) - MAX_PROBLEMS:,} more problems not shown; "
                                      "fix these first (is this really a recipe?)"]
