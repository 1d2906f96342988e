"""Hostile and mistaken inputs: every one is a one-line error naming the file, line or
flag and the fix, exit 2, never a hang, never `internal error`, never a write outside the home.

Hang-prone cases (a FIFO, /dev/zero, a 30 MB file) run under `deadline`, which interrupts a
blocked call with SIGALRM so a regression fails the test instead of stalling the suite.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import cli
from sftcore.errors import RecipeError
from sftcore.recipe import load_recipe
from sftcore.recipe.input import DATA_SCAN_LIMIT, MAX_RECIPE_BYTES

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny-local.yaml"
BIG = REPO / "recipes" / "llama2-70b-qlora.yaml"
# Every command that loads a recipe, with what it needs to get that far.
LOADERS = [["validate"], ["render"], ["plan"], ["up", "--dry-run"], ["data-preview"]]


class Hung(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: int):
    def fire(*_):
        raise Hung(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _cli(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _clean_exit_2(res) -> None:
    assert res.exit_code == 2, res.output
    assert "internal error" not in res.output and "Traceback" not in res.output, res.output


def _recipe(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    """`text` written beside a copy of the tiny recipe's data, so its relative paths resolve."""
    (tmp_path / "data").mkdir(exist_ok=True)
    link = tmp_path / "data" / "tiny-task"
    if not link.exists():
        link.symlink_to(REPO / "recipes" / "data" / "tiny-task")
    p = tmp_path / name
    p.write_text(text.replace("tasks_dir: ../jobs/tasks", f"tasks_dir: {REPO / 'jobs' / 'tasks'}"))
    return p


def _tiny(tmp_path: Path, old: str | None = None, new: str | None = None) -> Path:
    text = TINY.read_text()
    if old is not None:
        assert old in text, old
        text = text.replace(old, new, 1)
    return _recipe(tmp_path, text)


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if needle in ln)


def test_the_tiny_copy_is_valid(tmp_path):
    assert load_recipe(_tiny(tmp_path)).name == "tiny-local"


# ---------------------------------------------------------------------------------------------
# Only regular files, at most 1 MiB


@pytest.mark.parametrize("command", LOADERS, ids=[c[0] for c in LOADERS])
def test_a_fifo_recipe_is_refused_at_once_by_every_command(tmp_path, command):
    fifo = tmp_path / "r.yaml"
    os.mkfifo(fifo)
    with deadline(30):
        res = _cli(command[0], fifo, *command[1:])
    _clean_exit_2(res)
    assert f"{fifo}:1: (recipe): is a named pipe (FIFO), not a regular file" in res.output


def test_devices_and_sockets_are_refused(tmp_path):
    import socket

    sock_path = tmp_path / "s.yaml"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        for path, kind in (("/dev/zero", "character device"), ("/dev/urandom", "character device"), (sock_path, "socket")):
            with deadline(30):
                res = _cli("validate", path)
            _clean_exit_2(res)
            assert f"{path}:1: (recipe): is a {kind}, not a regular file" in res.output
    finally:
        sock.close()


def test_an_oversized_recipe_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "w") as f:
        f.write("name: x\n" + "# padding\n" * 3_000_000)  # 30 MB
    with deadline(30):
        res = _cli("validate", big)
    _clean_exit_2(res)
    assert f"{big}:1: (recipe): 30,000,008 bytes, over the 1 MiB limit" in res.output
    # Just under the limit is read (and judged on its content).
    ok = tmp_path / "ok.yaml"
    ok.write_text(TINY.read_text() + "#" * (MAX_RECIPE_BYTES - len(TINY.read_bytes()) - 1) + "\n")
    assert ok.stat().st_size == MAX_RECIPE_BYTES
    with pytest.raises(RecipeError) as exc:
        load_recipe(ok)
    assert "limit" not in str(exc.value)  # only tiny-local's relative paths fail here


def test_a_recipe_that_grows_past_the_limit_after_stat_is_refused(tmp_path, monkeypatch):
    """stat said small, the read finds more (a file being written, /proc): the read is bounded too."""
    from sftcore.recipe import input as recipe_input

    p = tmp_path / "r.yaml"
    p.write_text("name: x\n" * 10)
    real_fstat = os.fstat
    monkeypatch.setattr(recipe_input, "MAX_RECIPE_BYTES", 40)
    monkeypatch.setattr(recipe_input.os, "fstat", lambda fd: real_fstat(fd))
    with pytest.raises(RecipeError, match=r"r.yaml:1: \(recipe\): (more than 40|80) bytes, over the"):
        load_recipe(p)


def test_directory_and_missing_parent(tmp_path):
    (tmp_path / "d.yaml").mkdir()
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(RecipeError, match=r"d.yaml:1: \(recipe\): is a directory; pass a recipe .yaml file"):
        load_recipe(tmp_path / "d.yaml")
    _clean_exit_2(res := _cli("validate", tmp_path / "f.txt" / "r.yaml"))
    assert "r.yaml:1: (recipe): a part of the path before the file name is a file, not a directory" in res.output


# ---------------------------------------------------------------------------------------------
# Characters, numbers, sizes


def test_a_control_character_is_a_located_error(tmp_path):
    p = _tiny(tmp_path, "name: tiny-local", "name: tiny\x07local")
    res = _cli("validate", p)
    _clean_exit_2(res)
    line = _line_of(p, "name: tiny")
    assert f"{p}:{line}: (recipe): BEL U+0007 at column 11 is not allowed in YAML; delete it" in res.output


def test_control_characters_on_several_lines_are_each_reported(tmp_path):
    p = _recipe(tmp_path, "name: a\x1bb\nmethod: full\x7f\nx: \x0c\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    assert [q.split(": (recipe): ")[0] for q in exc.value.problems] == [f"{p}:1", f"{p}:2", f"{p}:3"]
    assert "ESC U+001B at column 8" in exc.value.problems[0] and "DEL U+007F" in exc.value.problems[1]


@pytest.mark.parametrize("old,new,field,words", [
    ("micro_batch_size: 8", "micro_batch_size: 010", "train.micro_batch_size", "YAML 1.1 reads 010 as octal 8, and YAML 1.2 as 10"),
    ("seq_len: 256", "seq_len: 4:16", "data.seq_len", "YAML 1.1 reads 4:16 as base 60 (like a time), 256"),
    ("seq_len: 256", "seq_len: 0x100", "data.seq_len", "as hexadecimal 256; write 256 in decimal"),
    ("seq_len: 256", "seq_len: 0b100000000", "data.seq_len", "as binary 256; write 256 in decimal"),
    ("seq_len: 256", "seq_len: 2_56", "data.seq_len", "reads 2_56 as 256, and YAML 1.2 as text; write 256 without the '_'"),
    ("seq_len: 256", "seq_len: 0o400", "data.seq_len", "YAML readers disagree on 0o400 (YAML 1.1 reads text, YAML 1.2 the number 256)"),
    ("seq_len: 256", "seq_len: 0256", "data.seq_len", "YAML 1.1 reads 0256 as octal 174, and YAML 1.2 as 256"),
    ("seq_len: 256", "seq_len: 0259", "data.seq_len", "YAML readers disagree on 0259"),
    ("epochs: 6", "epochs: 1:30.5", "train.epochs", "base 60 (like a time), 90.5"),
    ("learning_rate: 3.0e-3", "learning_rate: -.5", "train.learning_rate", "YAML 1.2 the number -0.5); write -0.5"),
])
def test_yaml11_number_surprises_are_errors_with_the_fix(tmp_path, old, new, field, words):
    p = _tiny(tmp_path, old, new)
    line = _line_of(p, new)
    res = _cli("validate", p)
    _clean_exit_2(res)
    assert f"{p}:{line}: {field}: " in res.output and words in res.output, res.output
    assert "quote it" in res.output and "if it is text" in res.output


def test_quoted_or_decimal_numbers_are_untouched(tmp_path):
    p = _tiny(tmp_path, "name: tiny-local", 'name: tiny-local\nimage: "010"')
    assert load_recipe(p).image == "010"
    p = _tiny(tmp_path, "micro_batch_size: 8", "micro_batch_size: +8")
    assert load_recipe(p).train.micro_batch_size == 8
    p = _tiny(tmp_path, "learning_rate: 3.0e-3", "learning_rate: 0.5e-3")
    assert load_recipe(p).train.learning_rate == 0.5e-3


def test_a_huge_integer_gives_a_short_message(tmp_path):
    p = _tiny(tmp_path, "seq_len: 256", "seq_len: " + "9" * 5000)
    res = _cli("validate", p)
    _clean_exit_2(res)
    [line] = [ln for ln in res.output.splitlines() if "seq_len" in ln]
    assert "is far too large, got a 5,000-digit number" in line and len(line) < 300, line
    # A huge value in a text field, a key or a tagged scalar: no message quotes all of it.
    for old, new in (("name: tiny-local", "name: " + "a" * 5000), ("seed: 42", "seed: 42\n  " + "k" * 5000 + ": 1"),
                     ("seq_len: 256", "seq_len: !!int " + "x" * 5000), ("method: full", "method: " + "z" * 5000)):
        res = _cli("validate", _tiny(tmp_path, old, new))
        _clean_exit_2(res)
        assert max(len(ln) for ln in res.output.splitlines()) < 600, res.output[:2000]


def test_many_plain_keys_are_not_an_alias_expansion(tmp_path):
    """Thousands of values and no alias at all (the old guard counted every value as an alias
    expansion): unknown keys, the first 50 reported; past MAX_NODES, one line saying so. Never 'aliases'."""
    from sftcore.recipe import MAX_NODES

    keys = "".join(f"k{i}: {i}\n" for i in range(100_000))
    some = _recipe(tmp_path, TINY.read_text() + "extra:\n" + "".join("  " + ln + "\n" for ln in keys.splitlines()[:4000]))
    with deadline(120):
        with pytest.raises(RecipeError) as exc:
            load_recipe(some)
    assert "alias" not in str(exc.value) and exc.value.problems[0].endswith("extra: unknown key; did you mean train?")
    flat = _recipe(tmp_path, TINY.read_text() + "".join(keys.splitlines(keepends=True)[:MAX_NODES // 2 - 100]), "flat.yaml")
    with deadline(120):
        with pytest.raises(RecipeError) as exc:
            load_recipe(flat)
    assert "alias" not in str(exc.value) and len(exc.value.problems) == 51
    assert all(": unknown key; known keys:" in p for p in exc.value.problems[:50])
    assert exc.value.problems[-1].endswith("more problems not shown; fix these first (is this really a recipe?)")
    huge = _recipe(tmp_path, TINY.read_text() + keys[: MAX_RECIPE_BYTES - 2000].rsplit("\n", 1)[0] + "\n", "huge.yaml")
    line = TINY.read_text().count("\n") + MAX_NODES // 2 - 36  # where the 10,001st value is (75 in tiny-local)
    with deadline(120):
        with pytest.raises(RecipeError) as exc:
            load_recipe(huge)
    [problem] = exc.value.problems
    assert problem.startswith(f"{huge}:") and "more than 10,000 values written out (a recipe has under 200); is this a data file?" in problem
    assert "alias" not in problem and abs(int(problem.split(":")[1]) - line) <= 1, (problem, line)


def test_real_alias_bombs_are_still_refused(tmp_path):
    bomb = "a: &a [" + ", ".join(["x"] * 10) + "]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))
    with deadline(30):
        with pytest.raises(RecipeError, match=r"r.yaml:4: \(recipe\): YAML aliases repeat more than 10,000 values"):
            load_recipe(_recipe(tmp_path, bomb))
    # A few aliases, as a user might write them, are fine.
    p = _recipe(tmp_path, TINY.read_text().replace("micro_batch_size: 8", "micro_batch_size: &mb 8")
                .replace("grad_accum: 1", "grad_accum: *mb"), "ok.yaml")
    assert load_recipe(p).train.grad_accum == 8


# ---------------------------------------------------------------------------------------------
# Data paths


@pytest.mark.parametrize("path", ["/", "/proc", "/usr"])
def test_a_system_directory_is_not_a_data_directory(tmp_path, path):
    p = _tiny(tmp_path, "path: data/tiny-task/train.jsonl", f"path: {path}")
    line = _line_of(p, f"path: {path},")
    with deadline(60):
        res = _cli("validate", p)
    _clean_exit_2(res)
    why = "is a system directory (/proc), not data" if path == "/proc" else f"holds more than {DATA_SCAN_LIMIT:,} entries"
    assert f"{p}:{line}: data.sources[0].path: directory {path} {why}" in res.output
    with deadline(60):
        res = _cli("data-preview", p)
    _clean_exit_2(res)
    assert "PermissionError" not in res.output


def test_thousands_of_sources_are_refused_without_scanning_each(tmp_path, monkeypatch):
    from sftcore.recipe import rules as recipe_module

    scanned: list = []
    monkeypatch.setattr(recipe_module, "data_path_problem", lambda lp: scanned.append(lp) or "not data")
    many = "".join(f"    - {{path: /usr/d{i}, format: text}}\n" for i in range(1000))
    p = _tiny(tmp_path, "    - {path: data/tiny-task/train.jsonl, split: train, format: dolphin}\n", many)
    with pytest.raises(RecipeError, match=r"data.sources: 1,000 sources; at most 64: put local files in one directory"):
        load_recipe(p)
    assert scanned == []
    # Within the limit, a path given twice is looked at once.
    twice = "    - {path: /usr, format: text}\n" * 3
    with pytest.raises(RecipeError):
        load_recipe(_tiny(tmp_path, "    - {path: data/tiny-task/train.jsonl, split: train, format: dolphin}\n", twice))
    assert scanned == [Path("/usr")]


def test_a_data_file_must_be_a_regular_readable_file(tmp_path):
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    p = _tiny(tmp_path, "path: data/tiny-task/train.jsonl", "path: rows.jsonl")
    with deadline(30):
        res = _cli("validate", p)
    _clean_exit_2(res)
    assert f"data.sources[0].path: {fifo} is a named pipe (FIFO), not a regular file" in res.output
    d = tmp_path / "rows"
    d.mkdir()
    (d / "a.jsonl").write_text("{}\n")
    os.mkfifo(d / "b.jsonl")
    res = _cli("validate", _tiny(tmp_path, "path: data/tiny-task/train.jsonl", "path: rows"))
    _clean_exit_2(res)
    assert f"data.sources[0].path: {d / 'b.jsonl'} is a named pipe (FIFO), not a regular file" in res.output


def test_an_unreadable_entry_in_a_data_directory_is_named(tmp_path, monkeypatch):
    """What the job's recursive read would crash on (it asks every entry is_file(); a root-owned
    /proc/1/cwd raises PermissionError) is refused at validate. Root reads everything, so the
    denial is injected at os.scandir / DirEntry.stat."""
    from sftcore.recipe import input as recipe_input

    d = tmp_path / "rows"
    (d / "locked").mkdir(parents=True)
    (d / "a.jsonl").write_text("{}\n")
    (d / "link").symlink_to(tmp_path)
    real = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(recipe_input.os, "scandir", scandir)
    p = _tiny(tmp_path, "path: data/tiny-task/train.jsonl", "path: rows")
    with pytest.raises(RecipeError, match=r"cannot list .*locked \(Permission denied\) under data directory"):
        load_recipe(p)


def test_data_preview_turns_a_late_read_error_into_exit_2(tmp_path, monkeypatch):
    """The data was valid at validate and became unreadable before it was read."""
    pytest.importorskip("transformers")
    from jobs import rows

    def denied(src, *_args, **_kwargs):
        raise PermissionError(13, "Permission denied", "/proc/1/cwd")

    monkeypatch.setattr(rows, "load_source", denied)
    res = _cli("data-preview", _tiny(tmp_path))
    _clean_exit_2(res)
    assert "data.sources: cannot read /proc/1/cwd (Permission denied)" in res.output


# ---------------------------------------------------------------------------------------------
# Flags: run ids, GPU counts, --cloud


@pytest.mark.parametrize("run_id", ["../../x", "/tmp/abs-x", "sftl-a-1a2b\nfoo: 1", "sftl-a-1a2b\n", "BAD", "",
                                    "sftl-" + "a" * 40 + "-1a2b", "sftl-a-1a2b/../../y"])
def test_render_refuses_a_bad_run_id_and_writes_nothing(tmp_path, run_id):
    home = Path(os.environ["SFTLAUNCH_HOME"])
    res = _cli("render", BIG, "--run-id", run_id)
    _clean_exit_2(res)
    assert "--run-id" in res.output and "a run id looks like sftl-NAME-1a2b" in res.output
    assert not (home / "rendered").exists()
    assert not (tmp_path / "x").exists() and not Path("/tmp/abs-x").exists()


def test_render_accepts_a_well_formed_run_id():
    res = _cli("render", BIG, "--run-id", "sftl-llama2-70b-1a2b")
    assert res.exit_code == 0, res.output
    assert "(run id sftl-llama2-70b-1a2b;" in res.output


def test_render_refuses_a_fifo_as_output(tmp_path):
    fifo = tmp_path / "out.yaml"
    os.mkfifo(fifo)
    with deadline(30):
        res = _cli("render", BIG, "-o", fifo)
    _clean_exit_2(res)
    assert f"-o {fifo}: not a regular file" in res.output


def test_run_id_rules_match_the_ids_sftlaunch_makes():
    from launcher.runid import new_run_id, run_id_problem

    for name in ("a", "tiny-local", "llama2-70b-dolphin", "x" * 20, "a--b"):
        assert run_id_problem(new_run_id(name, taken=lambda _rid: False)) is None
    assert "empty" in run_id_problem("")


@pytest.mark.parametrize("command", [["plan", BIG], ["render", BIG], ["up", BIG, "--dry-run"]], ids=["plan", "render", "up"])
@pytest.mark.parametrize("gpu,needle", [
    ("H100:99999999999999999999", "the count must be at most 16"),
    ("H100:17", "the count must be at most 16 (the most GPUs any cloud sells in one machine), got 17"),
])
def test_gpu_counts_are_bounded(command, gpu, needle):
    res = _cli(*command, "--gpu", gpu)
    _clean_exit_2(res)
    assert "--gpu" in res.output and needle in res.output


def test_recipe_gpu_count_is_bounded_with_its_line(tmp_path):
    p = _recipe(tmp_path, BIG.read_text().replace("gpu: auto", 'gpu: "A100:99999999999999999999"'))
    line = _line_of(p, "A100:9999")
    res = _cli("validate", p)
    _clean_exit_2(res)
    assert f"{p}:{line}: resources.gpu: the count must be at most 16" in res.output
    ok = _recipe(tmp_path, BIG.read_text().replace("gpu: auto", 'gpu: "A100:16"'), "ok.yaml")
    assert load_recipe(ok).resources.gpu_name_count() == ("A100", 16)


def test_up_never_silently_ignores_cloud():
    res = _cli("up", TINY, "--dry-run", "--cloud", "gcp")
    _clean_exit_2(res)
    assert "--cloud gcp" in res.output and "resources.clouds allows only local" in res.output
    res = _cli("up", BIG, "--local", "--dry-run", "--cloud", "gcp")
    _clean_exit_2(res)
    assert "--cloud gcp: --local runs on this machine; drop --cloud, or drop --local" in res.output


def test_up_never_silently_ignores_gpu_or_fallbacks_on_a_local_run():
    res = _cli("up", TINY, "--dry-run", "--gpu", "H100:1")
    _clean_exit_2(res)
    assert "--gpu H100:1: a local run uses this machine's devices; drop --gpu" in res.output
    res = _cli("up", BIG, "--local", "--dry-run", "--fallbacks", "2")
    _clean_exit_2(res)
    assert "--fallbacks 2: a local run uses this machine's devices; drop --fallbacks" in res.output


# ---------------------------------------------------------------------------------------------
# Property: mutated recipes through every loader entry point


def _mutant_run(tmp_path: Path, n: int) -> tuple[dict, list[str]]:
    from collections import Counter

    from tests.launcher.recipe_mutants import classify_cli, classify_load, mutants, write

    counts: Counter = Counter()
    internal: list[str] = []
    runner = CliRunner()
    for name, content in mutants(n):
        path = write(tmp_path / "mutants", name, content)
        with deadline(120):
            verdict, detail = classify_load(path)
            counts["load_recipe", verdict] += 1
            if verdict == "internal":
                internal.append(f"{name} load_recipe: {detail}")
            for command in ("validate", "plan", "render"):
                cli_verdict, cli_detail = classify_cli(runner.invoke(cli, [command, str(path)]), path, verdict == "accepted")
                counts[command, cli_verdict] += 1
                if cli_verdict == "internal":
                    internal.append(f"{name} {command}: {cli_detail}")
        path.unlink()
    return dict(counts), internal


def _check_mutants(counts: dict, internal: list[str], n: int) -> None:
    assert not internal, "\n".join(internal[:20])
    for entry in ("load_recipe", "validate", "plan", "render"):
        assert sum(v for (e, _), v in counts.items() if e == entry) == n
    # The mutants exercise both sides of the contract: most are refused, some still load.
    assert counts["load_recipe", "clean"] > n // 2 and counts["load_recipe", "accepted"] > 0, counts
    assert counts["validate", "accepted"] == counts["load_recipe", "accepted"], counts


def test_mutated_recipes_are_clean_errors_or_accepted_sample(tmp_path):
    """The first 40 of the seeded mutants (all 1,000 run as a slow test, and in bench/hostile_inputs.py)."""
    counts, internal = _mutant_run(tmp_path, 40)
    _check_mutants(counts, internal, 40)


@pytest.mark.slow
def test_1000_mutated_recipes_are_clean_errors_or_accepted(tmp_path):
    counts, internal = _mutant_run(tmp_path, 1000)
    _check_mutants(counts, internal, 1000)


def test_libyaml_and_pure_pyyaml_give_the_same_verdicts(tmp_path, monkeypatch):
    """The loader composes with libyaml for speed; PyYAML's pure-Python parser (a separate
    implementation, and the one used where PyYAML is built without libyaml) must reach the same
    problems on the same files. Tabs are the known exception (libyaml allows some PyYAML refuses)."""
    from sftcore.recipe import compose as recipe_module
    from tests.launcher.recipe_mutants import mutants, write

    fast = recipe_module._FastRecipeLoader
    assert fast is not None, "PyYAML without libyaml: the fast path is not under test here"
    compared = 0
    for name, content in mutants(150):
        text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
        if "\t" in text or len(content) > recipe_module.REWORD_BYTES:
            continue
        path = write(tmp_path / "m", name, content)
        verdicts = []
        for loader in (fast, None):
            monkeypatch.setattr(recipe_module, "_FastRecipeLoader", loader)
            try:
                load_recipe(path)
                verdicts.append(["accepted"])
            except RecipeError as exc:
                verdicts.append(exc.problems)
        assert verdicts[0] == verdicts[1], name
        compared += 1
    assert compared > 100


# ---------------------------------------------------------------------------------------------
# what YAML escapes smuggle in, YAML 1.1 booleans, places that are not places

_RAW = ("\x1b", "\x07", "\u202e", "\x9b")


@pytest.mark.parametrize("old,new,field,shown", [
    ("  id: sftlaunch/tiny-llama", '  id: "\\e]0;pwned\\a\\e[31mred"', "model.id", "ESC U+001B"),
    ("  id: sftlaunch/tiny-llama", '  id: "sftlaunch/tiny\\u202e-llama"', "model.id", "bidi control U+202E"),
    ("  id: sftlaunch/tiny-llama", '  id: "a\\x9bb"', "model.id", "control character U+009B"),
    ("  seq_len: 256", '  "seq\\u202e_len": 256', "data", "key 'seq\\u202e_len': bidi control U+202E"),
])
def test_escaped_control_and_bidi_characters_are_located_errors_never_echoed_raw(tmp_path, old, new, field, shown):
    p = _tiny(tmp_path, old, new)
    res = _cli("validate", p)
    _clean_exit_2(res)
    line = _line_of(p, new.strip()[:6])
    assert f"{p}:{line}: {field}: {shown}" in res.output, res.output
    assert not any(ch in res.output for ch in _RAW), repr(res.output)


def test_every_error_line_escapes_what_the_user_typed(tmp_path):
    ref = "sftl-\x1b]0;pwned\x07\u202e"
    res = _cli("logs", ref)
    assert res.exit_code == 2 and "sftl-\\x1b]0;pwned\\x07\\u202e" in res.output, repr(res.output)
    assert not any(ch in res.output for ch in _RAW)
    p = _tiny(tmp_path)
    odd = tmp_path / "r\x1b[31m.yaml"
    odd.write_text(p.read_text().replace("  id: sftlaunch/tiny-llama", '  id: "\\e"'))
    res = _cli("validate", odd)
    assert res.exit_code == 2 and "r\\x1b[31m.yaml:" in res.output and "\x1b" not in res.output, repr(res.output)


@pytest.mark.parametrize("word", ["yes", "on", "no", "off", "Yes", "ON"])
def test_yaml11_booleans_are_an_error_naming_the_field_and_line(tmp_path, word):
    p = _tiny(tmp_path, "  packing: true", f"  packing: {word}")
    res = _cli("validate", p)
    _clean_exit_2(res)
    line = _line_of(p, f"packing: {word}")
    assert f"{p}:{line}: data.packing: '{word}' is" in res.output and "write true or false" in res.output, res.output


def test_true_false_and_quoted_words_are_untouched(tmp_path):
    p = _tiny(tmp_path, "  packing: true", "  packing: false")
    assert load_recipe(p).data.packing is False
    p = _tiny(tmp_path, "    - {path: data/tiny-task/train.jsonl, split: train", '    - {path: data/tiny-task/train.jsonl, split: "yes"')
    assert load_recipe(p).data.sources[0].split == "yes"


def _preflight(p: Path):
    return _cli("preflight", p)


@pytest.mark.parametrize("bucket,words", [("/dev/null", "is a system path"), ("/etc/passwd", "is a file, not a directory"),
                                          ("/etc/passwd/sub", "is a file, not a directory"),
                                          ("/proc/self", "is a system path")])
def test_a_local_bucket_must_be_a_directory_not_a_device_or_a_file(tmp_path, bucket, words):
    p = _tiny(tmp_path, "  bucket: null", f"  bucket: {bucket}")
    for res in (_cli("validate", p), _preflight(p)):
        _clean_exit_2(res)
        assert f"{p}:{_line_of(p, 'bucket:')}: output.bucket: " in res.output and words in res.output, res.output
    ok = _tiny(tmp_path, "  bucket: null", f"  bucket: {tmp_path / 'new' / 'dir'}")  # made when the run starts
    assert load_recipe(ok).output.bucket == str(tmp_path / "new" / "dir")


@pytest.mark.parametrize("tasks_dir,words", [("/proc", "is a system directory"), ("/sys/kernel", "is a system directory"),
                                             ("/dev", "is a system directory"), ("EMPTY", "holds no task .yaml files")])
def test_eval_tasks_dir_must_be_a_directory_of_task_yamls(tmp_path, tasks_dir, words):
    if tasks_dir == "EMPTY":
        tasks_dir = str(tmp_path / "empty")
        (tmp_path / "empty" / "sub").mkdir(parents=True)
        (tmp_path / "empty" / "sub" / "notes.txt").write_text("no tasks here")
    p = _tiny(tmp_path, "tasks_dir: ../jobs/tasks", f"tasks_dir: {tasks_dir}")
    with deadline(30):
        results = (_cli("validate", p), _preflight(p))
    for res in results:
        _clean_exit_2(res)
        assert f"{p}:{_line_of(p, 'tasks_dir:')}: eval.tasks_dir: " in res.output and words in res.output, res.output
