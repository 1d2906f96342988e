"""Hostile recipes: the mutant tally and the worst-case wall time of `sftlaunch validate`.

Why: the contract is that every bad recipe is a one-line `file:line` error (exit 2) or is
accepted, never an internal error, and never a hang. This prints (1) for N seeded mutants of the
shipped recipes (tests/launcher/recipe_mutants.py), how many each loader entry point (load_recipe,
validate, plan, render) refused cleanly, accepted, or failed on internally; and (2) the wall time
of a whole `sftlaunch validate FILE` process on hostile files at and past the 1 MiB limit (a FIFO,
/dev/zero, 30 MB, 1 MiB of keys, brackets, control characters, digits, aliases, duplicate keys, many
sources); and (3) for hostile values (escapes, bidi, `yes`/`on`, a device or file as the bucket,
/proc as tasks_dir) the exit codes of validate and preflight and whether a raw control or bidi
character reached the output. Prints figures; asserts nothing.

    python bench/hostile_inputs.py [--mutants 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sftcore.contract import Env  # noqa: E402

MIB = 2**20


def hostile_files(d: Path) -> list[tuple[str, Path]]:
    """(label, path) of files built to be slow or to hang; each 1 MiB at most unless it is about the limit."""
    tiny = (REPO / "recipes" / "tiny-local.yaml").read_text()

    def fill(name: str, head: str, unit: str, tail: str = "") -> Path:
        p = d / name
        body = unit * ((MIB - len(head) - len(tail) - 16) // len(unit))
        p.write_text(head + body + tail)
        return p

    fifo = d / "fifo.yaml"
    os.mkfifo(fifo)
    big = d / "30mb.yaml"
    with open(big, "w") as f:
        f.write("name: x\n" + "# padding\n" * 3_000_000)
    flat = d / "flat-keys.yaml"
    flat.write_text(tiny + "".join(f"k{i}: {i}\n" for i in range(200_000))[: MIB - len(tiny) - 16].rsplit("\n", 1)[0] + "\n")
    nested = d / "nested-keys.yaml"
    nested.write_text(tiny + "extra:\n" + "".join(f"  k{i}: {i}\n" for i in range(200_000))[: MIB - len(tiny) - 30].rsplit("\n", 1)[0] + "\n")
    sources = d / "many-sources.yaml"
    sources.write_text(tiny.replace("    - {path: data/tiny-task/train.jsonl, split: train, format: alpaca}\n", "".join(
        f"    - {{path: /usr/lib/d{i}, format: text}}\n" for i in range(30_000))[: MIB - len(tiny) - 16].rsplit("\n", 1)[0] + "\n"))
    sixty_four = d / "64-big-dirs.yaml"  # the most sources allowed, each a different large directory
    dirs = _large_directories(64)
    sixty_four.write_text(tiny.replace("    - {path: data/tiny-task/train.jsonl, split: train, format: alpaca}\n", "".join(
        f"    - {{path: {p}, format: text}}\n" for p in dirs)))
    return [
        ("FIFO (mkfifo r.yaml)", fifo),
        ("/dev/zero", Path("/dev/zero")),
        ("30 MB file", big),
        ("1 MiB: ~100,000 flat unknown keys", flat),
        ("1 MiB: ~80,000 keys in one section", nested),
        ("1 MiB: one 1 MiB string", fill("long-string.yaml", "name: ", "a")),
        ("1 MiB: one 1 MiB integer", fill("long-int.yaml", "name: x\nseed: ", "9")),
        ("1 MiB of '['", fill("brackets.yaml", "name: ", "[")),
        ("1 MiB of '{a: '", fill("braces.yaml", "name: ", "{a: ")),
        ("1 MiB of control characters", fill("control.yaml", "name: ", "\x07")),
        ("1 MiB of duplicate keys", fill("dupes.yaml", "", "name: x\n")),
        ("1 MiB of aliases to one anchor", fill("aliases.yaml", "a: &a [x, y, z]\nb: [", "*a, ", "]\n")),
        ("alias bomb (10^9 values)", _write(d / "bomb.yaml", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"a{i + 1}: &a{i + 1} [{', '.join([f'*a{i}'] * 10)}]\n" for i in range(9)))),
        ("1 MiB: 30,000 data sources", sources),
        ("64 sources, each a different large dir", sixty_four),
    ]


def _large_directories(n: int) -> list[str]:
    """Up to n distinct real directories, largest trees first: system and Python install folders."""
    roots = ["/", "/usr", "/usr/lib", "/usr/share", "/usr/include", "/usr/bin", "/proc", "/sys", "/sys/devices",
             "/sys/bus", "/etc", "/var/lib", "/usr/lib/x86_64-linux-gnu", "/usr/share/doc", "/usr/share/locale",
             sys.prefix, sys.base_prefix]
    site = Path(os.__file__).parent
    roots += [str(site), str(site.parent)]
    packages = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    if packages.is_dir():
        roots += [str(packages)] + sorted(str(p) for p in packages.iterdir() if p.is_dir() and not p.name.endswith("-info"))
    seen, out = set(), []
    for r in roots:
        real = os.path.realpath(r)
        if os.path.isdir(real) and real not in seen:
            seen.add(real)
            out.append(real)
    return out[:n]


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def time_validate(path: Path, runs: int, env: dict) -> tuple[float, float, int, str]:
    """(median s, max s, exit code, first line of output) of `python -m launcher.cli validate path`."""
    times, code, first = [], 0, ""
    for _ in range(runs):
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "launcher.cli", "validate", str(path)], capture_output=True,
                                  text=True, cwd=REPO, env=env, timeout=600)
            code, first = proc.returncode, (proc.stderr or proc.stdout).strip().splitlines()[0][:110]
        except subprocess.TimeoutExpired:
            code, first = -1, "TIMED OUT after 600 s"
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times), code, first


# values that YAML escapes smuggle in, YAML 1.1 booleans, places that are not places.
ISSUE21 = [
    ("model.id with \\e]0; and \\a (OSC title)", "  id: sftlaunch/tiny-llama", '  id: "\\e]0;pwned\\a\\e[31mred"'),
    ("key with \\u202e (bidi override)", "  seq_len: 256", '  "seq\\u202e_len": 256'),
    ("packing: yes", "  packing: true", "  packing: yes"),
    ("packing: on", "  packing: true", "  packing: on"),
    ("output.bucket: /dev/null", "  bucket: null", "  bucket: /dev/null"),
    ("output.bucket: /etc/passwd", "  bucket: null", "  bucket: /etc/passwd"),
    ("eval.tasks_dir: /proc", "  tasks_dir: ../jobs/tasks", "  tasks_dir: /proc"),
]
_RAW = ("\x1b", "\x07", "\u202e")


def issue21_cases(workdir: Path, env: dict) -> None:
    """Exit code of `validate` and `preflight` (whole processes) on each case, and whether any
    output carried a raw control or bidi character to the terminal."""
    tiny = (REPO / "recipes" / "tiny-local.yaml").read_text().replace(
        "tasks_dir: ../jobs/tasks", f"tasks_dir: {REPO / 'jobs' / 'tasks'}")
    (workdir / "data").mkdir(exist_ok=True)
    (workdir / "data" / "tiny-task").symlink_to(REPO / "recipes" / "data" / "tiny-task")
    print(f"\n{'hostile value':<40} {'validate':>8} {'preflight':>9} {'raw':>4}  first line")
    for label, old, new in ISSUE21:
        text = tiny.replace(old.replace("../jobs/tasks", str(REPO / "jobs" / "tasks")), new, 1)
        path = _write(workdir / "case.yaml", text)
        codes, outputs = [], ""
        for command in ("validate", "preflight"):
            proc = subprocess.run([sys.executable, "-m", "launcher.cli", command, str(path)], capture_output=True,
                                  text=True, cwd=REPO, env=env, timeout=300)
            codes.append(proc.returncode)
            outputs += proc.stdout + proc.stderr
        first = next((ln for ln in outputs.splitlines() if "case.yaml:" in ln), outputs.strip()[:100])
        raw = "yes" if any(ch in outputs for ch in _RAW) else "no"
        print(f"{label:<40} {codes[0]:>8} {codes[1]:>9} {raw:>4}  {first.split('case.yaml:', 1)[-1][:90]}")


def tally_mutants(n: int, workdir: Path) -> None:
    from click.testing import CliRunner

    from launcher.cli import cli
    from tests.launcher.recipe_mutants import classify_cli, classify_load, mutants, write

    counts: collections.Counter = collections.Counter()
    internal, slowest = [], (0.0, "")
    runner = CliRunner()
    start = time.perf_counter()
    for name, content in mutants(n):
        path = write(workdir / "mutants", name, content)
        verdict, detail = classify_load(path)
        counts["load_recipe", verdict] += 1
        internal += [f"{name} load_recipe: {detail}"] if verdict == "internal" else []
        for command in ("validate", "plan", "render"):
            t0 = time.perf_counter()
            result = runner.invoke(cli, [command, str(path)])
            if command == "validate":
                slowest = max(slowest, (time.perf_counter() - t0, name))
            cli_verdict, cli_detail = classify_cli(result, path, verdict == "accepted")
            counts[command, cli_verdict] += 1
            internal += [f"{name} {command}: {cli_detail}"] if cli_verdict == "internal" else []
        path.unlink()
    wall = time.perf_counter() - start
    print(f"\n{n} mutants of the {len(list((REPO / 'recipes').glob('*.yaml')))} shipped recipes (seed 14), "
          f"{wall:.0f} s in all; slowest in-process validate {slowest[0]:.2f} s ({slowest[1]})")
    print(f"{'entry point':<12} {'clean error':>12} {'accepted':>9} {'internal':>9}")
    for entry in ("load_recipe", "validate", "plan", "render"):
        print(f"{entry:<12} {counts[entry, 'clean']:>12} {counts[entry, 'accepted']:>9} {counts[entry, 'internal']:>9}")
    for line in internal[:20]:
        print("  internal:", line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        env = {**os.environ, "HOME": str(home), Env.HOME: str(home / ".sftlaunch"),
               "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        os.environ.update({k: env[k] for k in ("HOME", Env.HOME, "HF_HUB_OFFLINE")})
        files = Path(tmp) / "hostile"
        files.mkdir()
        print(f"`sftlaunch validate FILE`, whole process, median and max of {args.runs} runs")
        print(f"{'file':<38} {'median s':>9} {'max s':>7} exit  first line")
        worst = (0.0, "")
        for label, path in hostile_files(files):
            median, top, code, first = time_validate(path, args.runs, env)
            worst = max(worst, (top, label))
            print(f"{label:<38} {median:>9.2f} {top:>7.2f} {code:>4}  {first}")
        print(f"worst case: {worst[0]:.2f} s ({worst[1]})")
        issue21_cases(Path(tmp), env)
        if args.mutants:
            tally_mutants(args.mutants, Path(tmp))


if __name__ == "__main__":
    main()
