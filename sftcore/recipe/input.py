"""Bounded, unsurprising recipe input: which files are read as recipes, which characters and
numbers a recipe may hold, and which local paths count as training data.

Why a module of its own: each rule here answers a hostile or mistaken input (a FIFO that would
hang the reader, /dev/zero, a 30 MB paste, an invisible control character, a YAML 1.1 number
that silently means something else, `data.sources[].path: /`) with one line naming the line and
the fix, before anything slow or unbounded runs. sftcore.recipe calls these while loading.
Light imports only (os, stat, re, yaml): it runs on `sftlaunch validate`.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from sftcore.errors import RecipeError

MAX_RECIPE_BYTES = 2**20  # 1 MiB: the shipped recipes are 1-3 KB; a larger file is a mistake (a data file) or an attack
_STD = "tag:yaml.org,2002:"


def short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------
# Reading the file

FILE_KINDS = ((stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
               (stat.S_ISSOCK, "socket"))


def read_recipe_bytes(p: Path, source: str) -> bytes:
    """The recipe's bytes, read only from a regular file of at most MAX_RECIPE_BYTES.

    Why the type is checked with stat before opening, and the open is non-blocking: opening a
    FIFO blocks until a writer appears (a hang), a device such as /dev/zero never ends (memory
    without bound), and a multi-megabyte file takes minutes to compose. The opened descriptor is
    checked again, in case the path was swapped between the two calls.
    """
    def refuse(message: str) -> RecipeError:
        return RecipeError([f"{source}:1: (recipe): {message}"])

    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise refuse("file not found; check the path") from None
    except NotADirectoryError:
        raise refuse("a part of the path before the file name is a file, not a directory; check the path") from None
    except OSError as exc:
        raise refuse(f"cannot read ({exc.strerror or type(exc).__name__}); check the path and its permissions") from None
    _check_recipe_stat(st, refuse)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except IsADirectoryError:
        raise refuse("is a directory; pass a recipe .yaml file") from None
    except OSError as exc:
        raise refuse(f"cannot read ({exc.strerror or type(exc).__name__}); check permissions") from None
    try:
        _check_recipe_stat(os.fstat(fd), refuse)
        chunks, size = [], 0
        while size <= MAX_RECIPE_BYTES:
            chunk = os.read(fd, MAX_RECIPE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise refuse(f"cannot read ({exc.strerror or type(exc).__name__}); check the file") from None
    finally:
        os.close(fd)
    if size > MAX_RECIPE_BYTES:  # it grew after stat, or stat reports no size (/proc files)
        raise refuse(_too_large(size, more=True))
    return b"".join(chunks)


def _check_recipe_stat(st: os.stat_result, refuse) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise refuse("is a directory; pass a recipe .yaml file")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in FILE_KINDS if test(st.st_mode)), "special file")
        raise refuse(f"is a {kind}, not a regular file; recipes are read only from regular files: save it to a .yaml file and pass that")
    if st.st_size > MAX_RECIPE_BYTES:
        raise refuse(_too_large(st.st_size))


def _too_large(size: int, more: bool = False) -> str:
    got = f"more than {MAX_RECIPE_BYTES:,}" if more else f"{size:,}"
    return (f"{got} bytes, over the {MAX_RECIPE_BYTES // 2**20} MiB limit for a recipe (a recipe is a few KB); "
            "pass the recipe file, not a data file (data goes in data.sources)")


# --------------------------------------------------------------------------------------------
# Characters and numbers

_NON_PRINTABLE = yaml.reader.Reader.NON_PRINTABLE  # what YAML forbids in a stream (tabs, newlines allowed)
_CONTROL_NAMES = {0x07: "BEL", 0x08: "backspace", 0x0B: "vertical tab", 0x0C: "form feed", 0x1B: "ESC", 0x7F: "DEL"}


def control_characters(text: str, source: str, limit: int = 5) -> list[str]:
    """One problem per line holding a character YAML forbids (PyYAML raises for the first one,
    with a position but no line); the first `limit` lines are reported."""
    problems: list[str] = []
    pos, line, counted = 0, 1, 0
    while len(problems) < limit:
        m = _NON_PRINTABLE.search(text, pos)
        if m is None:
            break
        line += text.count("\n", counted, m.start())
        start_of_line = text.rfind("\n", 0, m.start()) + 1
        code = ord(m.group())
        name = _CONTROL_NAMES.get(code, "control character" if code < 0x20 or 0x7F <= code < 0xA0 else "non-printable character")
        problems.append(f"{source}:{line}: (recipe): {name} U+{code:04X} at column {m.start() - start_of_line + 1} is not allowed "
                        "in YAML; delete it (it is invisible: retype the line if unsure)")
        end_of_line = text.find("\n", m.start())
        if end_of_line < 0:
            break
        pos = counted = end_of_line  # the next search starts on the next line; its newline is counted then
    return problems


def unsafe_text(value) -> str | None:
    """Why a string value (or key) cannot stay in a recipe, or None. YAML's double-quoted escapes
    ("\\e]0;...", "\\u202e") make control and bidi characters the file itself never shows; echoed,
    they retitle or recolour the terminal or reorder the text. Tabs and newlines are fine."""
    if not isinstance(value, str):
        return None
    from sftcore.errors import UNSAFE_CHARS

    m = next((m for m in UNSAFE_CHARS.finditer(value) if m.group() not in "\t\n"), None)
    if m is None:
        return None
    code = ord(m.group())
    name = _CONTROL_NAMES.get(code, "bidi control" if code > 0x9F else "control character")
    return (f"{name} U+{code:04X} (from a YAML escape) is not allowed in a recipe; delete the escape "
            f"(at character {m.start() + 1})")


# YAML 1.1 reads these unquoted words as booleans; YAML 1.2 readers and people read them as text.
_YAML11_BOOLS = {"yes", "no", "on", "off"}  # what PyYAML resolves as bool besides true/false


def yaml11_bool(node: yaml.ScalarNode, value) -> str | None:
    """`packing: yes` / `on` / `off`: PyYAML reads a boolean silently; a recipe wants true or false."""
    if not isinstance(value, bool) or node.style not in (None, "") or node.value.lower() not in _YAML11_BOOLS:
        return None
    return (f"{node.value!r} is {str(value).lower()} to YAML 1.1 readers but text to YAML 1.2 ones; "
            f"write true or false (or quote it if you mean the text)")


MAX_DIGITS = 100  # no recipe setting needs more; Python refuses to read ints past 4,300 digits anyway
_DECIMAL_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")


def number_problem(node: yaml.ScalarNode, loader: yaml.SafeLoader) -> str | None:
    """Why an unquoted number must be rewritten, or None.

    PyYAML follows YAML 1.1, where `010` is octal 8, `4:16` is base 60 (256), `1_000` is 1000 and
    0x/0b are hex and binary; YAML 1.2 readers (and people) read 10, text and text. Reading any of
    them silently would train with a number nobody wrote, so each is an error with the decimal
    to write instead. Quoted values are text and never reach here as numbers. `loader` is the
    recipe's loader, whose resolver and constructor decide what the plain value means.
    """
    if node.style or not isinstance(node, yaml.ScalarNode):  # plain: None (PyYAML) or "" (libyaml)
        return None
    text = node.value.strip()
    if node.tag == _STD + "str":
        problem = yaml12_number_problem(text)
    elif node.tag in (_STD + "int", _STD + "float"):
        problem = _yaml11_number_problem(node, text, loader)
    else:
        return None
    if problem and loader.resolve(yaml.ScalarNode, node.value, (True, False)) != node.tag:
        return None  # an explicit tag (`!!int lots`, `!!str 010`): the tag says what is meant; the constructor judges it
    return problem


def _yaml11_number_problem(node: yaml.ScalarNode, text: str, loader: yaml.SafeLoader) -> str | None:
    if len(text) > MAX_DIGITS:
        digits = sum(ch.isdigit() for ch in text)
        if digits > MAX_DIGITS:
            return f"is far too large, got a {digits:,}-digit number; no setting needs that many digits, check for a typo"
    body = text.lstrip("+-")
    if node.tag == _STD + "float" and ":" not in body and "_" not in body:
        return None
    if node.tag == _STD + "int" and _DECIMAL_INT.match(text):
        return None
    try:
        value = loader.construct_object(node, deep=True)
    except Exception:  # e.g. `0b2`: the resolver matched it but it cannot be read
        return f"{short(text)} is not a number YAML reads the same everywhere; write a plain decimal, or quote it if it is text"
    if ":" in body:
        read, fix = f"as base 60 (like a time), {value!r}, and YAML 1.2 as text", f'write {value!r}, or quote it ("{short(text)}") if it is text'
    elif "_" in body:
        read, fix = f"as {value!r}, and YAML 1.2 as text", f"write {value!r} without the '_', or quote it if it is text"
    elif body[:2].lower() == "0x":
        read, fix = f"as hexadecimal {value!r}", f"write {value!r} in decimal, or quote it if it is text"
    elif body[:2].lower() == "0b":
        read, fix = f"as binary {value!r}", f"write {value!r} in decimal, or quote it if it is text"
    else:  # a leading zero: octal in YAML 1.1, decimal in YAML 1.2
        read = f"as octal {value!r}, and YAML 1.2 as {int(text, 10)!r}"
        fix = "write the number you mean without the leading zero, or quote it if it is text"
    return f"YAML 1.1 reads {short(text)} {read}; {fix}"


_YAML12_INT = re.compile(r"^[-+]?[0-9]+$|^0o[0-7]+$")
_YAML12_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")


def yaml12_number_problem(text: str) -> str | None:
    """A plain value PyYAML reads as text but YAML 1.2 reads as a number (`09`, `0o17`, `-.5`)."""
    if len(text) > MAX_DIGITS + 10 or not (_YAML12_INT.match(text) or _YAML12_FLOAT.match(text)):
        return None
    if text.startswith("0o"):
        number: Any = int(text[2:], 8)
    elif _YAML12_INT.match(text):
        number = int(text)
    else:
        number = float(text)
    return (f"YAML readers disagree on {text} (YAML 1.1 reads text, YAML 1.2 the number {number!r}); "
            f"write {number!r}, or quote it if it is text")


# --------------------------------------------------------------------------------------------
# Local data paths

LOCAL_DATA_SUFFIXES = (".jsonl", ".json", ".parquet")  # the data files jobs/rows.py reads
DATA_SCAN_LIMIT = 10_000  # entries under a data directory; past this it is not a directory of data files


def data_path_problem(lp: Path) -> str | None:
    """Why local data path `lp` is not a data file or a directory of data files, or None.

    The job reads every data file under a directory (jobs/rows.py: recursively, asking each entry
    whether it is a file), so what is checked here is what it will meet: a readable regular file,
    or a bounded, readable tree holding at least one. `path: /` or `~` fails fast on the bound
    instead of walking the disk (or, later, crashing on /proc).
    """
    kinds = ", ".join(LOCAL_DATA_SUFFIXES[:-1]) + " or " + LOCAL_DATA_SUFFIXES[-1]
    try:
        st = os.stat(lp)
    except (FileNotFoundError, NotADirectoryError):
        return f"local file not found: {lp}; fix the path (relative to the recipe) or use a hub id OWNER/NAME"
    except OSError as exc:
        return f"cannot look at {lp} ({exc.strerror or type(exc).__name__}); fix the path or its permissions"
    if stat.S_ISDIR(st.st_mode):
        return _data_dir_problem(lp, kinds)
    if lp.suffix not in LOCAL_DATA_SUFFIXES:
        what = f"is a {lp.suffix} file" if lp.suffix else "has no file suffix"
        return f"{lp} {what}; use {kinds} data (or a directory of such files)"
    return _data_file_problem(lp, st)


def _data_file_problem(f: Path, st: os.stat_result) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in FILE_KINDS if test(st.st_mode)), "special file")
        return f"{f} is a {kind}, not a regular file; data is read only from regular files: save it to one"
    if not os.access(f, os.R_OK):
        return f"cannot read {f} (permission denied); fix its permissions"
    return None


PSEUDO_FS = ("/proc", "/sys", "/dev")  # kernel views, not files: walking them gives a different answer each time


def _system_path(path: Path) -> str | None:
    """The real path when `path` lies in /proc, /sys or /dev, else None."""
    real = os.path.realpath(path)
    return real if any(real == root or real.startswith(root + "/") for root in PSEUDO_FS) else None


def local_bucket_problem(lp: Path) -> str | None:
    """Why local output.bucket `lp` cannot hold checkpoints and results, or None: it must be a
    writable directory, or one that can be made under a writable directory. `/dev/null` or
    `/etc/passwd` were accepted and the job failed hours later (or wrote into nothing)."""
    real = _system_path(lp)
    if real:
        return f"{lp} is a system path ({real}), not a directory for checkpoints; use a bucket URI or a directory of yours"
    probe = lp
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        st = os.stat(probe)
    except OSError as exc:
        return f"cannot look at {probe} ({exc.strerror or type(exc).__name__}); fix the path or its permissions"
    if not stat.S_ISDIR(st.st_mode):
        kind = next((name for test, name in FILE_KINDS if test(st.st_mode)), "file")
        return (f"{probe} is a {kind}, not a directory: checkpoints and results need a directory; "
                "use a bucket URI (gs://, s3://) or a directory path")
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by you; use a bucket URI or a directory you can write"
    return None


def tasks_dir_problem(lp: Path) -> str | None:
    """Why eval.tasks_dir `lp` is not a directory of lm-eval task YAMLs, or None (bounded scan,
    never /proc, /sys or /dev, which lm-eval would walk for ever or crash on)."""
    real = _system_path(lp)
    if real:
        return f"{lp} is a system directory ({real}), not lm-eval task YAMLs; point at your tasks directory"
    if not os.path.isdir(lp):  # False, not a crash, on EACCES
        return f"directory not found: {lp}; fix the path (relative to the recipe)"
    seen, pending = 0, [lp]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                listed = list(entries)
        except OSError as exc:
            return f"cannot list {lp} ({exc.strerror or type(exc).__name__}); fix its permissions"
        seen += len(listed)
        if seen > DATA_SCAN_LIMIT:
            return f"{lp} holds more than {DATA_SCAN_LIMIT:,} entries; point at the directory of your task YAMLs"
        for entry in listed:
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
            elif entry.name.endswith((".yaml", ".yml")):
                return None
    return f"{lp} holds no task .yaml files; point eval.tasks_dir at the directory of your lm-eval task YAMLs"


def _data_dir_problem(directory: Path, kinds: str) -> str | None:
    real = os.path.realpath(directory)
    if any(real == root or real.startswith(root + "/") for root in PSEUDO_FS):
        return f"directory {directory} is a system directory ({real}), not data; point at the data files or a directory of them"
    seen, found = 0, False
    pending = [directory]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as entries:
                listed = list(entries)
        except OSError as exc:
            return (f"cannot list {current} ({exc.strerror or type(exc).__name__}) under data directory {directory}; "
                    "fix its permissions or point at a directory holding only the data")
        seen += len(listed)
        if seen > DATA_SCAN_LIMIT:
            return (f"directory {directory} holds more than {DATA_SCAN_LIMIT:,} entries; every {kinds} file under it "
                    "would be read as training data: point at the data files or a directory of them")
        for entry in listed:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                    continue
                is_data = Path(entry.name).suffix in LOCAL_DATA_SUFFIXES
                if is_data or entry.is_symlink():
                    st = entry.stat()  # follows a symlink, as the job's is_file() does
                    problem = _data_file_problem(Path(entry.path), st) if is_data and not stat.S_ISDIR(st.st_mode) else None
                    if problem:
                        return problem
                    found = found or (is_data and stat.S_ISREG(st.st_mode))
            except FileNotFoundError:  # a dangling symlink: the job skips it too
                continue
            except OSError as exc:
                return (f"cannot look at {entry.path} ({exc.strerror or type(exc).__name__}) under data directory "
                        f"{directory}; fix its permissions or point at a directory holding only the data")
    if not found:
        return f"directory {directory} has no {kinds} file; point at the data files or a directory of them"
    return None


class Located:
    """Plain data plus a map from key path to the line of that key (1-based): built by the loader,
    read by the messages that name a line."""

    def __init__(self) -> None:
        self.lines: dict[tuple, int] = {}
        # (path, message, line or None: the line of the key at `path`)
        self.problems: list[tuple[tuple, str, int | None]] = []
        self.rejected: list[tuple] = []  # paths whose value was reported; pydantic stays quiet there
        # Nodes built so far, and how many were built again because an alias repeated them: only
        # the repeats measure an alias expansion (a long file of plain keys has none).
        self.seen: set[int] = set()
        self.repeats = 0
