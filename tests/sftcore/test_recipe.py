"""The recipe contract: every malformed recipe gets exit 2, the field, the line, and no traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import cli
from sftcore.errors import RecipeError
from sftcore.recipe import load_recipe, recipe_from_dict

GOOD = textwrap.dedent(
    """\
    name: demo-run
    model:
      id: meta-llama/Llama-2-7b-hf
    method: qlora
    lora: {r: 16, alpha: 16, dropout: 0.05, target_modules: [q_proj, v_proj]}
    quantization: {bits: 4, quant_type: nf4}
    data:
      sources:
        - {path: timdettmers/openassistant-guanaco, format: guanaco}
      seq_len: 1024
    train:
      learning_rate: 2.0e-4
      micro_batch_size: 2
    resources:
      clouds: [lambda, runpod, gcp]
      gpu: auto
    output:
      bucket: gs://bucket/sftlaunch
    """
)


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# (id, recipe text, field named in the message, expected line, a word the message must contain)
MALFORMED = [
    ("unknown-top-key", GOOD + "extra_key: 1\n", "extra_key", 19, "unknown key"),
    ("typo-learning-rate", _replace(GOOD, "learning_rate:", "learning_rat:"), "train.learning_rat", 12, "did you mean learning_rate"),
    ("typo-nested-lora", _replace(GOOD, "alpha: 16", "alpah: 16"), "lora.alpah", 5, "did you mean alpha"),
    ("missing-name", GOOD.replace("name: demo-run\n", ""), "name", 1, "required"),
    ("missing-model-id", _replace(GOOD, "  id: meta-llama/Llama-2-7b-hf\n", "  revision: main\n"), "model.id", 2, "required"),
    ("bad-method", _replace(GOOD, "method: qlora", "method: dora"), "method", 4, "expected one of"),
    ("qlora-without-quant", _replace(GOOD, "quantization: {bits: 4, quant_type: nf4}\n", ""), "method", 4, "quantization"),
    ("qlora-without-lora", _replace(GOOD, "lora: {r: 16, alpha: 16, dropout: 0.05, target_modules: [q_proj, v_proj]}\n", ""), "method", 4, "lora"),
    ("full-with-lora", _replace(_replace(GOOD, "method: qlora", "method: full"), "quantization: {bits: 4, quant_type: nf4}\n", ""), "lora", 5, "method full"),
    ("full-with-quant", _replace(_replace(GOOD, "method: qlora", "method: full"), "lora: {r: 16, alpha: 16, dropout: 0.05, target_modules: [q_proj, v_proj]}\n", ""), "quantization", 5, "4-bit"),
    ("deepspeed-with-qlora", _replace(GOOD, "  micro_batch_size: 2\n", "  micro_batch_size: 2\n  deepspeed: zero3\n"), "train.deepspeed", 14, "qlora"),
    ("zero3-with-lora", _replace(_replace(GOOD, "method: qlora", "method: lora"), "quantization: {bits: 4, quant_type: nf4}\n", "train: {deepspeed: zero3}\n").replace("train:\n  learning_rate: 2.0e-4\n  micro_batch_size: 2\n", ""), "train.deepspeed", 6, "zero2"),
    ("spot-without-bucket", _replace(_replace(GOOD, "  gpu: auto\n", "  gpu: auto\n  spot: true\n"), "output:\n  bucket: gs://bucket/sftlaunch\n", ""), "resources.spot", 17, "output.bucket"),
    ("spot-on-lambda-only", _replace(_replace(GOOD, "clouds: [lambda, runpod, gcp]", "clouds: [lambda]"), "  gpu: auto\n", "  gpu: auto\n  spot: true\n"), "resources.spot", 17, "Lambda"),
    ("multinode-on-runpod-only", _replace(_replace(GOOD, "clouds: [lambda, runpod, gcp]", "clouds: [runpod]"), "  gpu: auto\n", "  gpu: auto\n  nodes: 2\n"), "resources.nodes", 17, "Multi-node not supported"),
    ("name-too-long", _replace(GOOD, "name: demo-run", "name: a-very-long-run-name-for-gcp"), "name", 1, "at most"),
    ("name-bad-charset", _replace(GOOD, "name: demo-run", "name: Demo_Run"), "name", 1, "lowercase"),
    ("negative-lr", _replace(GOOD, "learning_rate: 2.0e-4", "learning_rate: -1"), "train.learning_rate", 12, "greater than 0"),
    ("zero-micro-batch", _replace(GOOD, "micro_batch_size: 2", "micro_batch_size: 0"), "train.micro_batch_size", 13, "greater than 0"),
    ("seq-len-string", _replace(GOOD, "seq_len: 1024", "seq_len: long"), "data.seq_len", 10, "whole number"),
    ("unknown-format", _replace(GOOD, "format: guanaco", "format: sharegpt"), "data.sources[0].format", 9, "expected one of"),
    ("unknown-template", _replace(GOOD, "  seq_len: 1024\n", "  seq_len: 1024\n  template: vicuna\n"), "data.template", 11, "expected one of"),
    ("missing-local-file", _replace(GOOD, "path: timdettmers/openassistant-guanaco", "path: data/missing.jsonl"), "data.sources[0].path", 9, "not found"),
    ("empty-sources", _replace(GOOD, "    - {path: timdettmers/openassistant-guanaco, format: guanaco}\n", "    []\n").replace("  sources:\n    []", "  sources: []"), "data.sources", 8, "at least 1"),
    ("bad-gpu-shape", _replace(GOOD, "gpu: auto", "gpu: 'H100 x 8'"), "resources.gpu", 16, "NAME[:COUNT]"),
    ("unknown-cloud", _replace(GOOD, "clouds: [lambda, runpod, gcp]", "clouds: [lambda, azure]"), "resources.clouds[1]", 15, "expected one of"),
    ("spot-not-bool", _replace(GOOD, "  gpu: auto\n", "  gpu: auto\n  spot: maybe\n"), "resources.spot", 17, "true or false"),
    ("duplicate-key", _replace(GOOD, "  micro_batch_size: 2\n", "  micro_batch_size: 2\n  micro_batch_size: 4\n"), "train.micro_batch_size", 14, "duplicate key"),
    ("lora-empty-modules", _replace(GOOD, "target_modules: [q_proj, v_proj]", "target_modules: []"), "lora.target_modules", 5, "at least one module"),
    ("dropout-over-one", _replace(GOOD, "dropout: 0.05", "dropout: 1.5"), "lora.dropout", 5, "less than 1"),
    ("model-not-mapping", _replace(GOOD, "model:\n  id: meta-llama/Llama-2-7b-hf\n", "model: meta-llama/Llama-2-7b-hf\n"), "model", 2, "mapping"),
    ("hub-repo-shape", GOOD.replace("output:\n", "output:\n  hub_repo: not a repo\n"), "output.hub_repo", 18, "OWNER/NAME"),
    ("eval-nothing", GOOD + "eval: {preset: null}\n", "eval", 19, "no preset and no tasks"),
    ("local-with-nodes", _replace(_replace(GOOD, "clouds: [lambda, runpod, gcp]", "clouds: [local]"), "  gpu: auto\n", "  gpu: auto\n  nodes: 2\n"), "resources.nodes", 17, "one machine"),
    ("fp16-with-bf16-compute", _replace(_replace(GOOD, "quant_type: nf4}", "quant_type: nf4, compute_dtype: bfloat16}"), "micro_batch_size: 2", "micro_batch_size: 2\n  precision: fp16"), "quantization.compute_dtype", 6, "float16"),
    # YAML tags: never constructed, reported at the tag's own line and naming the field.
    ("python-tag-scalar", _replace(GOOD, "  micro_batch_size: 2\n", "  micro_batch_size: 2\n  seed: !!python/object:os.system x\n"), "train.seed", 14, "YAML tag !!python/object:os.system is not allowed in a recipe; remove it"),
    ("custom-tag-scalar", _replace(GOOD, "seq_len: 1024", "seq_len: !foo 1024"), "data.seq_len", 10, "YAML tag !foo is not allowed"),
    ("custom-tag-mapping", _replace(GOOD, "model:\n", "model: !foo\n"), "model", 2, "YAML tag !foo is not allowed"),
    ("custom-tag-sequence", _replace(GOOD, "clouds: [lambda, runpod, gcp]", "clouds: !foo [lambda, runpod, gcp]"), "resources.clouds", 15, "YAML tag !foo is not allowed"),
    ("python-tag-mapping", _replace(GOOD, "lora: {", "lora: !!python/object/apply:os.system {"), "lora", 5, "YAML tag !!python/object/apply:os.system"),
    ("tag-on-key", _replace(GOOD, "  micro_batch_size: 2\n", "  !foo micro_batch_size: 2\n"), "train.micro_batch_size", 13, "YAML tag !foo on a key is not allowed"),
    ("binary-tag", _replace(GOOD, "  micro_batch_size: 2\n", "  micro_batch_size: 2\n  seed: !!binary aGVsbG8=\n"), "train.seed", 14, "YAML tag !!binary"),
    ("bad-int-tag-value", _replace(GOOD, "  micro_batch_size: 2\n", "  micro_batch_size: !!int lots\n"), "train.micro_batch_size", 13, "cannot read"),
    # Non-finite and absurd numbers.
    ("epochs-overflow", _replace(GOOD, "  micro_batch_size: 2\n", "  micro_batch_size: 2\n  epochs: 1e400\n"), "train.epochs", 14, "finite"),
    ("epochs-inf", _replace(GOOD, "  micro_batch_size: 2\n", "  micro_batch_size: 2\n  epochs: .inf\n"), "train.epochs", 14, "finite"),
    ("lr-nan", _replace(GOOD, "learning_rate: 2.0e-4", "learning_rate: .nan"), "train.learning_rate", 12, "finite"),
    ("alpha-inf", _replace(GOOD, "alpha: 16", "alpha: .inf"), "lora.alpha", 5, "finite"),
    ("max-usd-inf", _replace(GOOD, "  gpu: auto\n", "  gpu: auto\n  max_usd: .inf\n"), "resources.max_usd", 17, "finite"),
    ("epochs-absurd", _replace(GOOD, "  micro_batch_size: 2\n", "  micro_batch_size: 2\n  epochs: 5000\n"), "train.epochs", 14, "at most 1000"),
    ("huge-int-epochs", _replace(GOOD, "  micro_batch_size: 2\n", "  micro_batch_size: 2\n  epochs: 1" + "0" * 400 + "\n"), "train.epochs", 14, "far too large, got a 401-digit number"),
    ("micro-batch-absurd", _replace(GOOD, "micro_batch_size: 2", "micro_batch_size: 100000"), "train.micro_batch_size", 13, "at most 4096"),
    ("grad-accum-absurd", _replace(GOOD, "  micro_batch_size: 2\n", "  micro_batch_size: 2\n  grad_accum: 100000\n"), "train.grad_accum", 14, "at most 4096"),
    ("checkpoint-minutes-absurd", _replace(GOOD, "  micro_batch_size: 2\n", "  micro_batch_size: 2\n  checkpoint_minutes: 1000000\n"), "train.checkpoint_minutes", 14, "at most 10080"),
    ("keep-checkpoints-absurd", _replace(GOOD, "  micro_batch_size: 2\n", "  micro_batch_size: 2\n  keep_checkpoints: 100000\n"), "train.keep_checkpoints", 14, "at most 1000"),
    ("max-steps-absurd", _replace(GOOD, "  micro_batch_size: 2\n", "  micro_batch_size: 2\n  max_steps: 100000000000\n"), "train.max_steps", 14, "at most 10000000"),
    ("seed-too-big", _replace(GOOD, "  micro_batch_size: 2\n", "  micro_batch_size: 2\n  seed: 99999999999\n"), "train.seed", 14, "at most 4294967295"),
    ("disk-absurd", _replace(GOOD, "  gpu: auto\n", "  gpu: auto\n  disk_gb: 10000000\n"), "resources.disk_gb", 17, "at most 65536"),
    ("autostop-absurd", _replace(GOOD, "  gpu: auto\n", "  gpu: auto\n  autostop_minutes: 1000000\n"), "resources.autostop_minutes", 17, "at most 10080"),
    ("max-usd-absurd", _replace(GOOD, "  gpu: auto\n", "  gpu: auto\n  max_usd: 1e12\n"), "resources.max_usd", 17, "at most 1000000"),
    ("lora-r-absurd", _replace(GOOD, "r: 16,", "r: 100000,"), "lora.r", 5, "at most 4096"),
    # Wrong types are errors, not quiet conversions.
    ("micro-batch-bool", _replace(GOOD, "micro_batch_size: 2", "micro_batch_size: true"), "train.micro_batch_size", 13, "whole number, got true"),
    ("micro-batch-quoted", _replace(GOOD, "micro_batch_size: 2", "micro_batch_size: '4'"), "train.micro_batch_size", 13, "got the text '4'; remove the quotes"),
    ("micro-batch-float", _replace(GOOD, "micro_batch_size: 2", "micro_batch_size: 2.5"), "train.micro_batch_size", 13, "whole number, got 2.5"),
    ("lr-quoted", _replace(GOOD, "learning_rate: 2.0e-4", "learning_rate: '2e-4'"), "train.learning_rate", 12, "must be a number, got the text '2e-4'; remove the quotes"),
    ("lr-word", _replace(GOOD, "learning_rate: 2.0e-4", "learning_rate: fast"), "train.learning_rate", 12, "must be a number, got the text 'fast'"),
    ("packing-quoted", _replace(GOOD, "  seq_len: 1024\n", "  seq_len: 1024\n  packing: 'true'\n"), "data.packing", 11, "true or false, got the text 'true'; remove the quotes"),
    ("eval-batch-quoted", GOOD + "eval: {batch_size: '8'}\n", "eval.batch_size", 19, "must be `auto` or a whole number, got the text '8'; remove the quotes"),
    ("eval-batch-word", GOOD + "eval: {batch_size: big}\n", "eval.batch_size", 19, "must be `auto` or a whole number, got the text 'big'"),
    ("lora-modules-word", _replace(GOOD, "target_modules: [q_proj, v_proj]", "target_modules: q_proj"), "lora.target_modules", 5, "must be a list or `all-linear`, got the text 'q_proj'"),
    ("revision-date", _replace(GOOD, "  id: meta-llama/Llama-2-7b-hf\n", "  id: meta-llama/Llama-2-7b-hf\n  revision: 2023-01-01\n"), "model.revision", 4, "got the date 2023-01-01; put it in quotes"),
    ("model-id-number", _replace(GOOD, "id: meta-llama/Llama-2-7b-hf", "id: 1234"), "model.id", 3, "must be text"),
    # output.bucket forms.
    ("bucket-ftp", _replace(GOOD, "bucket: gs://bucket/sftlaunch", "bucket: ftp://x y"), "output.bucket", 18, "gs://BUCKET"),
    ("bucket-space", _replace(GOOD, "bucket: gs://bucket/sftlaunch", "bucket: gs://bucket/my runs"), "output.bucket", 18, "no whitespace"),
    ("bucket-no-name", _replace(GOOD, "bucket: gs://bucket/sftlaunch", "bucket: 's3://'"), "output.bucket", 18, "s3://BUCKET"),
    ("spot-local-bucket", _replace(_replace(GOOD, "  gpu: auto\n", "  gpu: auto\n  spot: true\n"), "bucket: gs://bucket/sftlaunch", "bucket: ./out"), "output.bucket", 19, "preempted"),
    # A cloud VM would write a local path to its own disk, then autostop deletes it.
    ("cloud-local-bucket", _replace(GOOD, "bucket: gs://bucket/sftlaunch", "bucket: ./out"), "output.bucket", 18, "use a gs:// or s3:// bucket"),
    ("cloud-abs-bucket", _replace(_replace(GOOD, "clouds: [lambda, runpod, gcp]", "clouds: [gcp]"), "bucket: gs://bucket/sftlaunch", "bucket: /abs/out"), "output.bucket", 18, "deleted when the run ends"),
    # Local data paths.
    ("data-system-file", _replace(GOOD, "path: timdettmers/openassistant-guanaco", "path: /etc/passwd"), "data.sources[0].path", 9, ".jsonl, .json or .parquet"),
]

# Whole-file problems: the message names the file, line and (recipe).
BROKEN_FILES = [
    ("yaml-syntax", "name: x\nmodel: {id: a/b\nmethod: full\n", 3, "YAML syntax error"),
    ("empty", "", 1, "empty file"),
    ("only-comment", "# nothing here\n", 1, "empty file"),
    ("top-level-list", "- name: x\n- method: full\n", 1, "top level is a list"),
    ("top-level-scalar", "just a string\n", 1, "top level is a single value"),
    ("tab-indent", "name: x\nmodel:\n\tid: a/b\n", 3, "YAML syntax error"),
    ("two-documents", GOOD + "---\nname: x\n", 19, "expected a single document in the stream, but found another document"),
    ("recursive-alias", GOOD + "x: &a [*a]\n", 19, "refers to itself"),
    ("recursive-alias-mapping", GOOD + "x: &a\n  y: *a\n", 20, "refers to itself"),
    ("deep-nesting", "name: " + "[" * 5000 + "\n", 1, "nested deeper than"),
    ("deep-nesting-closed", "name: " + "[" * 200 + "]" * 200 + "\n", 1, "nested deeper than"),
    # d: repeats 10^3 copies of a's 11 values, past MAX_ALIAS_VALUES (10,000): the first key over the limit is named.
    ("alias-bomb", "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
     + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)), 4, "aliases"),
]


def _write(tmp_path: Path, text: str | bytes, name: str = "recipe.yaml") -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def test_good_recipe_is_valid(tmp_path):
    r = load_recipe(_write(tmp_path, GOOD))
    assert r.method == "qlora" and r.lora.r == 16 and r.quantization.quant_type == "nf4"
    assert r.train.optimizer == "paged_adamw_32bit"  # default filled
    assert r.eval is not None and r.eval.preset == "leaderboard-v1"


@pytest.mark.parametrize("case_id,text,field,line,word", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_recipe(tmp_path, case_id, text, field, line, word):
    path = _write(tmp_path, text)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    matching = [p for p in exc.value.problems if f": {field}: " in p]
    assert matching, exc.value.problems
    assert any(p.startswith(f"{path}:{line}: {field}: ") and word in p for p in matching), matching
    assert all("\n" not in p for p in exc.value.problems), exc.value.problems


def test_at_least_25_malformed_cases():
    assert len(MALFORMED) + len(BROKEN_FILES) >= 25


@pytest.mark.parametrize("case_id,text,line,word", BROKEN_FILES, ids=[b[0] for b in BROKEN_FILES])
def test_broken_file(tmp_path, case_id, text, line, word):
    path = _write(tmp_path, text)
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    [problem] = exc.value.problems
    assert problem.startswith(f"{path}:{line}: (recipe): ") and word in problem, problem
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output


def test_binary_junk_and_missing_file(tmp_path):
    junk = _write(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "junk.yaml")
    with pytest.raises(RecipeError, match=r"junk.yaml:1: \(recipe\): binary data"):
        load_recipe(junk)
    latin = _write(tmp_path, "name: caf\xe9\n".encode("latin-1"), "latin.yaml")
    with pytest.raises(RecipeError, match=r"latin.yaml:1: \(recipe\): not UTF-8"):
        load_recipe(latin)
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_all_errors_reported_at_once(tmp_path):
    text = _replace(_replace(_replace(GOOD, "learning_rate:", "learning_rat:"), "format: guanaco", "format: nope"), "name: demo-run", "name: BAD")
    with pytest.raises(RecipeError) as exc:
        load_recipe(_write(tmp_path, text))
    fields = {p.split(": ")[1] for p in exc.value.problems}
    assert {"name", "train.learning_rat", "data.sources[0].format"} <= fields
    # Sorted by line so the user can fix top to bottom.
    lines = [int(p.split(":")[1]) for p in exc.value.problems]
    assert lines == sorted(lines)


def test_cli_never_prints_traceback_for_bad_input(tmp_path):
    path = _write(tmp_path, "- a\n- b\n")
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"{path}:1: (recipe): top level is a list" in proc.stderr
    debug = subprocess.run([sys.executable, "-m", "launcher.cli", "--debug", "validate", str(path)], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_local_paths_resolve_relative_to_recipe(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text('{"text": "hi"}\n')
    text = _replace(_replace(GOOD, "path: timdettmers/openassistant-guanaco", "path: data/rows.jsonl"), "format: guanaco", "format: text")
    sub = tmp_path / "recipes"
    sub.mkdir()
    (sub / "data").symlink_to(tmp_path / "data")
    r = load_recipe(_write(sub, text))
    assert Path(r.data.sources[0].path).is_absolute() and Path(r.data.sources[0].path).exists()


def test_resolved_recipe_round_trips_and_hash_is_stable(tmp_path):
    r = load_recipe(_write(tmp_path, GOOD))
    again = recipe_from_dict(r.resolved_dict())
    assert again.resolved_dict() == r.resolved_dict()
    assert again.sha256() == r.sha256()
    changed = r.resolved_dict()
    changed["train"]["seed"] = 7
    assert recipe_from_dict(changed).sha256() != r.sha256()


def test_name_limit_follows_allowed_clouds():
    base = load_recipe_dict_for(["runpod"], "a" * 20)
    assert base.name == "a" * 20  # 5 + 20 + 5 = 30 <= every cloud's limit


def load_recipe_dict_for(clouds, name):
    return recipe_from_dict({
        "name": name, "model": {"id": "a/b"}, "method": "full",
        "data": {"sources": [{"path": "a/b", "format": "text"}]},
        "resources": {"clouds": clouds},
    })


def test_tag_problem_is_reported_alongside_other_problems(tmp_path):
    text = _replace(_replace(GOOD, "  micro_batch_size: 2\n", "  micro_batch_size: 2\n  seed: !!python/object:os.system x\n"),
                    "format: guanaco", "format: nope")
    path = _write(tmp_path, text)
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    assert f"{path}:9: data.sources[0].format: got nope; expected one of" in "\n".join(exc.value.problems)
    [tag] = [p for p in exc.value.problems if "YAML tag" in p]
    assert tag == f"{path}:14: train.seed: YAML tag !!python/object:os.system is not allowed in a recipe; remove it"
    # The tagged value is not also reported as a type error.
    assert len([p for p in exc.value.problems if ": train.seed: " in p]) == 1


def test_tagged_mapping_content_is_still_checked(tmp_path):
    path = _write(tmp_path, _replace(GOOD, "lora: {r: 16,", "lora: !foo {rr: 16,"))
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    fields = {p.split(": ")[1] for p in exc.value.problems}
    assert {"lora", "lora.rr"} <= fields, exc.value.problems


def test_standard_tags_and_yaml12_floats_are_accepted(tmp_path):
    # `2e-4` is a string to YAML 1.1 (PyYAML) but a number to every other YAML reader and to users.
    text = _replace(_replace(GOOD, "learning_rate: 2.0e-4", "learning_rate: 2e-4"), "seq_len: 1024", "seq_len: !!int 1024")
    r = load_recipe(_write(tmp_path, text))
    assert r.train.learning_rate == 2e-4 and r.data.seq_len == 1024
    # Integers still feed float fields.
    r = load_recipe(_write(tmp_path, _replace(GOOD, "learning_rate: 2.0e-4", "learning_rate: 1e-4\n  epochs: 3")))
    assert r.train.epochs == 3.0 and isinstance(r.train.epochs, float)


def test_recipe_from_dict_coerces_paths_at_the_boundary(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "hi"}\n')
    r = recipe_from_dict({
        "name": "t", "model": {"id": tmp_path}, "method": "lora",
        "lora": {"target_modules": ("q_proj", "v_proj")},
        "data": {"sources": [{"path": data, "format": "text"}]},
        "resources": {"clouds": ["local"]}, "output": {"bucket": tmp_path / "out"},
    })
    assert r.model.id == str(tmp_path) and r.data.sources[0].path == str(data)
    assert r.lora.target_modules == ["q_proj", "v_proj"] and r.output.bucket == str(tmp_path / "out")
    with pytest.raises(RecipeError, match="train.micro_batch_size: must be a whole number, got the text '4'"):
        recipe_from_dict({**r.resolved_dict(), "train": {"micro_batch_size": "4"}})


@pytest.mark.parametrize("bucket", ["gs://my-bucket", "gs://my-bucket/sftlaunch/runs", "s3://my.bucket-1/x", "/abs/out", "~/sftlaunch-out", "out/runs"])
def test_bucket_forms_accepted(tmp_path, bucket):
    text = _replace(GOOD, "bucket: gs://bucket/sftlaunch", f"bucket: {bucket}")
    if not bucket.startswith(("gs://", "s3://")):  # a local path is for local runs only
        text = _replace(text, "clouds: [lambda, runpod, gcp]", "clouds: [local]")
    sub = tmp_path / "recipes"
    sub.mkdir()
    r = load_recipe(_write(sub, text))
    if bucket.startswith(("gs://", "s3://")):
        assert r.output.bucket == bucket
    else:
        # Local outputs resolve like data paths: ~ expanded, relative to the recipe's directory.
        assert Path(r.output.bucket).is_absolute()
        expected = Path(bucket).expanduser() if bucket.startswith(("/", "~")) else sub / bucket
        assert r.output.bucket == str(expected.resolve())


def test_spot_with_cloud_bucket_is_fine(tmp_path):
    text = _replace(GOOD, "  gpu: auto\n", "  gpu: auto\n  spot: true\n")
    assert load_recipe(_write(tmp_path, text)).resources.spot is True


def _data_case(tmp_path: Path, kind: str) -> str:
    if kind == "empty-dir":
        (tmp_path / "empty").mkdir()
        return "empty"
    if kind == "dir-of-csv":
        (tmp_path / "csvs").mkdir()
        (tmp_path / "csvs" / "rows.csv").write_text("a,b\n")
        return "csvs"
    if kind == "csv-file":
        (tmp_path / "data.csv").write_text("a,b\n")
        return "data.csv"
    if kind == "no-suffix":
        (tmp_path / "rows").write_text("{}\n")
        return "./rows"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,word", [
    ("empty-dir", "no .jsonl, .json or .parquet file"),
    ("dir-of-csv", "no .jsonl, .json or .parquet file"),
    ("csv-file", "is a .csv file; use .jsonl, .json or .parquet"),
    ("no-suffix", "has no file suffix; use .jsonl, .json or .parquet"),
])
def test_local_data_must_be_data_files(tmp_path, kind, word):
    rel = _data_case(tmp_path, kind)
    path = _write(tmp_path, _replace(GOOD, "path: timdettmers/openassistant-guanaco", f"path: {rel}"))
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    [problem] = exc.value.problems
    assert problem.startswith(f"{path}:9: data.sources[0].path: ") and word in problem, problem


def test_local_data_dirs_with_data_files_and_hub_ids_pass(tmp_path):
    nested = tmp_path / "rows" / "part-0"
    nested.mkdir(parents=True)
    (nested / "a.parquet").write_bytes(b"PAR1")
    r = load_recipe(_write(tmp_path, _replace(GOOD, "path: timdettmers/openassistant-guanaco", "path: rows")))
    assert r.data.sources[0].path == str((tmp_path / "rows").resolve())
    r = load_recipe(_write(tmp_path, GOOD))
    assert r.data.sources[0].path == "timdettmers/openassistant-guanaco"


def test_shipped_data_directories_are_valid_sources():
    data = Path(__file__).resolve().parents[2] / "recipes" / "data"
    for d in sorted(p for p in data.iterdir() if p.is_dir()):
        r = recipe_from_dict({
            "name": "t", "model": {"id": "a/b"}, "method": "full",
            "data": {"sources": [{"path": d.name, "format": "messages"}]}, "resources": {"clouds": ["local"]},
        }, base_dir=data)
        assert r.data.sources[0].path == str(d.resolve())


# ---------------------------------------------------------------------------------------------
# Overrides from the command line (up --bucket, plan --spot)

BUCKET = ("output", "bucket")


def test_an_override_takes_part_in_the_rules_and_its_errors_name_the_flag(tmp_path):
    path = _write(tmp_path, _replace(GOOD, "bucket: gs://bucket/sftlaunch", "bucket: gs://ok/x"))
    r = load_recipe(path, overrides={BUCKET: "gs://mine/runs"}, labels={BUCKET: "--bucket"})
    assert r.output.bucket == "gs://mine/runs" and r.replaced(*BUCKET) == "gs://ok/x"
    assert r.where(*BUCKET) == "--bucket" and r.override_label(*BUCKET) == "--bucket"
    for bad, word in (("./out", "use a gs:// or s3:// bucket"), ("gs://Bad Bucket", "no whitespace")):
        with pytest.raises(RecipeError) as exc:
            load_recipe(path, overrides={BUCKET: bad}, labels={BUCKET: "--bucket"})
        [problem] = exc.value.problems
        assert problem.startswith("--bucket: output.bucket: ") and word in problem, problem
        assert str(path) not in problem  # not the file's line: the user did not write it there


def test_an_override_never_erases_the_users_own_mistake(tmp_path):
    path = _write(tmp_path, _replace(GOOD, "output:\n  bucket: gs://bucket/sftlaunch\n", "output: foo\n"))
    with pytest.raises(RecipeError) as exc:
        load_recipe(path, overrides={BUCKET: "gs://mine/runs"}, labels={BUCKET: "--bucket"})
    [problem] = exc.value.problems
    assert problem.startswith(f"{path}:17: output: must be a mapping"), problem


def test_a_spot_flag_is_judged_by_the_spot_rules_and_told_to_drop_itself(tmp_path):
    spot = ("resources", "spot")
    no_bucket = _write(tmp_path, _replace(GOOD, "output:\n  bucket: gs://bucket/sftlaunch\n", ""), "nobucket.yaml")
    with pytest.raises(RecipeError) as exc:
        load_recipe(no_bucket, overrides={spot: True}, labels={spot: "--spot"})
    [problem] = exc.value.problems
    assert problem.startswith("--spot: resources.spot: spot needs output.bucket") and problem.endswith("or drop --spot")
    lambda_only = _write(tmp_path, _replace(GOOD, "clouds: [lambda, runpod, gcp]", "clouds: [lambda]"), "lambda.yaml")
    with pytest.raises(RecipeError, match=r"--spot: resources.spot: Lambda: .*; drop --spot or allow runpod"):
        load_recipe(lambda_only, overrides={spot: True}, labels={spot: "--spot"})
    # The file says the same as the flag: the file's line stays where an error points.
    same = _write(tmp_path, _replace(GOOD, "  gpu: auto\n", "  gpu: auto\n  spot: true\n"), "same.yaml")
    r = load_recipe(same, overrides={spot: True}, labels={spot: "--spot"})
    assert r.override_label(*spot) is None and r.where(*spot) == f"{same.resolve()}:17"


def test_cloud_only_overrides_skip_local_recipes(tmp_path):
    text = _replace(_replace(GOOD, "clouds: [lambda, runpod, gcp]", "clouds: [local]"), "bucket: gs://bucket/sftlaunch", "bucket: out")
    path = _write(tmp_path, text)
    r = load_recipe(path, overrides={BUCKET: "gs://env/x"}, labels={BUCKET: "SFTLAUNCH_BUCKET"}, cloud_only=True)
    assert r.output.bucket == str((tmp_path / "out").resolve()) and r.override_label(*BUCKET) is None
    r = load_recipe(path, overrides={BUCKET: "gs://env/x"}, labels={BUCKET: "--bucket"})
    assert r.output.bucket == "gs://env/x" and r.replaced(*BUCKET) == "out"


def test_where_points_at_the_key_or_its_section(tmp_path):
    path = _write(tmp_path, GOOD)
    r = load_recipe(path)
    assert r.where("train", "micro_batch_size") == f"{path.resolve()}:13"
    assert r.where("resources", "nodes") == f"{path.resolve()}:14"  # not in the file: its section's line
    assert recipe_from_dict(r.resolved_dict()).where("resources", "gpu") == ""  # from data: no file to point at
