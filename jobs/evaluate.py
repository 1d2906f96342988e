"""`python -m jobs eval`: score a model with EleutherAI's lm-evaluation-harness and write results.json.

Why a wrapper and not the harness CLI: the reference workflow judged fine-tunes by one six-number
table whose metrics, shot counts and MMLU averaging differ from the harness defaults (the
harness weights MMLU subjects by size; the leaderboard took the plain mean of 57 subjects), and
the result must carry the model, revision and recipe hash so a number can be traced to the run
that produced it.

Several GPUs (`--parallel`, default auto): `data` re-launches itself under
`accelerate launch --num_processes <gpus> -m jobs.evaluate ...`; the harness's HFLM then puts one
model replica on each GPU and shards the requests (rank 0 writes results.json). `model` stays in
one process and lets HFLM split one copy of the model across the GPUs (`parallelize=True`, i.e.
accelerate's device_map="auto"), for a model that does not fit one GPU. `auto` picks data
parallel when the weights (from the files' sizes or the Hub's safetensors metadata, a quarter of
that in 4-bit) fit one GPU with room for activations, else model parallel; when the size cannot
be read it keeps data parallel. SFTLAUNCH_EVAL_NO_DP=1 (older switch) means `model`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from jobs.leaderboard import BENCHES, reduce_v2, v2_average
from launcher import contract
from launcher.contract import Env
from launcher.errors import JobFailed, UserError, job_exit

HARNESS = "lm-eval"
RESULTS_SCHEMA = 1
TASKS_DIR = Path(__file__).resolve().parent / "tasks"


@dataclass(frozen=True)
class PresetTask:
    task: str  # harness task or group name
    shots: int
    metric: str  # harness result key without the filter, e.g. "acc_norm"
    name: str  # column name in the results table
    filter: str = "none"  # harness filter the metric is reported under
    mean_of_subtasks: bool = False  # plain mean over the group's leaf tasks


# Open LLM Leaderboard v1 (the table sft-demos reported), as data.
PRESETS: dict[str, tuple[PresetTask, ...]] = {
    "leaderboard-v1": (
        PresetTask("arc_challenge", 25, "acc_norm", "ARC"),
        PresetTask("hellaswag", 10, "acc_norm", "HellaSwag"),
        PresetTask("mmlu", 5, "acc", "MMLU", mean_of_subtasks=True),
        PresetTask("truthfulqa_mc2", 0, "acc", "TruthfulQA"),
        PresetTask("winogrande", 5, "acc", "Winogrande"),
        # strict-match is the "#### <number>" answer the leaderboard scored.
        PresetTask("gsm8k", 5, "exact_match", "GSM8K", filter="strict-match"),
    ),
    # Open LLM Leaderboard v2 (jobs/leaderboard.py): lm-eval's `leaderboard_*` groups at the shot
    # counts of their own task configs, scored raw and normalized as the leaderboard did.
    "leaderboard-v2": tuple(PresetTask(b.task, b.shots, b.metric, b.name) for b in BENCHES),
}
# Presets the leaderboard ran through the model's chat template with few-shot examples as turns
# (`lm_eval --apply_chat_template --fewshot_as_multiturn`), for models that have a chat template.
CHAT_PRESETS = ("leaderboard-v2",)
V2_MAX_GEN_TOKENS = 1280  # leaderboard_ifeval's max_gen_toks (MATH's is 1024): the context must exceed it


class EvalInputError(UserError):
    """Bad input: printed as one line, exit 2."""


class DatasetUnavailable(JobFailed):
    """A task's dataset cannot be loaded (Hub unreachable, offline): the job fails, exit 1."""


@dataclass
class ModelSpec:
    pretrained: str  # what HFLM loads (local dir or hub id)
    revision: str | None
    peft: str | None  # adapter dir, if any
    tokenizer: str
    model_id: str  # what the results name the model as
    base_model: str | None
    meta: dict  # sftlaunch.json of a trained model, if any


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or os.sep != "/" and os.sep in ref


TINY_MODEL_ID = contract.TINY_MODEL_ID


def _tiny_dir() -> str:
    from jobs.tiny import ensure_tiny

    return str(ensure_tiny())


def _resolve_base(base: str, adapter_dir: Path) -> str:
    if base == TINY_MODEL_ID:
        return _tiny_dir()
    if _looks_like_path(base) or Path(base).expanduser().exists():
        path = Path(base).expanduser()
        if not path.is_absolute():
            path = (adapter_dir / path) if (adapter_dir / path).exists() else path
        if not (path / "config.json").is_file():
            raise EvalInputError(
                f"{adapter_dir / 'adapter_config.json'}: base_model_name_or_path {base!r} is not a model "
                "directory (no config.json); point it at the base model or pass the merged model"
            )
        return str(path)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(base, "config.json"), str):
            raise EvalInputError(
                f"{adapter_dir / 'adapter_config.json'}: base model {base!r} is not in the Hugging Face cache "
                "and HF_HUB_OFFLINE=1; download it first or unset HF_HUB_OFFLINE"
            )
    return base


def resolve_model(ref: str, revision: str | None = None) -> ModelSpec:
    """Model dir, adapter dir (base from adapter_config.json), the tiny id, or a hub id."""
    if ref == TINY_MODEL_ID:
        path = _tiny_dir()
        return ModelSpec(path, None, None, path, TINY_MODEL_ID, None, {})
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise EvalInputError(f"--model {ref}: not a directory; give a model or adapter directory or a hub id")
        meta = {}
        if (path / "sftlaunch.json").is_file():
            meta = json.loads((path / "sftlaunch.json").read_text())
        has_tok = (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file()
        if (path / "adapter_config.json").is_file():
            cfg = json.loads((path / "adapter_config.json").read_text())
            base = cfg.get("base_model_name_or_path")
            if not base:
                raise EvalInputError(f"{path / 'adapter_config.json'}: no base_model_name_or_path; cannot find the base model")
            try:
                base_path = _resolve_base(base, path)
            except EvalInputError:
                # Trained elsewhere: adapter_config.json holds the trainer's local path of the base;
                # sftlaunch.json names it portably (a hub id or the tiny id).
                if not meta.get("base_model") or meta["base_model"] == base:
                    raise
                base_path = _resolve_base(meta["base_model"], path)
            return ModelSpec(base_path, None, str(path), str(path) if has_tok else base_path,
                             meta.get("run_id") or str(path), base, meta)
        if not (path / "config.json").is_file():
            raise EvalInputError(f"--model {ref}: no config.json or adapter_config.json in it; not a model directory")
        return ModelSpec(str(path), None, None, str(path), meta.get("run_id") or str(path), meta.get("base_model"), meta)
    if _looks_like_path(ref):
        raise EvalInputError(f"--model {ref}: no such directory; give a model/adapter directory or a hub id (org/name)")
    return _resolve_hub(ref, revision)


def hub_missing(ref: str) -> str:
    return f"model {ref}: not found on the Hub or not reachable offline; check the id, revision and HF_TOKEN"


def _resolve_hub(ref: str, revision: str | None) -> ModelSpec:
    """A hub model, or a hub PEFT adapter (its base from adapter_config.json), checked before any
    weights load so a wrong id is one line, not a loader traceback."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    try:
        hf_hub_download(ref, "config.json", revision=revision)
        return ModelSpec(ref, revision or "main", None, ref, ref, None, {})
    except RemoteEntryNotFoundError:  # the repo exists without a config.json: an adapter?
        try:
            adapter_cfg = hf_hub_download(ref, "adapter_config.json", revision=revision)
        except Exception:  # noqa: BLE001 - any failure here means "not a usable model"
            adapter_cfg = None
    except LocalEntryNotFoundError:  # offline or unreachable: only the cache can answer
        cached = try_to_load_from_cache(ref, "adapter_config.json", revision=revision)
        adapter_cfg = cached if isinstance(cached, str) else None
    except Exception:  # noqa: BLE001 - unknown repo, gated without a token, bad revision, bad id
        adapter_cfg = None
    if adapter_cfg is None:
        raise EvalInputError(hub_missing(ref))
    base = json.loads(Path(adapter_cfg).read_text()).get("base_model_name_or_path")
    if not base:
        raise EvalInputError(f"model {ref}: its adapter_config.json names no base_model_name_or_path")
    base_path = _resolve_base(base, Path(adapter_cfg).parent)
    if base_path == base:  # a hub base: it must be there too
        base_path = _resolve_hub(base, None).pretrained
    return ModelSpec(base_path, None, ref, base_path, ref, base, {})


def fetch_from_bucket(model: str, run_id: str | None) -> None:
    """An eval-only cloud task starts on a fresh disk: bring the run's published model
    (`<bucket>/<run id>/model/`) to the --model path the job was given."""
    bucket = contract.job_bucket()
    if not bucket or not run_id or not _looks_like_path(model) or Path(model).exists():
        return
    import fsspec

    fs, src = fsspec.core.url_to_fs(contract.model_prefix(bucket, run_id))
    if not fs.exists(src):
        raise EvalInputError(f"--model {model}: not on this machine and not in {contract.model_prefix(bucket, run_id)}; "
                             "publish the run first (python -m jobs publish)")
    Path(model).mkdir(parents=True, exist_ok=True)
    for path in fs.find(src):
        rel = path[len(src.rstrip("/")) + 1:]
        (Path(model) / rel).parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(path, str(Path(model) / rel))


def task_manager(tasks_dir: str | None = None, names: list[str] | None = None):
    """The harness's TaskManager with our task YAMLs (and --tasks-dir) on its include path.
    Indexing the ~10k built-in task YAMLs takes ~10 s on a small CPU; when every requested name
    is a local task the built-ins are skipped."""
    from lm_eval.tasks import TaskManager

    include = [str(TASKS_DIR)]
    if tasks_dir:
        if not Path(tasks_dir).is_dir():
            raise EvalInputError(f"--tasks-dir {tasks_dir}: no such directory of lm-eval task YAMLs")
        extra = str(Path(tasks_dir).resolve())
        if extra != str(Path(TASKS_DIR).resolve()):  # the same dir twice makes lm-eval warn per task
            include.append(extra)
    if names:
        local = TaskManager(include_path=include, include_defaults=False)
        if set(names) <= set(local.all_tasks):
            return local
    return TaskManager(include_path=include)


def check_tasks(names: list[str], tm) -> None:
    known = set(tm.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `lm-eval ls tasks` lists them"
            raise EvalInputError(f"--tasks: unknown lm-eval task {name!r}{hint}")


def _leaves(group: str, group_subtasks: dict) -> list[str]:
    out = []
    for child in group_subtasks.get(group, []):
        out.extend(_leaves(child, group_subtasks) if child in group_subtasks else [child])
    return out


def _samples(raw: dict, task: str) -> int | None:
    n = raw.get("n-samples", {}).get(task)
    return int(n["effective"]) if isinstance(n, dict) and "effective" in n else None


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else None


def reduce_preset(raw: dict, preset: tuple[PresetTask, ...]) -> list[dict]:
    """One row per preset task: the metric the leaderboard reported, from the harness output."""
    rows = []
    results, groups = raw["results"], raw.get("group_subtasks", {})
    for p in preset:
        key = f"{p.metric},{p.filter}"
        if p.mean_of_subtasks:
            leaves = _leaves(p.task, groups)
            values = [results[t][key] for t in leaves]
            errs = [_num(results[t].get(f"{p.metric}_stderr,{p.filter}")) for t in leaves]
            value = sum(values) / len(values)
            stderr = math.sqrt(sum(e * e for e in errs)) / len(errs) if all(e is not None for e in errs) else None
            samples = sum(_samples(raw, t) or 0 for t in leaves)
            extra = {"subtasks": len(leaves)}
        else:
            value = results[p.task][key]
            stderr = _num(results[p.task].get(f"{p.metric}_stderr,{p.filter}"))
            samples = _samples(raw, p.task)
            extra = {}
        rows.append({"task": p.task, "name": p.name, "metric": p.metric, "filter": p.filter,
                     "value": float(value), "stderr": stderr, "shots": p.shots, "samples": samples, **extra})
    return rows


def reduce_custom(raw: dict, names: list[str]) -> list[dict]:
    """One row per requested task: its first configured metric (groups: the harness aggregate)."""
    rows = []
    for name in names:
        res = raw["results"].get(name, {})
        cfg = raw.get("configs", {}).get(name, {})
        metric = None
        if cfg.get("metric_list"):
            metric = cfg["metric_list"][0]["metric"]
        keys = [k for k in res if "," in k and "_stderr" not in k and isinstance(res[k], (int, float))]
        pick = [k for k in keys if metric and k.split(",")[0] == metric] or keys
        if not pick:
            raise RuntimeError(f"the harness returned no metric for task {name}")
        key = pick[0]
        m, f = key.split(",", 1)
        leaves = _leaves(name, raw.get("group_subtasks", {}))
        samples = sum(_samples(raw, t) or 0 for t in leaves) if leaves else _samples(raw, name)
        shots = raw.get("n-shot", {}).get(name)
        rows.append({"task": name, "name": name, "metric": m, "filter": f, "value": float(res[key]),
                     "stderr": _num(res.get(f"{m}_stderr,{f}")), "shots": shots, "samples": samples})
    return rows


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_lm(spec: ModelSpec, batch_size, load_4bit: bool, device: str, parallelize: bool = False):
    """HFLM for the spec; `parallelize` splits one copy across this node's GPUs (model parallel)."""
    from lm_eval.models.huggingface import HFLM

    if load_4bit:
        # HFLM passes its own quantization_config (None for a plain checkpoint) to from_pretrained
        # and transformers 5 dropped load_in_4bit=, so the bitsandbytes config is injected here.
        import torch
        from transformers import BitsAndBytesConfig

        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                 bnb_4bit_compute_dtype=torch.bfloat16)

        class HFLM4bit(HFLM):
            def _create_model(self, *args, quantization_config=None, **kw):
                return super()._create_model(*args, quantization_config=bnb, **kw)

        cls = HFLM4bit
    else:
        cls = HFLM
    kwargs = {"parallelize": True} if parallelize else {}
    try:
        return cls(
            pretrained=spec.pretrained,
            revision=spec.revision or "main",
            peft=spec.peft,
            tokenizer=spec.tokenizer,
            batch_size=batch_size,
            device=device,
            dtype="float32" if device == "cpu" else "auto",
            **kwargs,
        )
    except OSError as exc:
        if spec.revision is not None:  # a hub model whose files are not all reachable
            raise EvalInputError(hub_missing(spec.model_id)) from exc
        raise


def run_harness(lm, task_groups: list[tuple[list[str], int | None]], tm, limit: int | None,
                chat: bool = False) -> dict:
    """simple_evaluate once per shot count (its num_fewshot applies to every task it is given,
    group members included), merged into one harness-shaped dict. `chat`: render prompts with
    the model's chat template, few-shot examples as turns (the v2 leaderboard's chat setting)."""
    import lm_eval

    chat_kw = {"apply_chat_template": True, "fewshot_as_multiturn": True} if chat else {}

    merged: dict = {"results": {}, "group_subtasks": {}, "n-samples": {}, "n-shot": {}, "configs": {}, "versions": {}}
    for names, shots in task_groups:
        try:
            out = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=shots, limit=limit,
                                          task_manager=tm, log_samples=False, bootstrap_iters=100_000, **chat_kw)
        except (ConnectionError, FileNotFoundError) as exc:
            raise DatasetUnavailable(
                f"tasks {', '.join(names)}: a dataset could not be loaded ({str(exc).splitlines()[0]}); "
                "the Hub must be reachable (or the dataset in HF_HOME's cache) for these tasks") from None
        if out is None:  # non-zero data-parallel rank
            return {}
        for key in merged:
            merged[key].update(out.get(key) or {})
    return merged


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def _under_launcher() -> bool:
    return any(k in os.environ for k in ("LOCAL_RANK", "ACCELERATE_LAUNCH", "WORLD_SIZE"))


def _gpu_memory_bytes() -> int:
    import torch

    return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))


_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
          "I8": 1, "U8": 1, "BOOL": 1}


def _weights_bytes_in_dir(path: Path) -> int | None:
    files = list(path.glob("*.safetensors")) or list(path.glob("pytorch_model*.bin"))
    return sum(f.stat().st_size for f in files) or None


def model_bytes(ref: str, revision: str | None = None) -> int | None:
    """Bytes of the model's weights as stored (an adapter: its base's), None when unknown.
    Reads only file sizes or the Hub's safetensors metadata, never the weights."""
    path = Path(ref).expanduser()
    if ref == TINY_MODEL_ID:
        return _weights_bytes_in_dir(Path(_tiny_dir()))
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            try:
                base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
            except ValueError:
                return None
            return model_bytes(base) if base else None
        return _weights_bytes_in_dir(path)
    try:
        from huggingface_hub import get_safetensors_metadata

        meta = get_safetensors_metadata(ref, revision=revision)
        return sum(n * _BYTES.get(dtype, 2) for dtype, n in meta.parameter_count.items())
    except Exception:  # noqa: BLE001 - offline, not safetensors, unknown: size unknown
        return None


def choose_parallel(mode: str, gpus: int, load_4bit: bool, size: int | None, gpu_bytes: int | None) -> str:
    """none | data | model for this node (see the module docstring)."""
    if gpus <= 1 or mode == "none":
        return "none"
    if mode in ("data", "model"):
        return mode
    if os.environ.get(Env.EVAL_NO_DP) == "1":
        return "model"
    if size is None or gpu_bytes is None:
        return "data"
    weights = size * (0.3 if load_4bit else 1.0)  # NF4 is 4 of 16 bits, plus constants and bf16 embeddings
    return "data" if weights * 1.2 + 2 * 2**30 <= gpu_bytes else "model"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs eval", description="Score a model with lm-eval; write OUT/results.json.")
    p.add_argument("--model", required=True, help="model dir, PEFT adapter dir, hub id, or sftlaunch/tiny-llama")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None)
    p.add_argument("--tasks", default=None, help="comma-separated lm-eval task names")
    p.add_argument("--tasks-dir", default=None, help="directory of local lm-eval task YAMLs")
    p.add_argument("--limit", type=int, default=None, help="examples per task (a quick look, not a score)")
    p.add_argument("--batch-size", default=None, help='"auto" (default) or an integer')
    p.add_argument("--load-4bit", action="store_true", help="load the weights in 4-bit NF4 (bitsandbytes)")
    p.add_argument("--parallel", choices=("auto", "data", "model", "none"),
                   default=os.environ.get(Env.EVAL_PARALLEL) or "auto",
                   help="with several GPUs: data (a replica per GPU), model (one copy split across the GPUs, "
                        "for models that do not fit one), auto (data if the model fits one GPU); "
                        f"default ${Env.EVAL_PARALLEL} or auto")
    p.add_argument("--with-base", action="store_true", default=os.environ.get(Env.EVAL_WITH_BASE) == "1",
                   help=f"also score the base model of a fine-tune into OUT-base (default ${Env.EVAL_WITH_BASE}=1)")
    p.add_argument("--recipe", default=os.environ.get(Env.RECIPE) or None,
                   help="take preset/tasks/limit/batch size/4-bit from the recipe's eval section (flags win); "
                        f"default ${Env.RECIPE}")
    p.add_argument("--recipe-sha256", default=None, help="recorded in results.json when the model has no sftlaunch.json")
    p.add_argument("--run-id", default=os.environ.get(Env.RUN_ID) or None)
    p.add_argument("--out", required=True, help="directory for results.json")
    return p


def _parse_batch(value: str):
    if value == "auto" or value.startswith("auto:"):
        return value
    try:
        n = int(value)
    except ValueError:
        raise EvalInputError(f"--batch-size {value!r}: give 'auto' or a positive integer") from None
    if n < 1:
        raise EvalInputError(f"--batch-size {value!r}: give 'auto' or a positive integer")
    return n


def apply_recipe(args: argparse.Namespace) -> None:
    """Fill unset flags from the recipe's eval section, so the job step needs only --recipe."""
    from launcher.errors import RecipeError
    from launcher.recipe import load_recipe

    try:
        recipe = load_recipe(args.recipe)
    except RecipeError as exc:
        raise EvalInputError(exc.problems[0] if exc.problems else str(exc)) from None
    args.recipe_sha256 = args.recipe_sha256 or recipe.sha256()
    ev = recipe.eval
    if ev is None and not (args.preset or args.tasks):
        args.skip = f"{args.recipe}: eval is null; nothing to evaluate"
    if ev is None or args.preset or args.tasks:
        return
    args.preset = ev.preset
    args.tasks = ",".join(ev.tasks) if ev.tasks else None
    args.tasks_dir = args.tasks_dir or ev.tasks_dir
    args.limit = args.limit if args.limit is not None else ev.limit
    args.batch_size = args.batch_size if args.batch_size is not None else ev.batch_size
    args.load_4bit = args.load_4bit or ev.load_4bit


def evaluate(args: argparse.Namespace) -> dict | None:
    if args.recipe:
        apply_recipe(args)
        if getattr(args, "skip", None):
            print(args.skip)
            return None
    if not args.preset and not args.tasks:
        raise EvalInputError("give --preset leaderboard-v1 (or leaderboard-v2) or --tasks a,b (see --help)")
    if args.limit is not None and args.limit < 1:
        raise EvalInputError(f"--limit {args.limit}: must be a positive number of examples")
    batch = _parse_batch(str(args.batch_size or "auto"))
    fetch_from_bucket(args.model, args.run_id)
    spec = resolve_model(args.model, args.revision)
    base_spec = None
    base_id = spec.meta.get("base_model") or spec.base_model  # sftlaunch.json's is portable
    if getattr(args, "with_base", False):
        if not base_id:
            raise EvalInputError(f"--with-base: {args.model} records no base model (not a fine-tune); drop --with-base")
        base_spec = resolve_model(base_id, spec.meta.get("base_revision"))
    preset = PRESETS[args.preset] if args.preset else ()
    custom = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    tm = task_manager(args.tasks_dir, [p.task for p in preset] + custom)
    check_tasks([p.task for p in preset] + custom, tm)

    by_shots: dict[int, list[str]] = {}
    for p in preset:
        by_shots.setdefault(p.shots, []).append(p.task)
    groups: list[tuple[list[str], int | None]] = sorted(by_shots.items(), key=lambda kv: -kv[0])
    groups = [(names, shots) for shots, names in groups]
    if custom:
        groups.append((custom, None))

    job = {"args": args, "batch": batch, "preset": preset, "custom": custom, "groups": groups, "tm": tm,
           "device": _device(), "parallel": getattr(args, "parallel_mode", "none")}
    result = _score(spec, job)
    if result is not None:
        _write(result, Path(args.out), "eval")
    if base_spec is not None:
        base = _score(base_spec, job)
        if base is not None:
            # Named as the fine-tune names its base (a hub id, not a cache path), so the table and
            # the model card put the two rows side by side.
            base["model"]["id"] = base_id
            base["run_id"] = base["recipe_sha256"] = None
            _write(base, base_out(args.out), "eval-base", run_id=result and result["run_id"])
    return result


def base_out(out: str) -> Path:
    """Where --with-base writes the base model's results: beside OUT (eval → eval-base)."""
    return Path(f"{str(out).rstrip('/')}-base")


def _score(spec: ModelSpec, job: dict) -> dict | None:
    """One model through the harness; the results.json dict (None on non-zero data-parallel ranks)."""
    import lm_eval

    args = job["args"]
    started = time.time()
    lm = make_lm(spec, job["batch"], args.load_4bit, job["device"], parallelize=job["parallel"] == "model")
    chat = args.preset in CHAT_PRESETS and bool(getattr(lm.tokenizer, "chat_template", None))
    if args.preset == "leaderboard-v2" and lm.max_length <= V2_MAX_GEN_TOKENS:
        raise EvalInputError(f"--model {spec.model_id}: leaderboard-v2 generates up to {V2_MAX_GEN_TOKENS} tokens "
                             f"(IFEval) but the model's context is {lm.max_length} tokens; use leaderboard-v1 or --tasks")
    raw = run_harness(lm, job["groups"], job["tm"], args.limit, chat=chat)
    if not raw:
        return None
    wall = time.time() - started
    preset, custom = job["preset"], job["custom"]
    v2 = args.preset == "leaderboard-v2"
    rows = (reduce_v2(raw) if v2 else reduce_preset(raw, preset) if preset else [])
    rows += reduce_custom(raw, custom) if custom else []
    scores = {r["name"]: r["value"] for r in rows}
    normalized = v2_average(rows) if v2 else None
    return {
        "schema": RESULTS_SCHEMA,
        "model": {"id": spec.model_id, "revision": spec.revision, "path": spec.pretrained,
                  "adapter": spec.peft, "base_model": spec.base_model},
        "run_id": args.run_id or spec.meta.get("run_id"),
        "recipe_sha256": spec.meta.get("recipe_sha256") or args.recipe_sha256,
        "preset": args.preset,
        "harness": {"name": HARNESS, "version": lm_eval.__version__},
        "tasks": rows,
        "scores": scores,
        # v2: the leaderboard's average of normalized scores (as a fraction, like every other
        # average here); the raw mean is not what the leaderboard ranked by.
        "average": normalized / 100 if normalized is not None else (sum(scores.values()) / len(scores) if scores else None),
        "normalized_average": normalized,
        "chat_template": chat,
        "limit": args.limit,
        "batch_size": job["batch"],
        "load_4bit": bool(args.load_4bit),
        "device": job["device"],
        "parallel": job["parallel"],
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(wall, 3),
        "preset_definition": [asdict(p) for p in preset] or None,
    }


def _write(result: dict, out: Path, bucket_dir: str, run_id: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    tmp.replace(out / "results.json")
    bucket = contract.job_bucket()
    run_id = run_id or result["run_id"]
    if bucket and run_id:
        # Where `sftlaunch status`/`eval` look for a remote run's scores (the cluster may be gone).
        import fsspec

        with fsspec.open(contract.results_uri(bucket, run_id, bucket_dir), "w") as fh:
            fh.write(json.dumps(result, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage line
        return 2 if exc.code else 0
    gpus = _gpu_count()
    args.parallel_mode = "none"
    if gpus > 1 and not _under_launcher():
        need_size = args.parallel == "auto" and os.environ.get(Env.EVAL_NO_DP) != "1"
        size = model_bytes(args.model, args.revision) if need_size else None
        args.parallel_mode = choose_parallel(args.parallel, gpus, args.load_4bit, size,
                                             _gpu_memory_bytes() if size else None)
        print(f"eval on {gpus} GPUs: {args.parallel_mode} parallel"
              + (f" (weights {size / 2**30:.1f} GiB)" if size else ""), flush=True)
        if args.parallel_mode == "data":
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus),
                   "--num_machines", "1", "-m", "jobs.evaluate", *argv]
            return subprocess.call(cmd)
    elif _under_launcher() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        args.parallel_mode = "data"
    try:
        result = evaluate(args)
    except (EvalInputError, DatasetUnavailable) as exc:
        return job_exit(exc)
    if result is not None:
        from launcher.results import load_results, render_table

        base = base_out(args.out) / "results.json"
        print(render_table(([load_results(base)] if args.with_base and base.is_file() else []) + [result]))
        print(f"results: {Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
