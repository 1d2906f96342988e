"""The recipe's schema: the pydantic models, the name lists and each field's own bounds.

Shape and types only. Rules that span fields are in sftcore.recipe.rules; reading the YAML with
the line of each key in sftcore.recipe.loader; pydantic's errors worded in sftcore.recipe.messages.
docs/recipes.md is generated from these models (launcher/docgen.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from sftcore import contract
from sftcore.clouds import CLOUDS
from sftcore.formats import FORMATTERS

METHODS = ("full", "lora", "qlora")
FORMATS = tuple(FORMATTERS)
TEMPLATES = contract.TEMPLATES
OPTIMIZERS = (
    "adamw_torch", "adamw_torch_fused", "paged_adamw_32bit", "paged_adamw_8bit", "adamw_bnb_8bit", "sgd",
)
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
DEEPSPEED = ("zero2", "zero3", "zero3-offload")
KERNELS = ("auto", "liger", "none")
EVAL_PRESETS = contract.EVAL_PRESETS
RUN_ID_PREFIX = contract.RUN_ID_PREFIX
RUN_ID_SUFFIX_LEN = 5  # "-" + 4 hex
NAME_MAX = 20
NAME_RE = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z]$")
GPU_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(:(?P<count>[1-9][0-9]*))?$")
# The most GPUs any cloud sells in one machine: GCP's a2-megagpu-16g (16 A100s; SkyPilot catalog
# gcp/vms.csv). Others top out at 8. A larger count is a typo; which counts a given cloud sells
# is the planner's check (launcher/estimate/), this is only the syntactic bound.
MAX_GPUS_PER_NODE = 16


def gpu_count_problem(count: str | None) -> str | None:
    """Why the COUNT of NAME:COUNT cannot be a GPU count, or None (None: no count, meaning 1)."""
    if count is None:
        return None
    if not count.isdigit():
        return f"the count must be a whole number, got {count[:20]!r}"
    if int(count[:6]) < 1:
        return f"the count must be 1 or more, got {count[:20]}"
    if len(count) > 2 or int(count) > MAX_GPUS_PER_NODE:
        return (f"the count must be at most {MAX_GPUS_PER_NODE} (the most GPUs any cloud sells in one machine), "
                f"got {count[:20] + ('…' if len(count) > 20 else '')}; use resources.nodes for more machines")
    return None
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
    bad_rows: Literal["error", "skip"] = Field(
        "error", description="A row that cannot be trained on (wrong turn order, empty answer, missing field, a "
        "conversation the chat template refuses such as a system turn for Gemma 2): "
        "`error` stops naming the source and row (exit 2); `skip` leaves it out, counted per reason in the log.")


class TrainSpec(_Strict):
    epochs: float = Field(1, gt=0, le=1000, description="Passes over the training rows.")
    learning_rate: float = Field(2.0e-4, gt=0, lt=1, description="Peak learning rate.")
    scheduler: Literal[SCHEDULERS] = Field("cosine", description="Learning-rate schedule: " + ", ".join(SCHEDULERS) + ".")  # type: ignore[valid-type]
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    micro_batch_size: int = Field(4, gt=0, le=4096, description="Sequences per GPU per forward pass.")
    grad_accum: int = Field(4, gt=0, le=4096, description="Micro-batches accumulated per optimizer step.")
    optimizer: Literal[OPTIMIZERS] = Field("paged_adamw_32bit", description="Optimizer: " + ", ".join(OPTIMIZERS) + ".")  # type: ignore[valid-type]
    precision: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="Mixed-precision mode (fp16 on T4/V100).")
    gradient_checkpointing: Literal["auto"] | bool = Field(
        "auto", description="Recompute activations in backward to save memory (~1/3 more compute): `auto` lets the "
        "plan turn it on only where the activations would not fit the chosen GPU; true/false force it.")
    kernels: Literal[KERNELS] = Field(  # type: ignore[valid-type]
        "auto", description="Fused training kernels: `auto` uses Liger (fused linear cross-entropy, RMSNorm, RoPE, "
        "SwiGLU) on CUDA for the model families Liger supports, none on CPU; `liger` requires it; `none` turns it off.")
    deepspeed: Literal[DEEPSPEED] | None = Field(None, description="DeepSpeed ZeRO config: zero2, zero3, zero3-offload (full; zero2 also with lora).")  # type: ignore[valid-type]
    checkpoint_minutes: float = Field(30, gt=0, le=WEEK_MINUTES, description="Save a resumable checkpoint this often (and at the end).")
    keep_checkpoints: int = Field(2, gt=0, le=1000, description="Keep this many newest complete checkpoints; older ones are pruned.")
    max_steps: int | None = Field(None, gt=0, le=10_000_000, description="Stop after this many optimizer steps (overrides epochs).")
    seed: int = Field(42, ge=0, description="Seed for shuffling, init of new weights and dropout (at most 2^32 - 1, numpy's limit).")

    @field_validator("gradient_checkpointing", mode="before")
    @classmethod
    def _auto_or_bool(cls, v: Any):
        # One message for the union (pydantic would report each member's failure separately).
        if v == "auto" or isinstance(v, bool):
            return v
        raise ValueError(f"must be auto, true or false, got {v!r}")

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
    regions: list[str] | None = Field(
        None, min_length=1, description="null = any region (priced at the cheapest); or regions to pin, e.g. [us-central1].")
    fallbacks: int = Field(3, ge=1, le=10, description="Fitting offers rendered in plan order; SkyPilot moves on to the next when one has no capacity.")

    @field_validator("gpu")
    @classmethod
    def _gpu_shape(cls, v: str):
        if v != "auto" and not GPU_RE.match(v):
            raise ValueError('must be `auto` or NAME[:COUNT], e.g. "H100:1" or "A100-80GB:8"')
        problem = gpu_count_problem(GPU_RE.match(v).group("count")) if v != "auto" else None
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("regions")
    @classmethod
    def _region_names(cls, v):
        bad = [r for r in v or [] if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_-]*$", r)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a region name, e.g. us-central1 or US")
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
    backend: Literal["auto", "vllm", "hf"] = Field("auto", description="lm-eval backend: vllm (vLLM's engine, fast generation; NVIDIA GPU with compute capability 8.0+), hf (transformers; CPU and fallback), or auto (vllm where it can run: GPU, not load_4bit, LoRA rank <= 512; else hf). `plan --explain` names the one its ETA assumes.")

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


def _nearest(table: dict[tuple, Any], path: tuple) -> Any:
    """`table`'s entry for `path` or for its nearest enclosing key path (None if neither)."""
    for n in range(len(path), 0, -1):
        if path[:n] in table:
            return table[path[:n]]
    return None


def _has_scheme(value: str) -> bool:
    """`gs://...`, `ftp:...`: a URL rather than a local path."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", value) is not None
