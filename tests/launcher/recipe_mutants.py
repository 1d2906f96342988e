"""Seeded, deterministic mutants of the shipped recipes, for the property test and the bench.

Each mutant is a shipped recipe with one to three edits a hostile tester (or a slip of the
keyboard) makes: delete, duplicate or re-indent a line, retype a value, misspell a key, inject a
control character or invalid UTF-8, truncate, swap numbers for YAML 1.1 surprises or huge ones,
nest deeply, add aliases, point paths at devices and system directories. `classify` runs one
loader entry point and says whether the result was a clean error, an acceptance or an internal
error; the contract is that the last never happens.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))

VALUES = [
    "", "null", "~", "true", "no", "[]", "{}", "[1, 2]", "{a: 1}", "-1", "0", "1.5", "1e400", "-.inf", ".nan",
    "'text'", '"8"', "010", "0o17", "09", "4:16", "1:30.5", "0x1F", "0b101", "1_000", "9" * 5000, "a" * 3000,
    "2023-01-01", "!!python/object/apply:os.system ['true']", "!!binary aGVsbG8=", "!!int lots", "*nowhere",
    "&anchor x", "[[[[[[[[", "{{{{", "'unterminated", "\"bad \\q escape\"", "|\n  block\n  text", ">-", "@at",
    "`tick`", "%percent", "- list item", "? complex", "H100:99999999999999999999", "auto", "local", "/",
    "/dev/zero", "/proc/self/environ", "../../../../etc/passwd", "~/nope.jsonl", "gs://", "s3://b/x y",
]
CONTROL = ["\x00", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\ufffe", "\u202e", "\t"]
KEYS = ["name", "model", "id", "method", "lora", "data", "sources", "path", "format", "train", "epochs",
        "resources", "clouds", "gpu", "output", "bucket", "eval", "preset", "<<", "? x", "[k]", "{k: v}", "123"]


def _lines(text: str) -> list[str]:
    return text.split("\n")


def delete_line(rng: random.Random, text: str) -> str:
    lines = _lines(text)
    del lines[rng.randrange(len(lines))]
    return "\n".join(lines)


def duplicate_line(rng: random.Random, text: str) -> str:
    lines = _lines(text)
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i])
    return "\n".join(lines)


def reindent(rng: random.Random, text: str) -> str:
    lines = _lines(text)
    i = rng.randrange(len(lines))
    lines[i] = rng.choice(["", " ", "  ", "    ", "\t"]) + lines[i].lstrip() if rng.random() < 0.5 else " " + lines[i]
    return "\n".join(lines)


def retype_value(rng: random.Random, text: str) -> str:
    spots = [m for m in re.finditer(r"(?m)(:\s)([^\n#]*)$", text)]
    if not spots:
        return text
    m = rng.choice(spots)
    return text[: m.start(2)] + rng.choice(VALUES) + text[m.end(2):]


def rename_key(rng: random.Random, text: str) -> str:
    spots = [m for m in re.finditer(r"(?m)^(\s*(?:- )?)([A-Za-z_]+)(:)", text)]
    if not spots:
        return text
    m = rng.choice(spots)
    key = m.group(2)
    new = rng.choice([key[:-1], key + "s", key.upper(), key[::-1], rng.choice(KEYS)])
    return text[: m.start(2)] + new + text[m.end(2):]


def inject_control(rng: random.Random, text: str) -> str:
    i = rng.randrange(len(text) + 1)
    return text[:i] + rng.choice(CONTROL) + text[i:]


def truncate(rng: random.Random, text: str) -> str:
    return text[: rng.randrange(len(text) + 1)]


def swap_number(rng: random.Random, text: str) -> str:
    spots = list(re.finditer(r"(?<![\w.-])\d+(?:\.\d+)?(?:e-?\d+)?(?![\w.-])", text))
    if not spots:
        return text
    m = rng.choice(spots)
    new = rng.choice(["0", "-1", "010", "0x10", "4:16", "1_0", "1e999", "99999999999999999999", "9" * 4400,
                      "2.5", "-0.0", "1e-999", str(rng.randrange(1, 10**6))])
    return text[: m.start()] + new + text[m.end():]


def deep_nesting(rng: random.Random, text: str) -> str:
    depth = rng.choice([20, 33, 100, 1000, 5000])
    closed = rng.random() < 0.5
    value = "[" * depth + ("]" * depth if closed else "")
    if rng.random() < 0.5:
        value = "".join(f"{'  ' * k}k{k}:\n" for k in range(min(depth, 200))) + "  " * min(depth, 200) + "v: 1"
        return text + "\nnested:\n" + "\n".join("  " + ln for ln in value.split("\n")) + "\n"
    return text + f"\nnested: {value}\n"


def aliases(rng: random.Random, text: str) -> str:
    choice = rng.randrange(4)
    if choice == 0:
        return text + "\nloop: &a [*a]\n"
    if choice == 1:  # a small bomb: 10^k copies
        k = rng.choice([2, 4, 6, 9])
        bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"a{i + 1}: &a{i + 1} [{', '.join([f'*a{i}'] * 10)}]\n" for i in range(k))
        return text + "\n" + bomb
    if choice == 2:
        return text + "\nbase: &b {r: 8}\nlora2:\n  <<: *b\n"
    return text.replace("name:", "name: &n", 1) + "\nalias_of_name: *n\n"


def many_keys(rng: random.Random, text: str) -> str:
    n = rng.choice([10, 500, 5000])
    return text + "\n" + "".join(f"extra_key_{i}: {i}\n" for i in range(n))


def weird_path(rng: random.Random, text: str) -> str:
    new = rng.choice(["/", "/proc", "/dev/zero", "/dev/null", "/etc/passwd", "/etc", "/nonexistent/x.jsonl",
                      "./", "~", "data", "data/tiny-task/train.jsonl", "x" * 300 + ".jsonl", "a/b/c"])
    return re.sub(r"(?m)(path: )([^,}\n]+)", lambda m: m.group(1) + new, text, count=1)


def invalid_utf8(rng: random.Random, text: str) -> bytes:
    raw = text.encode()
    i = rng.randrange(len(raw) + 1)
    return raw[:i] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]) + raw[i:]


TEXT_MUTATIONS: list[Callable[[random.Random, str], str]] = [
    delete_line, duplicate_line, reindent, retype_value, retype_value, rename_key, inject_control, truncate,
    swap_number, swap_number, deep_nesting, aliases, many_keys, weird_path,
]


def mutants(n: int = 1000, seed: int = 14) -> Iterator[tuple[str, str | bytes]]:
    """(name, content) for n mutants, the same every time for the same seed."""
    rng = random.Random(seed)
    texts = [(p.stem, p.read_text()) for p in SHIPPED]
    for i in range(n):
        stem, text = texts[i % len(texts)]
        ops = [rng.choice(TEXT_MUTATIONS) for _ in range(rng.choice([1, 1, 2, 3]))]
        out: str | bytes = text
        for op in ops:
            out = op(rng, out)
        names = [op.__name__ for op in ops]
        if rng.random() < 0.03:
            out, names = invalid_utf8(rng, out), names + ["invalid_utf8"]
        yield f"{i:04d}-{stem}-{'+'.join(names)}", out


def write(directory: Path, name: str, content: str | bytes) -> Path:
    """The mutant beside the shipped recipes' data (its relative paths resolve as the original's)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "data"
    if not data.exists():
        data.symlink_to(REPO / "recipes" / "data")
    jobs = directory.parent / "jobs"
    if not jobs.exists():
        jobs.symlink_to(REPO / "jobs")
    p = directory / f"{name[:80]}.yaml"
    p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return p


LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+): ")


def classify_load(path: Path) -> tuple[str, str]:
    """("accepted" | "clean" | "internal", detail) for sftcore.recipe.load_recipe."""
    from sftcore.errors import RecipeError
    from sftcore.recipe import load_recipe

    try:
        load_recipe(path)
    except RecipeError as exc:
        bad = [p for p in exc.problems if not (LOCATED.match(p) and LOCATED.match(p).group("file") == str(path))
               or "\n" in p]
        return ("internal", f"unlocated: {bad[0][:300]!r}") if bad or not exc.problems else ("clean", exc.problems[0][:200])
    except Exception as exc:  # noqa: BLE001 - exactly what the contract forbids
        return "internal", f"{type(exc).__name__}: {str(exc)[:300]}"
    return "accepted", ""


def classify_cli(result, path: Path, loaded: bool) -> tuple[str, str]:
    """The same for a CliRunner result of validate/plan/render. A recipe that loads may still be
    refused by the planner (exit 2 naming the recipe); one that does not load must show its
    problems as `file:line:`."""
    out = result.output
    if result.exit_code == 0:
        return "accepted", ""
    if result.exit_code != 2 or "internal error" in out or "Traceback" in out:
        return "internal", f"exit {result.exit_code}: {out[-400:]!r}"
    if not loaded:
        lines = [ln for ln in out.splitlines() if ln.strip()]
        located = [ln for ln in lines if LOCATED.match(ln) and LOCATED.match(ln).group("file") == str(path)]
        if not located:
            return "internal", f"exit 2 without {path.name}:LINE: {out[-400:]!r}"
    return "clean", out.splitlines()[0][:200] if out else ""
