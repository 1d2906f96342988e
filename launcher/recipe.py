"""The recipe: one YAML file that says what to train, on what data, where, and where results go.

Why this module is more than a pydantic model: users need *every* problem at once, each pointing
at the line they must edit (`file:line: field.path: message`), with a hint where one helps. So
the YAML is composed into nodes first (keeping line numbers and catching duplicate keys), turned
into plain data, validated by pydantic (shape and types) and by `_cross_field_problems` (rules
that span fields), and every error is mapped back to the line of the offending key.

Light imports only: this runs on `sftlaunch validate` and must not pull torch or sky.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
EVAL_PRESETS = ("leaderboard-v1",)
LOCAL_DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
RUN_ID_PREFIX = "sftl-"
RUN_ID_SUFFIX_LEN = 5  # "-" + 4 hex
NAME_MAX = 20
NAME_RE = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z]$")
GPU_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(:(?P<count>[1-9][0-9]*))?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=False)


class ModelSpec(_Strict):
    id: str = Field(description="Hugging Face Hub id (e.g. meta-llama/Llama-2-70b-hf) or a local model directory.")
    revision: str | None = Field(None, description="Git revision (branch, tag or commit) to pin the model to.")
    trust_remote_code: bool = Field(False, description="Allow the model repository's own Python code to run.")


class LoraSpec(_Strict):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
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
    max_samples: int | None = Field(None, gt=0, description="Take at most this many rows (after a seeded shuffle).")

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
    epochs: float = Field(1, gt=0, description="Passes over the training rows.")
    learning_rate: float = Field(2.0e-4, gt=0, lt=1, description="Peak learning rate.")
    scheduler: Literal[SCHEDULERS] = Field("cosine", description="Learning-rate schedule: " + ", ".join(SCHEDULERS) + ".")  # type: ignore[valid-type]
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    micro_batch_size: int = Field(4, gt=0, description="Sequences per GPU per forward pass.")
    grad_accum: int = Field(4, gt=0, description="Micro-batches accumulated per optimizer step.")
    optimizer: Literal[OPTIMIZERS] = Field("paged_adamw_32bit", description="Optimizer: " + ", ".join(OPTIMIZERS) + ".")  # type: ignore[valid-type]
    precision: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="Mixed-precision mode (fp16 on T4/V100).")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in backward to save memory (~1/3 more compute).")
    deepspeed: Literal[DEEPSPEED] | None = Field(None, description="DeepSpeed ZeRO config: zero2, zero3, zero3-offload (full; zero2 also with lora).")  # type: ignore[valid-type]
    checkpoint_minutes: float = Field(30, gt=0, description="Save a resumable checkpoint this often (and at the end).")
    keep_checkpoints: int = Field(2, gt=0, description="Keep this many newest complete checkpoints; older ones are pruned.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    seed: int = Field(42, ge=0, description="Seed for shuffling, init of new weights and dropout.")


class ResourcesSpec(_Strict):
    clouds: list[Literal[tuple(CLOUDS) + ("local",)]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["lambda", "runpod", "gcp"], min_length=1,
        description="Allowed clouds in order of preference: lambda, runpod, gcp, kubernetes, local.",
    )
    gpu: str = Field("auto", description='`auto` (cheapest that fits) or an accelerator with count, e.g. "H100:1", "A100-80GB:8".')
    nodes: int = Field(1, gt=0, le=64, description="Number of machines (multi-node needs a cloud that supports it).")
    spot: bool = Field(False, description="Use preemptible instances as a managed job that resumes from the bucket.")
    disk_gb: int = Field(256, gt=0, description="Disk per node in GB (weights, checkpoints, caches).")
    autostop_minutes: int = Field(30, ge=0, description="Stop (or down, where a cloud cannot stop) after this many idle minutes.")
    max_usd: float | None = Field(None, gt=0, description="Refuse to launch if the estimated total cost exceeds this.")

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
    preset: Literal[EVAL_PRESETS] | None = Field("leaderboard-v1", description="Benchmark preset (Open LLM Leaderboard v1: six tasks).")  # type: ignore[valid-type]
    tasks: list[str] | None = Field(None, description="lm-eval task names, instead of or beside the preset.")
    tasks_dir: str | None = Field(None, description="Directory of local lm-eval task YAMLs (relative to the recipe).")
    batch_size: Literal["auto"] | int = Field("auto", description="Eval batch size, or `auto`.")
    limit: int | None = Field(None, gt=0, description="Only this many samples per task (a quick look, not a score).")
    load_4bit: bool = Field(False, description="Load the model in 4-bit for eval (models that would not fit otherwise).")

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, v):
        if isinstance(v, int) and v <= 0:
            raise ValueError("must be a positive integer or `auto`")
        return v


class OutputSpec(_Strict):
    bucket: str | None = Field(None, description="gs://, s3:// or a local path for checkpoints and results (required for spot).")
    hub_repo: str | None = Field(None, description="Hugging Face Hub repo to push to, e.g. me/llama2-70b-dolphin-qlora (private).")
    merge_adapter: bool = Field(False, description="Also publish LoRA weights merged into the bf16 base.")

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

    # Not part of the YAML: where the recipe came from.
    _source_path: Path | None = None

    @property
    def source_path(self) -> Path | None:
        return self._source_path

    def resolved_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.resolved_dict(), sort_keys=False, default_flow_style=False)

    def sha256(self) -> str:
        blob = json.dumps(self.resolved_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Loading with line numbers


class _Located:
    """Plain data plus a map from key path to the line of that key (1-based)."""

    def __init__(self) -> None:
        self.lines: dict[tuple, int] = {}
        self.problems: list[tuple[tuple, str]] = []


def _construct(node: yaml.Node, path: tuple, loc: _Located) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _construct(key_node, path, loc)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                loc.problems.append((path, f"keys must be plain words, not {type(key).__name__}"))
                continue
            key = str(key)
            child = path + (key,)
            if key in out:
                loc.lines[child] = key_node.start_mark.line + 1
                loc.problems.append((child, "duplicate key: the second one would silently win; keep one"))
                continue
            loc.lines[child] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, child, loc)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            loc.lines[path + (i,)] = item.start_mark.line + 1
            items.append(_construct(item, path + (i,), loc))
        return items
    # Scalars: let PyYAML's safe constructor resolve types (int, float, bool, null).
    return yaml.SafeLoader.construct_object(_SCALAR_LOADER, node, deep=True)


class _ScalarLoader(yaml.SafeLoader):
    def __init__(self) -> None:  # no stream: only used for construct_object on scalar nodes
        yaml.SafeLoader.__init__(self, "")


_SCALAR_LOADER = _ScalarLoader()


def _fmt(source: str, line: int | None, path: tuple, message: str) -> str:
    field = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path).replace(".[", "[") or "(recipe)"
    return f"{source}:{line or 1}: {field}: {message}"


def _line_for(loc: _Located, path: tuple) -> int | None:
    for n in range(len(path), 0, -1):
        if path[:n] in loc.lines:
            return loc.lines[path[:n]]
    return None


def load_recipe(path: str | Path) -> Recipe:
    """Read, validate and resolve a recipe file; raise RecipeError listing every problem."""
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
    return _from_text(text, source, p.resolve().parent)


def _from_text(text: str, source: str, base_dir: Path) -> Recipe:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        what = (exc.problem or "invalid YAML").strip()
        raise RecipeError([f"{source}:{line}: (recipe): YAML syntax error: {what}; fix the indentation or quoting"]) from None
    except yaml.YAMLError as exc:
        raise RecipeError([f"{source}:1: (recipe): YAML error: {exc}"]) from None
    if node is None:
        raise RecipeError([f"{source}:1: (recipe): empty file; start from recipes/tiny-local.yaml"])
    if not isinstance(node, yaml.MappingNode):
        kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
        raise RecipeError([f"{source}:{node.start_mark.line + 1}: (recipe): top level is {kind}; a recipe is a mapping of keys (name:, model:, data:, ...)"])
    loc = _Located()
    try:
        data = _construct(node, (), loc)
    except yaml.YAMLError as exc:
        raise RecipeError([f"{source}:1: (recipe): YAML error: {exc}"]) from None
    return _validate(data, source, base_dir, loc)


def recipe_from_dict(data: dict, source: str = "<dict>", base_dir: str | Path | None = None) -> Recipe:
    """Validate a recipe given as data (tests, programmatic use). Same checks, no line numbers."""
    if not isinstance(data, dict):
        raise RecipeError([f"{source}:1: (recipe): a recipe is a mapping of keys, not {type(data).__name__}"])
    return _validate(data, source, Path(base_dir or Path.cwd()).resolve(), _Located())


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


def _message(err: dict) -> str:
    kind = err["type"]
    msg = err["msg"]
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return "required; add it"
    if kind == "literal_error":
        return f"got {err.get('input')!r}; expected one of {ctx.get('expected', '')}".replace("'", "")
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number, got {err.get('input')!r}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, got {err.get('input')!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {err.get('input')!r}"
    if kind in ("string_type",):
        return f"must be text, got {type(err.get('input')).__name__} {err.get('input')!r}"
    if kind in ("list_type",):
        return f"must be a list, got {type(err.get('input')).__name__}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping of keys, got {type(err.get('input')).__name__} {err.get('input')!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short", "too_long"):
        return f"{msg[0].lower() + msg[1:]}, got {err.get('input')!r}"
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


def _validate(data: dict, source: str, base_dir: Path, loc: _Located) -> Recipe:
    problems: list[tuple[tuple, str]] = list(loc.problems)
    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        seen: set[tuple] = set()
        for err in exc.errors():
            path = _clean_loc(tuple(err["loc"]))
            if err["type"] == "extra_forbidden":
                key = path[-1]
                owner = _model_at(path[:-1])
                hint = ""
                if owner is not None:
                    close = difflib.get_close_matches(str(key), _known_fields(owner), n=1, cutoff=0.6)
                    if close:
                        hint = f"; did you mean {close[0]}?"
                    else:
                        hint = f"; known keys: {', '.join(_known_fields(owner))}"
                msg = f"unknown key{hint}"
            else:
                msg = _message(err)
            # A union reports each branch; keep one message per path.
            if path in seen:
                continue
            seen.add(path)
            problems.append((path, msg))
    problems.extend(_cross_field_problems(data, base_dir))
    if problems:
        lines = []
        for path, msg in problems:
            lines.append((_line_for(loc, path) or 1, _fmt(source, _line_for(loc, path), path, msg)))
        # Stable: by line, then as found.
        ordered = [text for _, text in sorted(enumerate_lines(lines))]
        raise RecipeError(list(dict.fromkeys(ordered)))
    assert recipe is not None
    _resolve_paths(recipe, base_dir)
    recipe._source_path = None if source.startswith("<") else Path(source).resolve()
    return recipe


def enumerate_lines(lines: list[tuple[int, str]]):
    for i, (line, text) in enumerate(lines):
        yield (line, i), text


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


def _cross_field_problems(data: dict, base_dir: Path) -> list[tuple[tuple, str]]:
    out: list[tuple[tuple, str]] = []
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
    if spot is True and not _get(data, "output", "bucket"):
        out.append((("resources", "spot"), "spot needs output.bucket so checkpoints survive preemption; set output.bucket (gs://, s3://) or spot: false"))

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
            fix_key = "spot: true" if feature == "spot" else f"nodes: {nodes}"
            fix = f"remove `{fix_key}`" + (f" or allow {others[0]} in resources.clouds" if others else "")
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
                lp = _local_path(path, base_dir)
                if not lp.exists():
                    out.append((("data", "sources", i, "path"), f"local file not found: {lp}; fix the path (relative to the recipe) or use a hub id OWNER/NAME"))
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
