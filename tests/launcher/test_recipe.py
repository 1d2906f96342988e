"""The recipe contract: every malformed recipe gets exit 2, the field, the line, and no traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import cli
from launcher.errors import RecipeError
from launcher.recipe import load_recipe, recipe_from_dict

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
]

# Whole-file problems: the message names the file, line and (recipe).
BROKEN_FILES = [
    ("yaml-syntax", "name: x\nmodel: {id: a/b\nmethod: full\n", 3, "YAML syntax error"),
    ("empty", "", 1, "empty file"),
    ("only-comment", "# nothing here\n", 1, "empty file"),
    ("top-level-list", "- name: x\n- method: full\n", 1, "top level is a list"),
    ("top-level-scalar", "just a string\n", 1, "top level is a single value"),
    ("tab-indent", "name: x\nmodel:\n\tid: a/b\n", 3, "YAML syntax error"),
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


def test_at_least_25_malformed_cases():
    assert len(MALFORMED) + len(BROKEN_FILES) >= 25


@pytest.mark.parametrize("case_id,text,line,word", BROKEN_FILES, ids=[b[0] for b in BROKEN_FILES])
def test_broken_file(tmp_path, case_id, text, line, word):
    path = _write(tmp_path, text)
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    [problem] = exc.value.problems
    assert problem.startswith(f"{path}:{line}: (recipe): ") and word in problem, problem


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
