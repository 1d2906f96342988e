"""The recipe: one YAML file that says what to train, on what data, where, and where results go.

Why this module is more than a pydantic model: users need *every* problem at once, each pointing
at the line they must edit (`file:line: field.path: message`), with a hint where one helps. So
the YAML is composed into nodes first (keeping line numbers and catching duplicate keys), turned
into plain data, validated by pydantic (shape and types) and by `_cross_field_problems` (rules
that span fields), and every error is mapped back to the line of the offending key.

Light imports only: this runs on `sftlaunch validate` and must not pull torch or sky.
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from launcher.clouds import CLOUDS, capability_problem, min_name_limit
from launcher.errors import RecipeError

METHODS = ("full", "lora", "qlora")
FORMATS = ("dolphin", "airoboros", "platypus", "alpaca", "guanaco", "slimorca", "messages", "text")
TEMPLATES = ("plain", "llama2-chat", "mistral-inst", "chatml", "tokenizer")
OPTIMIZERS = (
    "adamw_torch", "adamw_torch_fused", "paged_adamw_32bit", "paged_adamw_8bit", "adamw_bnb_8bit", "sgd",
)
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
DEEPSPEED = ("zero2", "zero3", "zero3-offload")
EVAL_PRESETS = ("leaderboard-v1", "leaderboard-v2")
LOCAL_DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
RUN_ID_PREFIX = "sftl-"
RUN_ID_SUFFIX_LEN = 5  # "-" + 4 hex
NAME_MAX = 20
NAME_RE = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z]$")
GPU_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(:(?P<count>[1-9][0-9]*))?$")
# gs:// and s3:// bucket names: lowercase letters, digits, '.', '-', '_' (GCS allows '_'), then
# an optional /prefix; no whitespace anywhere (it would split the sync commands' arguments).
CLOUD_BUCKET_RE = re.compile(r"^(gs|s3)://[a-z0-9][a-z0-9._-]*(/\S*)?$")
BUCKET_FORMS = "gs://BUCKET[/prefix], s3://BUCKET[/prefix] or a local path (absolute, ~ or relative to the recipe)"
WEEK_MINUTES = 7 * 24 * 60
SEED_MAX = 2**32 - 1  # numpy's seed range; torch and random accept it too


class _Strict(BaseModel):
    # strict: a quoted number or a bool is an error, not a silent conversion (ints still feed
    # floats). allow_inf_nan=False: `1e400`, .inf and .nan would overflow the planner later.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=False, strict=True, allow_inf_nan=False,
    )


class ModelSpec(_Strict):
    id: str = Field(description="Hugging Face Hub id (e.g. meta-llama/Llama-2-70b-hf) or a local model directory.")
    revision: str | None = Field(None, description="Git revision (branch, tag or commit) to pin the model to.")
    trust_remote_code: bool = Field(False, description="Allow the model repository's own Python code to run.")


class LoraSpec(_Strict):
    r: int = Field(16, gt=0, le=4096, description="LoRA rank.")
    alpha: float = Field(16, gt=0, le=65536, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or `all-linear` for every linear layer but the head."
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("must name at least one module, or be `all-linear`")
        return v


class QuantizationSpec(_Strict):
    bits: Literal[4] = Field(4, description="Weight bits for the frozen base (bitsandbytes 4-bit).")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type: nf4 (QLoRA's) or fp4.")
    double_quant: bool = Field(False, description="Also quantize the quantization constants (saves ~0.4 bits/param).")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Dtype of matmuls on dequantized weights; float16 on GPUs without bf16 (T4, V100)."
    )


class DataSource(_Strict):
    path: str = Field(description="Hub dataset id, or a local .jsonl/.json/.parquet file or directory (relative to the recipe).")
    config: str | None = Field(None, description="Hub dataset configuration name.")
    split: str = Field("train", description="Split to read.")
    format: Literal[FORMATS] = Field(description="Row schema: " + ", ".join(FORMATS) + ".")  # type: ignore[valid-type]
    max_samples: int | None = Field(None, gt=0, le=10**12, description="Take at most this many rows (after a seeded shuffle).")

    def is_local(self) -> bool:
        return Path(self.path).is_absolute()


class DataSpec(_Strict):
    sources: list[DataSource] = Field(min_length=1, description="Datasets to mix; each formatted to chat messages.")
    template: Literal[TEMPLATES] = Field("plain", description="Prompt template: " + ", ".join(TEMPLATES) + ".")  # type: ignore[valid-type]
    seq_len: int = Field(2048, gt=0, le=1_048_576, description="Tokens per training sequence.")
    packing: bool = Field(True, description="Pack several samples per sequence (per-sample position ids).")
    loss: Literal["completion_only", "all"] = Field("completion_only", description="Train on assistant tokens only, or on all tokens.")
    eval_fraction: float = Field(0.01, ge=0, lt=1, description="Share of rows held out for eval loss.")


class TrainSpec(_Strict):
    epochs: float = Field(1, gt=0, le=1000, description="Passes over the training rows.")
    learning_rate: float = Field(2.0e-4, gt=0, lt=1, description="Peak learning rate.")
    scheduler: Literal[SCHEDULERS] = Field("cosine", description="Learning-rate schedule: " + ", ".join(SCHEDULERS) + ".")  # type: ignore[valid-type]
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    micro_batch_size: int = Field(4, gt=0, le=4096, description="Sequences per GPU per forward pass.")
    grad_accum: int = Field(4, gt=0, le=4096, description="Micro-batches accumulated per optimizer step.")
    optimizer: Literal[OPTIMIZERS] = Field("paged_adamw_32bit", description="Optimizer: " + ", ".join(OPTIMIZERS) + ".")  # type: ignore[valid-type]
    precision: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="Mixed-precision mode (fp16 on T4/V100).")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in backward to save memory (~1/3 more compute).")
    deepspeed: Literal[DEEPSPEED] | None = Field(None, description="DeepSpeed ZeRO config: zero2, zero3, zero3-offload (full; zero2 also with lora).")  # type: ignore[valid-type]
    checkpoint_minutes: float = Field(30, gt=0, le=WEEK_MINUTES, description="Save a resumable checkpoint this often (and at the end).")
    keep_checkpoints: int = Field(2, gt=0, le=1000, description="Keep this many newest complete checkpoints; older ones are pruned.")
    max_steps: int | None = Field(None, gt=0, le=10_000_000, description="Stop after this many optimizer steps (overrides epochs).")
    seed: int = Field(42, ge=0, description="Seed for shuffling, init of new weights and dropout (at most 2^32 - 1, numpy's limit).")

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v: int):
        # A validator rather than Field(le=...): numpy's limit is an implementation detail, said in the description.
        if v > SEED_MAX:
            raise ValueError(f"must be at most {SEED_MAX} (2^32 - 1, numpy's seed limit), got {v}")
        return v


class ResourcesSpec(_Strict):
    clouds: list[Literal[tuple(CLOUDS) + ("local",)]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["lambda", "runpod", "gcp"], min_length=1,
        description="Allowed clouds in order of preference: lambda, runpod, gcp, kubernetes, local.",
    )
    gpu: str = Field("auto", description='`auto` (cheapest that fits) or an accelerator with count, e.g. "H100:1", "A100-80GB:8".')
    nodes: int = Field(1, gt=0, le=64, description="Number of machines (multi-node needs a cloud that supports it).")
    spot: bool = Field(False, description="Use preemptible instances as a managed job that resumes from the bucket.")
    disk_gb: int = Field(256, gt=0, le=65536, description="Disk per node in GB (weights, checkpoints, caches).")
    autostop_minutes: int = Field(30, ge=0, le=WEEK_MINUTES, description="Stop (or down, where a cloud cannot stop) after this many idle minutes.")
    max_usd: float | None = Field(None, gt=0, le=1_000_000, description="Refuse to launch if the estimated total cost exceeds this.")

    @field_validator("gpu")
    @classmethod
    def _gpu_shape(cls, v: str):
        if v != "auto" and not GPU_RE.match(v):
            raise ValueError('must be `auto` or NAME[:COUNT], e.g. "H100:1" or "A100-80GB:8"')
        return v

    @field_validator("clouds")
    @classmethod
    def _unique(cls, v):
        dupes = sorted({c for c in v if v.count(c) > 1})
        if dupes:
            raise ValueError(f"lists {', '.join(dupes)} more than once")
        return v

    def gpu_name_count(self) -> tuple[str, int] | None:
        if self.gpu == "auto":
            return None
        m = GPU_RE.match(self.gpu)
        assert m
        return m.group("name"), int(m.group("count") or 1)


class EvalSpec(_Strict):
    preset: Literal[EVAL_PRESETS] | None = Field("leaderboard-v1", description="Benchmark preset: leaderboard-v1 (Open LLM Leaderboard v1, six tasks) or leaderboard-v2 (IFEval, BBH, MATH Lvl 5, GPQA, MuSR, MMLU-Pro; raw and normalized).")  # type: ignore[valid-type]
    tasks: list[str] | None = Field(None, description="lm-eval task names, instead of or beside the preset.")
    tasks_dir: str | None = Field(None, description="Directory of local lm-eval task YAMLs (relative to the recipe).")
    batch_size: Literal["auto"] | int = Field("auto", description="Eval batch size, or `auto`.")
    limit: int | None = Field(None, gt=0, le=10**9, description="Only this many samples per task (a quick look, not a score).")
    load_4bit: bool = Field(False, description="Load the model in 4-bit for eval (models that would not fit otherwise).")

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, v):
        if isinstance(v, int) and not 0 < v <= 4096:
            raise ValueError(f"must be `auto` or a whole number from 1 to 4096, got {v}")
        return v


class OutputSpec(_Strict):
    bucket: str | None = Field(None, description="gs://BUCKET[/prefix] or s3://BUCKET[/prefix] for checkpoints and results; a local path (relative to the recipe) only with `clouds: [local]`; required for spot.")
    hub_repo: str | None = Field(None, description="Hugging Face Hub repo to push to, e.g. me/llama2-70b-dolphin-qlora (private).")
    merge_adapter: bool = Field(False, description="Also publish LoRA weights merged into the bf16 base.")

    @field_validator("bucket")
    @classmethod
    def _bucket_form(cls, v):
        if v is None:
            return v
        if not v or any(ch.isspace() for ch in v) or (_has_scheme(v) and not CLOUD_BUCKET_RE.match(v)):
            raise ValueError(f"must be {BUCKET_FORMS}, with no whitespace; got {v!r}")
        return v

    @field_validator("hub_repo")
    @classmethod
    def _repo_shape(cls, v):
        if v is not None and not re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", v):
            raise ValueError("must look like OWNER/NAME, e.g. me/llama2-70b-dolphin-qlora")
        return v


class Recipe(_Strict):
    name: str = Field(description=f"Run name: lowercase letters, digits and '-', at most {NAME_MAX} chars; run ids derive from it.")
    model: ModelSpec = Field(description="The base model to fine-tune.")
    method: Literal[METHODS] = Field(description="full | lora | qlora.")  # type: ignore[valid-type]
    lora: LoraSpec | None = Field(None, description="LoRA settings (lora and qlora).")
    quantization: QuantizationSpec | None = Field(None, description="4-bit base settings (qlora only).")
    data: DataSpec = Field(description="Training data: sources, prompt template, sequence length, packing, loss.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Optimisation and checkpointing.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Where it runs: clouds, GPUs, nodes, spot, disk, autostop, budget.")
    eval: EvalSpec | None = Field(default_factory=EvalSpec, description="Evaluation after training; null skips it.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Where checkpoints, results and the model go.")
    image: str | None = Field(None, description="Container image; default: the image built from docker/ for this version.")

    # Not part of the YAML: where the recipe came from, the line of each key, and what the
    # command line overrode (key path -> the flag or variable, and the file's value it replaced).
    _source_path: Path | None = None
    _lines: dict[tuple, int] = PrivateAttr(default_factory=dict)
    _labels: dict[tuple, str] = PrivateAttr(default_factory=dict)
    _replaced: dict[tuple, Any] = PrivateAttr(default_factory=dict)

    @property
    def source_path(self) -> Path | None:
        return self._source_path

    def where(self, *path: str | int) -> str:
        """Where the field at `path` was set, so a later error (the planner's) points where to
        edit: `file:line` of its key (or of the nearest enclosing key), the flag or variable that
        overrode it (`--bucket`), or "" for a recipe that came from data, not a file."""
        label = _nearest(self._labels, path)
        if label:
            return label
        if self._source_path is None or not self._lines:
            return ""
        return f"{self._source_path}:{_nearest(self._lines, path) or 1}"

    def override_label(self, *path: str | int) -> str | None:
        """The flag or variable whose override set the field at `path`, if one did."""
        return _nearest(self._labels, path)

    def replaced(self, *path: str | int) -> Any:
        """The file's own value that an override of `path` replaced (None if it had none)."""
        return self._replaced.get(tuple(path))

    def resolved_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.resolved_dict(), sort_keys=False, default_flow_style=False)

    def sha256(self) -> str:
        blob = json.dumps(self.resolved_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Loading with line numbers


MAX_DEPTH = 32  # a recipe nests 4 levels; anything past this is a mistake or an attack
MAX_VALUES = 100_000  # after alias expansion; a recipe has a few hundred
_STD = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_STD + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
_MAP_TAG, _SEQ_TAG, _MERGE_TAG = _STD + "map", _STD + "seq", _STD + "merge"
_REJECTED = object()  # stands in for a value that was reported and must not be reported again


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats and a nesting limit.

    PyYAML follows YAML 1.1, where `2e-4` (no dot) is a string; every YAML 1.2 reader and every
    user reads it as a number, and strict types would reject it. Nesting is limited while
    composing because PyYAML's composer recurses once per level (5000 `[` exhaust the stack).
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_RecipeLoader.add_implicit_resolver(
    _STD + "float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"), list("-+0123456789."),
)


class _TooDeep(Exception):
    def __init__(self, mark) -> None:
        self.mark = mark


class _NotData(Exception):
    """The document cannot be turned into data at all (recursive alias, alias bomb)."""

    def __init__(self, line: int, message: str) -> None:
        self.line, self.message = line, message


class _Located:
    """Plain data plus a map from key path to the line of that key (1-based)."""

    def __init__(self) -> None:
        self.lines: dict[tuple, int] = {}
        # (path, message, line or None: the line of the key at `path`)
        self.problems: list[tuple[tuple, str, int | None]] = []
        self.rejected: list[tuple] = []  # paths whose value was reported; pydantic stays quiet there
        self.values = 0


def _show_tag(tag: str) -> str:
    return "!!" + tag[len(_STD):] if tag.startswith(_STD) else tag


def _check_tag(node: yaml.Node, allowed: set[str], path: tuple, loc: _Located) -> bool:
    if node.tag in allowed:
        return True
    loc.problems.append((path, f"YAML tag {_show_tag(node.tag)} is not allowed in a recipe; remove it", node.start_mark.line + 1))
    return False


def _construct(node: yaml.Node, path: tuple, loc: _Located, active: frozenset = frozenset()) -> Any:
    """Node -> plain data, recording key lines; tags are checked, never acted on."""
    if id(node) in active:
        where = _fmt_path(path) or "the top level"
        raise _NotData(_nearest(loc.lines, path) or node.start_mark.line + 1,
                       f"YAML alias at {where} refers to itself (a recursive anchor); write the value out instead")
    loc.values += 1
    if loc.values > MAX_VALUES:
        raise _NotData(_nearest(loc.lines, path[:1]) or node.start_mark.line + 1,
                       f"expands to more than {MAX_VALUES:,} values through YAML aliases; a recipe needs a few hundred, write it out")
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
    try:
        # PyYAML's safe constructor resolves the allowed scalar types (int, float, bool, null, ...).
        return _SCALAR_LOADER.construct_object(node, deep=True)
    except Exception:  # e.g. `!!int lots`: the constructor's own ValueError/KeyError
        loc.problems.append((path, f"YAML tag {_show_tag(node.tag)} cannot read {node.value!r}; remove the tag or fix the value",
                             node.start_mark.line + 1))
        loc.rejected.append(path)
        return _REJECTED


def _construct_mapping(node: yaml.MappingNode, path: tuple, loc: _Located, active: frozenset) -> dict:
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


def _construct_key(node: yaml.Node, path: tuple, loc: _Located) -> Any:
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
    try:
        return _SCALAR_LOADER.construct_object(node, deep=True)
    except Exception:
        loc.problems.append((path, f"YAML tag {_show_tag(node.tag)} cannot read the key {node.value!r}; remove the tag", line))
        return _REJECTED


class _ScalarLoader(_RecipeLoader):
    def __init__(self) -> None:  # no stream: only used for construct_object on scalar nodes
        _RecipeLoader.__init__(self, "")


_SCALAR_LOADER = _ScalarLoader()


def _fmt_path(path: tuple) -> str:
    return ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path).replace(".[", "[")


def _fmt(source: str, line: int | None, path: tuple, message: str) -> str:
    return f"{source}:{line or 1}: {_fmt_path(path) or '(recipe)'}: {message}"


def _nearest(table: dict[tuple, Any], path: tuple) -> Any:
    """`table`'s entry for `path` or for its nearest enclosing key path (None if neither)."""
    for n in range(len(path), 0, -1):
        if path[:n] in table:
            return table[path[:n]]
    return None


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
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise RecipeError([f"{source}:1: (recipe): file not found; check the path"]) from None
    except IsADirectoryError:
        raise RecipeError([f"{source}:1: (recipe): is a directory; pass a recipe .yaml file"]) from None
    except OSError as exc:
        raise RecipeError([f"{source}:1: (recipe): cannot read ({exc.strerror}); check permissions"]) from None
    if b"\x00" in raw:
        raise RecipeError([f"{source}:1: (recipe): binary data, not YAML; pass a recipe .yaml file"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError([f"{source}:{line}: (recipe): not UTF-8 text; save the recipe as UTF-8 YAML"]) from None
    return _from_text(text, source, p.resolve().parent, overrides, labels, cloud_only)


def _compose(text: str, source: str) -> yaml.Node | None:
    def whole_file(line: int, message: str) -> RecipeError:
        return RecipeError([f"{source}:{line}: (recipe): {message}"])

    loader = _RecipeLoader(text)
    try:
        return loader.get_single_node()
    except _TooDeep as exc:
        raise whole_file(exc.mark.line + 1, f"nested deeper than {MAX_DEPTH} levels; a recipe needs a few, check the brackets") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join((exc.problem or "invalid YAML").split())
        if what.startswith("but ") and exc.context:  # "but found another document" needs its first half
            what = " ".join(exc.context.split()) + ", " + what
        raise whole_file(mark.line + 1 if mark else 1, f"YAML syntax error: {what}; fix the indentation or quoting") from None
    except yaml.YAMLError as exc:
        raise whole_file(1, "YAML error: " + " ".join(str(exc).split())) from None
    finally:
        loader.dispose()


def _from_text(text: str, source: str, base_dir: Path, overrides: dict[tuple[str, ...], Any] | None = None,
               labels: dict[tuple[str, ...], str] | None = None, cloud_only: bool = False) -> Recipe:
    node = _compose(text, source)
    if node is None:
        raise RecipeError([f"{source}:1: (recipe): empty file; start from recipes/tiny-local.yaml"])
    if not isinstance(node, yaml.MappingNode):
        kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
        raise RecipeError([f"{source}:{node.start_mark.line + 1}: (recipe): top level is {kind}; a recipe is a mapping of keys (name:, model:, data:, ...)"])
    loc = _Located()
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
    return _validate(_plain(data), source, Path(base_dir or Path.cwd()).resolve(), _Located())


def _plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


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


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
        return f"got {value!r}; expected one of {ctx.get('expected', '')}".replace("'", "")
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
        return f"{msg[0].lower() + msg[1:]}, got {value!r}"
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


def _schema_problems(data: dict, loc: _Located) -> tuple[Recipe | None, list[tuple[tuple, str, int | None]]]:
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
        if err["type"] == "extra_forbidden":
            problems.append((path, _unknown_key(path), None))
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


def _validate(data: dict, source: str, base_dir: Path, loc: _Located, labels: dict[tuple, str] | None = None) -> Recipe:
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
        raise RecipeError(list(dict.fromkeys(text for _, text in sorted(located))))
    assert recipe is not None
    _resolve_paths(recipe, base_dir)
    recipe._source_path = None if source.startswith("<") else Path(source).resolve()
    recipe._lines = dict(loc.lines)
    recipe._labels = dict(labels)
    return recipe


# --------------------------------------------------------------------------------------------
# Cross-field rules, checked on the raw data so they are reported together with type errors.


def _get(data: Any, *keys, default=None):
    for k in keys:
        if not isinstance(data, dict) or k not in data:
            return default
        data = data[k]
    return data


def looks_local(path: str) -> bool:
    return (
        path.startswith(("/", "./", "../", "~"))
        or path.lower().endswith(LOCAL_DATA_SUFFIXES)
        or path.count("/") != 1
    )


def _local_path(path: str, base_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base_dir / p)


def _has_scheme(value: str) -> bool:
    """`gs://...`, `ftp:...`: a URL rather than a local path."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", value) is not None


DATA_SCAN_LIMIT = 10_000  # entries looked at before a directory counts as holding no data files


def _has_data_file(directory: Path) -> bool | None:
    """Whether `directory` holds a file jobs/data.py would read (it reads them recursively).

    Bounded, so a mistaken `path: /` fails fast instead of walking the whole disk: None means
    it gave up after DATA_SCAN_LIMIT entries without finding one.
    """
    seen = 0
    for _root, dirs, files in os.walk(directory):
        for name in files:
            if Path(name).suffix in LOCAL_DATA_SUFFIXES:
                return True
            seen += 1
        seen += len(dirs)
        if seen > DATA_SCAN_LIMIT:
            return None
    return False


def _data_path_problem(lp: Path) -> str | None:
    kinds = ", ".join(LOCAL_DATA_SUFFIXES[:-1]) + " or " + LOCAL_DATA_SUFFIXES[-1]
    if not lp.exists():
        return f"local file not found: {lp}; fix the path (relative to the recipe) or use a hub id OWNER/NAME"
    if lp.is_dir():
        found = _has_data_file(lp)
        if found is None:
            return f"directory {lp} has no {kinds} file among its first {DATA_SCAN_LIMIT:,} entries; point at the data files or a directory of them"
        if not found:
            return f"directory {lp} has no {kinds} file; point at the data files or a directory of them"
        return None
    if lp.suffix not in LOCAL_DATA_SUFFIXES:
        what = f"is a {lp.suffix} file" if lp.suffix else "has no file suffix"
        return f"{lp} {what}; use {kinds} data (or a directory of such files)"
    if not os.access(lp, os.R_OK):
        return f"cannot read {lp} (permission denied); fix its permissions"
    return None


def _local_bucket(bucket: Any) -> bool:
    """A bucket written as a local path (a malformed one is the field validator's to report)."""
    return isinstance(bucket, str) and bool(bucket) and not _has_scheme(bucket) and not any(c.isspace() for c in bucket)


def _local_bucket_problem(bucket: str, spot: bool) -> str:
    resume = "; a preempted job could not resume from it either" if spot else ""
    return (f"{bucket!r} is a local path: on a cloud run it would be on the VM's disk, which is deleted when the run "
            f"ends (autostop downs the cluster), taking checkpoints and results with it{resume}; use a gs:// or s3:// "
            "bucket (gs://BUCKET[/prefix], s3://BUCKET[/prefix]), or run locally with `clouds: [local]`")


def _cross_field_problems(data: dict, base_dir: Path, labels: dict[tuple, str] | None = None) -> list[tuple[tuple, str]]:
    """Rules that span fields. `labels`: paths an override set -> its flag, so a fix says
    `drop --spot` rather than "remove `spot: true`" from a file that does not say it."""
    out: list[tuple[tuple, str]] = []
    spot_flag = (labels or {}).get(("resources", "spot"))
    method = _get(data, "method")
    lora = _get(data, "lora")
    quant = _get(data, "quantization")
    ds = _get(data, "train", "deepspeed")
    clouds = _get(data, "resources", "clouds", default=["lambda", "runpod", "gcp"])
    clouds = [c for c in clouds if isinstance(c, str)] if isinstance(clouds, list) else []
    remote = [c for c in clouds if c in CLOUDS]

    if method == "qlora":
        if lora is None:
            out.append((("method",), "qlora needs a `lora:` section (r, alpha, dropout, target_modules); add one"))
        if quant is None:
            out.append((("method",), "qlora needs a `quantization:` section (bits: 4, quant_type: nf4); add one or use method lora"))
    elif method == "lora":
        if lora is None:
            out.append((("method",), "lora needs a `lora:` section (r, alpha, dropout, target_modules); add one"))
        if quant is not None:
            out.append((("quantization",), "quantization is only for method qlora; remove it or set method: qlora"))
    elif method == "full":
        if lora is not None:
            out.append((("lora",), "method full trains every weight; remove `lora:` or set method: lora"))
        if quant is not None:
            out.append((("quantization",), "method full cannot train 4-bit weights; remove `quantization:` or set method: qlora"))

    if isinstance(ds, str):
        if method == "qlora":
            out.append((("train", "deepspeed"), "DeepSpeed is not supported with qlora (bitsandbytes 4-bit); set deepspeed: null"))
        elif method == "lora" and ds != "zero2":
            out.append((("train", "deepspeed"), f"{ds} is only for method full; lora allows zero2 or null"))

    spot = _get(data, "resources", "spot")
    bucket = _get(data, "output", "bucket")
    if spot is True and not bucket:
        out.append((("resources", "spot"), "spot needs output.bucket so checkpoints survive preemption; set output.bucket "
                    f"(gs://, s3://) or {'drop ' + spot_flag if spot_flag else 'spot: false'}"))
    elif remote and "local" not in clouds and _local_bucket(bucket):
        # The VM writes there, then autostop deletes it: the run's results would be lost.
        out.append((("output", "bucket"), _local_bucket_problem(bucket, spot is True)))

    nodes = _get(data, "resources", "nodes")
    if isinstance(nodes, int) and nodes > 1 and "local" in clouds:
        out.append((("resources", "nodes"), "local runs use one machine; set nodes: 1 or remove local from resources.clouds"))
    if "local" in clouds and len(clouds) > 1:
        out.append((("resources", "clouds"), "local cannot be mixed with clouds; use `clouds: [local]` or list only clouds"))
    for feature, active in (("spot", spot is True), ("multi_node", isinstance(nodes, int) and nodes > 1)):
        able = [c for c in remote if not capability_problem(c, feature)]
        if active and remote and not able:
            # No allowed cloud can do it: quote SkyPilot's reason and name a cloud that can.
            field = ("resources", "spot") if feature == "spot" else ("resources", "nodes")
            reasons = "; ".join(capability_problem(c, feature) for c in remote)
            others = [c for c in CLOUDS if c not in remote and not capability_problem(c, feature)]
            if feature == "spot" and spot_flag:
                fix = f"drop {spot_flag}"
            else:
                fix = "remove `spot: true`" if feature == "spot" else f"remove `nodes: {nodes}`"
            fix += f" or allow {others[0]} in resources.clouds" if others else ""
            out.append((field, f"{reasons}; {fix}"))

    name = _get(data, "name")
    if isinstance(name, str):
        limit = min(NAME_MAX, (min_name_limit(remote) if remote else 35) - len(RUN_ID_PREFIX) - RUN_ID_SUFFIX_LEN)
        if len(name) > limit:
            out.append((("name",), f"{len(name)} chars; at most {limit} so run ids fit cluster-name limits; shorten it"))
        if not NAME_RE.match(name):
            out.append((("name",), "use lowercase letters, digits and '-', starting with a letter and not ending with '-'"))

    sources = _get(data, "data", "sources")
    if isinstance(sources, list):
        for i, src in enumerate(sources):
            path = _get(src, "path")
            if isinstance(path, str) and looks_local(path):
                problem = _data_path_problem(_local_path(path, base_dir))
                if problem:
                    out.append((("data", "sources", i, "path"), problem))
    tasks_dir = _get(data, "eval", "tasks_dir")
    if isinstance(tasks_dir, str) and not _local_path(tasks_dir, base_dir).is_dir():
        out.append((("eval", "tasks_dir"), f"directory not found: {_local_path(tasks_dir, base_dir)}; fix the path (relative to the recipe)"))
    ev = _get(data, "eval")
    if isinstance(ev, dict) and ev.get("preset", "leaderboard-v1") is None and not ev.get("tasks"):
        out.append((("eval",), "names no preset and no tasks; set preset: leaderboard-v1, list tasks, or use `eval: null` to skip"))

    precision = _get(data, "train", "precision")
    compute = _get(data, "quantization", "compute_dtype")
    if precision == "fp16" and compute == "bfloat16":
        out.append((("quantization", "compute_dtype"), "bfloat16 with precision fp16 mixes dtypes; set compute_dtype: float16"))
    return out


def _resolve_paths(recipe: Recipe, base_dir: Path) -> None:
    for src in recipe.data.sources:
        if looks_local(src.path):
            src.path = str(_local_path(src.path, base_dir).resolve())
    if recipe.eval is not None and recipe.eval.tasks_dir:
        recipe.eval.tasks_dir = str(_local_path(recipe.eval.tasks_dir, base_dir).resolve())
    if recipe.output.bucket and not _has_scheme(recipe.output.bucket):
        recipe.output.bucket = str(_local_path(recipe.output.bucket, base_dir).resolve())
