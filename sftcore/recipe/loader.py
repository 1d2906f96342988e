"""Loading a recipe: file -> YAML nodes -> plain data with the line of each key -> validated Recipe.

Why not yaml.safe_load: users need every problem at once, each pointing at the line to edit
(`file:line: field.path: message`). So nodes are turned into data here, recording key lines and
catching duplicate keys, tags and surprising numbers; pydantic (sftcore.recipe.schema) and the
cross-field rules (sftcore.recipe.rules) then check the data, and every problem is mapped back
to the line of its key (sftcore.recipe.messages words pydantic's errors).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from sftcore.errors import RecipeError, printable
from sftcore.recipe.compose import _STD, MAX_ALIAS_VALUES, _compose, _RecipeLoader
from sftcore.recipe.input import Located, number_problem, read_recipe_bytes, unsafe_text, yaml11_bool
from sftcore.recipe.input import short as _short
from sftcore.recipe.messages import _capped, _fmt, _fmt_path, _schema_problems
from sftcore.recipe.rules import _cross_field_problems, _get, _resolve_paths
from sftcore.recipe.schema import Recipe, _nearest

_SCALAR_TAGS = {_STD + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
_MAP_TAG, _SEQ_TAG, _MERGE_TAG = _STD + "map", _STD + "seq", _STD + "merge"
_REJECTED = object()  # stands in for a value that was reported and must not be reported again


class _NotData(Exception):
    """The document cannot be turned into data at all (recursive alias, alias bomb)."""

    def __init__(self, line: int, message: str) -> None:
        self.line, self.message = line, message


def _show_tag(tag: str) -> str:
    return "!!" + tag[len(_STD):] if tag.startswith(_STD) else tag


def _check_tag(node: yaml.Node, allowed: set[str], path: tuple, loc: Located) -> bool:
    if node.tag in allowed:
        return True
    loc.problems.append((path, f"YAML tag {_show_tag(node.tag)} is not allowed in a recipe; remove it", node.start_mark.line + 1))
    return False


def _construct(node: yaml.Node, path: tuple, loc: Located, active: frozenset = frozenset()) -> Any:
    """Node -> plain data, recording key lines; tags are checked, never acted on."""
    if id(node) in active:
        where = _fmt_path(path) or "the top level"
        raise _NotData(_nearest(loc.lines, path) or node.start_mark.line + 1,
                       f"YAML alias at {where} refers to itself (a recursive anchor); write the value out instead")
    if id(node) in loc.seen:
        loc.repeats += 1
        if loc.repeats > MAX_ALIAS_VALUES:
            raise _NotData(_nearest(loc.lines, path[:1]) or node.start_mark.line + 1,
                           f"YAML aliases repeat more than {MAX_ALIAS_VALUES:,} values; a recipe needs a few, write them out")
    else:
        loc.seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        _check_tag(node, {_MAP_TAG}, path, loc)
        return _construct_mapping(node, path, loc, active | {id(node)})
    if isinstance(node, yaml.SequenceNode):
        _check_tag(node, {_SEQ_TAG}, path, loc)
        items = []
        for i, item in enumerate(node.value):
            loc.lines[path + (i,)] = item.start_mark.line + 1
            items.append(_construct(item, path + (i,), loc, active | {id(node)}))
        return items
    if not _check_tag(node, _SCALAR_TAGS, path, loc):
        loc.rejected.append(path)
        return _REJECTED
    surprise = number_problem(node, _SCALAR_LOADER)
    if surprise:
        loc.problems.append((path, surprise, node.start_mark.line + 1))
        loc.rejected.append(path)
        return _REJECTED
    try:
        # PyYAML's safe constructor resolves the allowed scalar types (int, float, bool, null, ...).
        value = _SCALAR_LOADER.construct_object(node, deep=True)
    except Exception:  # e.g. `!!int lots`: the constructor's own ValueError/KeyError
        loc.problems.append((path, f"YAML tag {_show_tag(node.tag)} cannot read {_short(repr(node.value))}; remove the tag or fix the value",
                             node.start_mark.line + 1))
        loc.rejected.append(path)
        return _REJECTED
    problem = unsafe_text(value) or yaml11_bool(node, value)
    if problem:
        loc.problems.append((path, problem, node.start_mark.line + 1))
        loc.rejected.append(path)
        return _REJECTED
    return value


def _construct_mapping(node: yaml.MappingNode, path: tuple, loc: Located, active: frozenset) -> dict:
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if key_node.tag == _MERGE_TAG:
            loc.problems.append((path, "YAML merge keys (<<) are not supported in a recipe; write the keys out", line))
            continue
        key = _construct_key(key_node, path, loc)
        if key is _REJECTED:
            continue
        if not isinstance(key, (str, int, float, bool)) or key is None:
            loc.problems.append((path, f"keys must be plain words, not {type(key).__name__}", line))
            continue
        key = str(key)
        child = path + (key,)
        loc.lines[child] = line
        if key in out:
            loc.problems.append((child, "duplicate key: the second one would silently win; keep one", None))
            continue
        out[key] = _construct(value_node, child, loc, active)
    return out


def _construct_key(node: yaml.Node, path: tuple, loc: Located) -> Any:
    """A mapping key; a bad one is reported against the mapping that holds it."""
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.ScalarNode):
        kind = "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"
        loc.problems.append((path, f"keys must be plain words, not {kind}", line))
        return _REJECTED
    if node.tag not in _SCALAR_TAGS:
        # Keep the key as written, so its value is still checked and no "required" follows.
        loc.problems.append((path + (node.value,), f"YAML tag {_show_tag(node.tag)} on a key is not allowed in a recipe; remove it", line))
        return node.value
    surprise = number_problem(node, _SCALAR_LOADER)
    if surprise:
        loc.problems.append((path, f"key {surprise}", line))
        return _REJECTED
    try:
        key = _SCALAR_LOADER.construct_object(node, deep=True)
    except Exception:
        loc.problems.append((path, f"YAML tag {_show_tag(node.tag)} cannot read the key {_short(repr(node.value))}; remove the tag", line))
        return _REJECTED
    problem = unsafe_text(key)
    if problem:
        loc.problems.append((path, f"key {printable(repr(key))}: {problem}", line))
        return _REJECTED
    return key


class _ScalarLoader(_RecipeLoader):
    def __init__(self) -> None:  # no stream: only used for construct_object on scalar nodes
        _RecipeLoader.__init__(self, "")


_SCALAR_LOADER = _ScalarLoader()


def load_recipe(path: str | Path, overrides: dict[tuple[str, ...], Any] | None = None,
                labels: dict[tuple[str, ...], str] | None = None, cloud_only: bool = False) -> Recipe:
    """Read, validate and resolve a recipe file; raise RecipeError listing every problem.

    `overrides` (key path -> value, e.g. `{("output", "bucket"): "gs://b/x"}`) are applied to the
    file's data before validation, so a command-line override takes part in the cross-field rules
    (spot needs a bucket) instead of being patched onto an already-validated recipe. `labels`
    names where each override came from (`{("output", "bucket"): "--bucket"}`): a problem with an
    overridden value points at that flag instead of at a file line the user did not write.
    With `cloud_only`, overrides apply only when the recipe's own resources.clouds are not
    [local] (a default such as $SFTLAUNCH_BUCKET is meant for cloud runs).
    An override never replaces a section the file wrote as something other than a mapping
    (`output: foo`): that is the user's own error, reported as such.
    """
    p = Path(path)
    source = str(path)
    raw = read_recipe_bytes(p, source)
    if b"\x00" in raw:
        raise RecipeError([f"{source}:1: (recipe): binary data, not YAML; pass a recipe .yaml file"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError([f"{source}:{line}: (recipe): not UTF-8 text; save the recipe as UTF-8 YAML"]) from None
    return _from_text(text, source, p.resolve().parent, overrides, labels, cloud_only)


def _from_text(text: str, source: str, base_dir: Path, overrides: dict[tuple[str, ...], Any] | None = None,
               labels: dict[tuple[str, ...], str] | None = None, cloud_only: bool = False) -> Recipe:
    node = _compose(text, source)
    if node is None:
        raise RecipeError([f"{source}:1: (recipe): empty file; start from recipes/tiny-local.yaml"])
    if not isinstance(node, yaml.MappingNode):
        kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
        raise RecipeError([f"{source}:{node.start_mark.line + 1}: (recipe): top level is {kind}; a recipe is a mapping of keys (name:, model:, data:, ...)"])
    loc = Located()
    try:
        data = _construct(node, (), loc)
    except _NotData as exc:
        raise RecipeError([f"{source}:{exc.line}: (recipe): {exc.message}"]) from None
    applied: dict[tuple, str] = {}
    replaced: dict[tuple, Any] = {}
    if not (cloud_only and _get(data, "resources", "clouds") == ["local"]):
        for keys, value in (overrides or {}).items():
            previous = _set_path(data, keys, value)
            if previous is _NOT_SET or (type(previous) is type(value) and previous == value):
                continue  # not applied, or the file says the same: its line stays the place to point at
            applied[tuple(keys)] = (labels or {}).get(tuple(keys), "command line")
            if previous is not _ABSENT:
                replaced[tuple(keys)] = previous
    recipe = _validate(data, source, base_dir, loc, applied)
    recipe._replaced = replaced
    return recipe


_ABSENT = object()  # _set_path: the file had no value there
_NOT_SET = object()  # _set_path: the override was not applied


def _set_path(data: dict, keys: tuple[str, ...], value: Any) -> Any:
    """Set `data[k1][k2]... = value`, creating missing sections; returns the value it replaced
    (`_ABSENT` if none). A section the file gave as a non-mapping is left alone (`_NOT_SET`), so
    the schema reports the user's own mistake instead of the override silently erasing it."""
    *parents, last = keys
    for key in parents:
        if key not in data:
            data[key] = {}
        if not isinstance(data[key], dict):
            return _NOT_SET
        data = data[key]
    previous = data.get(last, _ABSENT)
    data[last] = value
    return previous


def recipe_from_dict(data: dict, source: str = "<dict>", base_dir: str | Path | None = None) -> Recipe:
    """Validate a recipe given as data (tests, programmatic use). Same checks, no line numbers.

    Python callers naturally hold paths as `Path` and lists as tuples; those are converted here,
    at the boundary, so the schema itself can stay strict about what a YAML file may contain.
    """
    if not isinstance(data, dict):
        raise RecipeError([f"{source}:1: (recipe): a recipe is a mapping of keys, not {type(data).__name__}"])
    return _validate(_plain(data), source, Path(base_dir or Path.cwd()).resolve(), Located())


def _plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _validate(data: dict, source: str, base_dir: Path, loc: Located, labels: dict[tuple, str] | None = None) -> Recipe:
    """`labels`: key paths set by an override -> the flag or variable that set them."""
    labels = labels or {}
    recipe, schema = _schema_problems(data, loc)
    on_values = schema + [(path, msg, None) for path, msg in _cross_field_problems(data, base_dir, labels)]
    problems = loc.problems + on_values
    if problems:
        located = []
        for i, (path, msg, line) in enumerate(problems):
            label = _nearest(labels, path) if i >= len(loc.problems) else None  # YAML problems are the file's
            if label:  # the flag's value, not the file: no file line to point at; said first
                located.append(((0, i), f"{label}: {_fmt_path(path)}: {msg}"))
                continue
            line = line or _nearest(loc.lines, path) or 1
            located.append(((line, i), _fmt(source, line, path, msg)))
        # By line, then as found, so the user can fix top to bottom.
        raise RecipeError(_capped(list(dict.fromkeys(text for _, text in sorted(located))), source))
    assert recipe is not None
    _resolve_paths(recipe, base_dir)
    recipe._source_path = None if source.startswith("<") else Path(source).resolve()
    recipe._lines = dict(loc.lines)
    recipe._labels = dict(labels)
    return recipe
