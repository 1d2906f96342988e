"""YAML text -> node graph, within limits: nesting depth, number of values, syntax errors worded.

Why a module of its own: PyYAML's composer recurses once per level and libyaml's in C, so a
hostile file (100,000 `[`, a 1 MiB paste) must be refused before or while composing, with one
line naming where. Turning nodes into data (with lines) is sftcore.recipe.loader's.
"""

from __future__ import annotations

import re

import yaml

from sftcore.errors import RecipeError
from sftcore.recipe.input import control_characters
from sftcore.recipe.input import short as _short

MAX_DEPTH = 32  # a recipe nests 4 levels; anything past this is a mistake or an attack
MAX_NODES = 10_000  # values written out (keys count too); the shipped recipes have 75 to 125
MAX_ALIAS_VALUES = 10_000  # values repeated through aliases (an alias bomb repeats billions); a recipe needs a few
_STD = "tag:yaml.org,2002:"


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats, a nesting limit and a size limit.

    PyYAML follows YAML 1.1, where `2e-4` (no dot) is a string; every YAML 1.2 reader and every
    user reads it as a number, and strict types would reject it. Nesting is limited while
    composing because PyYAML's composer recurses once per level (5000 `[` exhaust the stack);
    the number of values because each costs time all the way to the last error message.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark)
            if self._nodes > MAX_NODES:
                raise _TooMany(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_RecipeLoader.add_implicit_resolver(
    _STD + "float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"), list("-+0123456789."),
)


try:
    from yaml.cyaml import CParser as _CParser
except ImportError:  # PyYAML built without libyaml: the pure-Python loader does it all, more slowly
    _CParser = None

if _CParser is not None:
    class _FastRecipeLoader(_CParser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        """libyaml's parser and composer with _RecipeLoader's resolvers (YAML 1.2 floats)."""

        yaml_implicit_resolvers = _RecipeLoader.yaml_implicit_resolvers

        def __init__(self, stream: str) -> None:
            _CParser.__init__(self, stream)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
else:
    _FastRecipeLoader = None  # type: ignore[assignment,misc]


class _TooDeep(Exception):
    def __init__(self, mark) -> None:
        self.mark = mark


class _TooMany(_TooDeep):
    """More than MAX_NODES values (written out, not through aliases): a data file, not a recipe."""


def _compose(text: str, source: str) -> yaml.Node | None:
    def whole_file(line: int, message: str) -> RecipeError:
        return RecipeError([f"{source}:{line}: (recipe): {message}"])

    control = control_characters(text, source)
    if control:
        raise RecipeError(control)
    try:
        return _compose_nodes(text)
    except _TooMany as exc:
        raise whole_file(exc.mark.line + 1, f"more than {MAX_NODES:,} values written out (a recipe has under 200); "
                         "is this a data file? pass the recipe") from None
    except _TooDeep as exc:
        raise whole_file(exc.mark.line + 1, f"nested deeper than {MAX_DEPTH} levels; a recipe needs a few, check the brackets") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join((exc.problem or "invalid YAML").split())
        if what.startswith("but ") and exc.context:  # "but found another document" needs its first half
            what = " ".join(exc.context.split()) + ", " + what
        raise whole_file(mark.line + 1 if mark else 1, f"YAML syntax error: {what}; fix the indentation or quoting") from None
    except yaml.YAMLError as exc:
        raise whole_file(1, "YAML error: " + " ".join(_short(str(exc), 200).split())) from None


def _compose_nodes(text: str) -> yaml.Node | None:
    """The document's node graph: with libyaml when PyYAML has it (a 1 MiB file composes in about
    a second rather than ten), after an event-only pass that enforces MAX_DEPTH (libyaml's
    composer recurses in C, where no recursion limit would stop 100,000 `[`) and MAX_NODES."""
    if _FastRecipeLoader is None:
        return _compose_with(_RecipeLoader, text)
    try:
        _check_shape(text)
        return _compose_with(_FastRecipeLoader, text)
    except yaml.MarkedYAMLError:
        # PyYAML's own messages name what they found (`found character '@'`, the alias name) where
        # libyaml's do not: for a file of ordinary size, ask it to word the error (if it agrees).
        if len(text) <= REWORD_BYTES:
            _compose_with(_RecipeLoader, text)
        raise


REWORD_BYTES = 64 * 1024  # PyYAML composes this much in ~0.3 s; a recipe is 1-3 KB


def _compose_with(loader_class, text: str) -> yaml.Node | None:
    loader = loader_class(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _check_shape(text: str) -> None:
    parser = _CParser(text)
    depth = nodes = 0
    try:
        while parser.check_event():
            event = parser.get_event()
            if isinstance(event, yaml.NodeEvent):  # scalars, aliases, mapping and sequence starts
                nodes += 1
                if nodes > MAX_NODES:
                    raise _TooMany(event.start_mark)
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth >= MAX_DEPTH:  # as _RecipeLoader counts: the scalars inside are one level more
                    raise _TooDeep(event.start_mark)
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.MarkedYAMLError as exc:  # libyaml's own limit (1,000 levels) can trip first, while scanning ahead
        if "nesting depth" in (exc.problem or ""):
            raise _TooDeep(exc.problem_mark or exc.context_mark) from None
        raise
    finally:
        parser.dispose()
