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
be read it keeps data parallel.

Backend (`--backend`, default the recipe's eval.backend, else auto): `hf` is lm-eval's HFLM
above; `vllm` is lm-eval's VLLM on vLLM's engine (jobs/eval_vllm.py), which lives in its own venv
(contract.VLLM_PYTHON): this process re-runs itself there with `--backend vllm`. `auto` takes vLLM
on an Ampere-or-newer NVIDIA GPU unless 4-bit loading or a LoRA rank above vLLM's limit rules it
out (sftcore/eval_backend.py, the planner's rule too), and keeps HF when the image has no vLLM
venv. With vLLM, data parallel is lm-eval's data_parallel_size and model parallel its
tensor_parallel_size, in one process (no accelerate relaunch).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from jobs.eval_model import (
    EvalInputError,
    ModelSpec,
    fetch_from_bucket,
    hub_missing,
    model_bytes,
    resolve_model,
)
from jobs.eval_presets import CHAT_PRESETS, PRESETS, V2_MAX_GEN_TOKENS, reduce_custom, reduce_preset
from jobs.eval_vllm import choose_backend, have_vllm, run_under_vllm, vllm_python
from sftcore import contract, store
from sftcore.contract import Env, JobEnv, RunLayout
from sftcore.errors import JobFailed, job_exit
from sftcore.eval_backend import BACKENDS
from sftcore.leaderboard import reduce_v2, v2_average
from sftcore.results import base_out

HARNESS = "lm-eval"
RESULTS_SCHEMA = 1
TASKS_DIR = Path(__file__).resolve().parent / "tasks"


class DatasetUnavailable(JobFailed):
    """A task's dataset cannot be loaded (Hub unreachable, offline): the job fails, exit 1."""


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
    if (spec.meta or {}).get("chat_template_kwargs"):  # render chat prompts as training did (Qwen3: no thinking)
        kwargs["chat_template_args"] = dict(spec.meta["chat_template_kwargs"])
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


def choose_parallel(mode: str, gpus: int, load_4bit: bool, size: int | None, gpu_bytes: int | None) -> str:
    """none | data | model for this node (see the module docstring)."""
    if gpus <= 1 or mode == "none":
        return "none"
    if mode in ("data", "model"):
        return mode
    if size is None or gpu_bytes is None:
        return "data"
    weights = size * (0.3 if load_4bit else 1.0)  # NF4 is 4 of 16 bits, plus constants and bf16 embeddings
    return "data" if weights * 1.2 + 2 * 2**30 <= gpu_bytes else "model"


def build_parser() -> argparse.ArgumentParser:
    job = JobEnv.from_env()
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
                   default=job.eval_parallel or "auto",
                   help="with several GPUs: data (a replica per GPU), model (one copy split across the GPUs, "
                        "for models that do not fit one), auto (data if the model fits one GPU); "
                        f"default ${Env.EVAL_PARALLEL} or auto")
    p.add_argument("--backend", choices=BACKENDS, default=job.eval_backend,
                   help="lm-eval backend: vllm (GPU, fast generation), hf (transformers; CPU), auto (vllm where it "
                        f"can run); default ${Env.EVAL_BACKEND}, else the recipe's eval.backend, else auto")
    p.add_argument("--with-base", action="store_true", default=job.eval_with_base,
                   help=f"also score the base model of a fine-tune into OUT-base (default ${Env.EVAL_WITH_BASE}=1)")
    p.add_argument("--recipe", default=job.recipe,
                   help="take preset/tasks/limit/batch size/4-bit from the recipe's eval section (flags win), "
                        f"and the bucket from its output.bucket; default ${Env.RECIPE}")
    p.add_argument("--recipe-sha256", default=None, help="recorded in results.json when the model has no sftlaunch.json")
    p.add_argument("--run-id", default=job.run_id)
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
    from sftcore.errors import RecipeError
    from sftcore.recipe import load_recipe

    try:
        recipe = load_recipe(args.recipe)
    except RecipeError as exc:
        raise EvalInputError(exc.problems[0] if exc.problems else str(exc)) from None
    args.recipe_sha256 = args.recipe_sha256 or recipe.sha256()
    args.bucket = recipe.output.bucket
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
    bucket = getattr(args, "bucket", None)  # the recipe's output.bucket; none without --recipe
    fetch_from_bucket(args.model, bucket, args.run_id)
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
        _write(result, Path(args.out), bucket)
    if base_spec is not None:
        if getattr(args, "backend", None) == "vllm":
            # The fine-tune's vLLM engine holds ~90% of GPU memory until it is collected (its
            # engine-core process ends with the LLM object); the base's engine needs it back.
            import gc

            gc.collect()
        base = _score(base_spec, job)
        if base is not None:
            # Named as the fine-tune names its base (a hub id, not a cache path), so the table and
            # the model card put the two rows side by side.
            base["model"]["id"] = base_id
            base["run_id"] = base["recipe_sha256"] = None
            _write(base, base_out(args.out), bucket, base=True, run_id=result and result["run_id"])
    return result


def _score(spec: ModelSpec, job: dict) -> dict | None:
    """One model through the harness; the results.json dict (None on non-zero data-parallel ranks)."""
    import lm_eval

    args = job["args"]
    started = time.time()
    backend = getattr(args, "backend", None) or "hf"
    if backend == "vllm":
        from jobs.eval_vllm import make_vllm_lm

        lm = make_vllm_lm(spec, job["batch"], job["parallel"], _gpu_count())
    else:
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
        "backend": backend,
        "parallel": job["parallel"],
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(wall, 3),
        "preset_definition": [asdict(p) for p in preset] or None,
    }


def _write(result: dict, out: Path, bucket: str | None, base: bool = False, run_id: str | None = None) -> None:
    """OUT/results.json, and its copy in `<bucket>/<run id>/eval[-base]/` where `sftlaunch
    status`/`eval` look for a remote run's scores (the cluster may be gone)."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    tmp = out / f"{contract.RESULTS}.tmp"
    tmp.write_text(text)
    tmp.replace(out / contract.RESULTS)
    run_id = run_id or result["run_id"]
    if bucket and run_id:
        store.write_text(RunLayout.in_bucket(bucket, run_id).eval_results(base), text)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage line
        return 2 if exc.code else 0
    gpus = _gpu_count()
    try:
        requested = choose_backend(args, gpus)
    except EvalInputError as exc:
        return job_exit(exc)
    if args.backend == "vllm" and not have_vllm():
        py = vllm_python()
        if py is not None:
            return run_under_vllm(py, argv)
        if requested == "vllm":
            return job_exit(EvalInputError(
                f"--backend vllm: no vLLM here and no vLLM venv at {JobEnv.from_env().vllm_python or contract.VLLM_PYTHON}; "
                f"use the sftlaunch image (it carries one), set {Env.VLLM_PYTHON}, or use --backend hf"))
        print("eval backend hf (auto: this image has no vLLM venv)", flush=True)
        args.backend = "hf"
    args.parallel_mode = "none"
    if gpus > 1 and not _under_launcher():
        need_size = args.parallel == "auto"
        size = model_bytes(args.model, args.revision) if need_size else None
        args.parallel_mode = choose_parallel(args.parallel, gpus, args.load_4bit, size,
                                             _gpu_memory_bytes() if size else None)
        print(f"eval on {gpus} GPUs: {args.parallel_mode} parallel"
              + (f" (weights {size / 2**30:.1f} GiB)" if size else ""), flush=True)
        if args.parallel_mode == "data" and args.backend == "hf":
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
        from sftcore.results import load_results, render_table

        base = base_out(args.out) / contract.RESULTS
        print(render_table(([load_results(base)] if args.with_base and base.is_file() else []) + [result]))
        print(f"results: {Path(args.out) / contract.RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
