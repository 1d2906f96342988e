"""The vLLM side of `python -m jobs eval`: which backend runs (sftcore.eval_backend's rule, with
this host's facts), the interpreter that has vLLM, and lm-eval's VLLM model built from a ModelSpec.

Why a second interpreter: vLLM pins its own torch (vLLM 0.33 a different release from the
training stack's), so the image carries it in its own venv (contract.VLLM_PYTHON, docker/
Dockerfile stage `vllm`) and the training venv's `jobs eval` re-runs itself there with
`--backend vllm`. lm-eval's `vllm` model (lm_eval/models/vllm_causallms.py) does the scoring:
loglikelihood through prompt logprobs, generation through vLLM's continuous batching; the chat
template comes from the tokenizer as in the HF path. A PEFT adapter is served as a LoRA
(`lora_local_path`, with `max_lora_rank` the smallest vLLM rank >= the adapter's r); merged or
full weights load directly. Standard library only at import.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

from jobs.eval_model import EvalInputError, ModelSpec
from sftcore import contract
from sftcore.contract import JobEnv
from sftcore.eval_backend import BackendError, choose, max_lora_rank


def have_vllm() -> bool:
    """vLLM importable in this interpreter (the vLLM venv), without importing it."""
    return importlib.util.find_spec("vllm") is not None


def vllm_python() -> str | None:
    """The vLLM venv's interpreter ($SFTLAUNCH_VLLM_PYTHON, else the image's), if it exists."""
    path = JobEnv.from_env().vllm_python or contract.VLLM_PYTHON
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def adapter_rank(model: str) -> int | None:
    """The LoRA rank of an adapter directory (the largest in rank_pattern), None for full weights."""
    cfg_path = Path(model).expanduser() / "adapter_config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError:
        return None
    ranks = [cfg.get("r")] + list((cfg.get("rank_pattern") or {}).values())
    ranks = [r for r in ranks if isinstance(r, int)]
    return max(ranks) if ranks else None


def _capable() -> bool:
    """Every visible GPU has compute capability 8.0+ (bf16); False when none is visible."""
    try:
        import torch

        n = torch.cuda.device_count()
        return n > 0 and all(torch.cuda.get_device_capability(i) >= (8, 0) for i in range(n))
    except Exception:  # noqa: BLE001 - no CUDA runtime: not capable
        return False


def pick_backend(requested: str, gpus: int, load_4bit: bool, model: str) -> tuple[str, str]:
    """(backend, why) on this host; `vllm` where it cannot run is EvalInputError (exit 2)."""
    try:
        return choose(requested, cuda=gpus > 0, capable=gpus > 0 and _capable(), load_4bit=load_4bit,
                      lora_r=adapter_rank(model))
    except BackendError as exc:
        raise EvalInputError(str(exc)) from None


def choose_backend(args, gpus: int) -> str:
    """Set args.backend to the backend that runs (flag, else the recipe's eval.backend, else
    auto, decided on this host); returns what was asked for."""
    requested, load_4bit = args.backend, args.load_4bit
    if args.recipe and (requested is None or not load_4bit):
        from sftcore.errors import RecipeError
        from sftcore.recipe import load_recipe

        try:
            ev = load_recipe(args.recipe).eval
        except RecipeError as exc:
            raise EvalInputError(exc.problems[0] if exc.problems else str(exc)) from None
        if ev is not None:
            requested = requested or ev.backend
            load_4bit = load_4bit or (ev.load_4bit and not (args.preset or args.tasks))
    requested = requested or "auto"
    args.backend, why = pick_backend(requested, gpus, load_4bit, args.model)
    if gpus:
        print(f"eval backend {args.backend} ({why})", flush=True)
    return requested


def run_under_vllm(python: str, argv: list[str]) -> int:
    """This eval again, in the vLLM venv: `python -m jobs.evaluate ... --backend vllm`, with the
    project on PYTHONPATH (the venv holds vLLM, lm-eval and their deps, not sftlaunch)."""
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    print(f"eval with vLLM: {python}", flush=True)
    return subprocess.call([python, "-m", "jobs.evaluate", *argv, "--backend", "vllm"], env=env)


def _local_adapter(ref: str) -> str:
    """lm-eval's lora_local_path must be a directory: a Hub adapter is downloaded first."""
    if Path(ref).expanduser().is_dir():
        return ref
    from huggingface_hub import snapshot_download

    return snapshot_download(ref)


# Every keyword vllm_model_args can give lm-eval's VLLM (checked against its signature in the tests
# and at image build).
VLLM_ARG_NAMES = frozenset({"pretrained", "tokenizer", "dtype", "batch_size", "revision", "lora_local_path",
                            "max_lora_rank", "tensor_parallel_size", "data_parallel_size", "max_model_len",
                            "chat_template_args"})
# vLLM reserves KV cache for at least one sequence of max_model_len, which defaults to the model's
# full context (128k for Llama 3.1: ~17 GB of KV cache for an 8B model, more than a 24 GB GPU has
# left after the weights). The longest leaderboard requests are far shorter (MMLU-Pro 5-shot
# prompts ~1.8k tokens on average; MATH 4-shot ~1.3k + 1,024 generated; IFEval 1,280 generated).
VLLM_MAX_MODEL_LEN = 8192


def lm_eval_vllm_params() -> set[str]:
    """The named parameters of lm-eval's VLLM.__init__, read from the installed lm-eval's source
    (lm_eval/models/vllm_causallms.py) with ast: that module imports vLLM at its top, so it cannot
    be imported where vLLM is not installed (the training venv, CI)."""
    import ast

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("lm-eval is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "vllm_causallms.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "VLLM":
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef) and fn.name == "__init__":
                    a = fn.args
                    return {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs} - {"self"}
    raise RuntimeError(f"{path}: no class VLLM with an __init__")


def model_context(spec: ModelSpec) -> int | None:
    """The model's context length (config.json's max_position_embeddings), None when unknown."""
    path = Path(spec.pretrained) / "config.json"
    try:
        if not path.is_file():
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(spec.pretrained, "config.json", revision=spec.revision))
        cfg = json.loads(path.read_text())
    except Exception:  # noqa: BLE001 - unreadable: vLLM derives it itself
        return None
    value = cfg.get("max_position_embeddings") or (cfg.get("text_config") or {}).get("max_position_embeddings")
    return value if isinstance(value, int) and value > 0 else None


def vllm_model_args(spec: ModelSpec, batch, parallel: str, gpus: int, context: int | None = None) -> dict:
    """Keyword arguments of lm-eval's VLLM (lm_eval.models.vllm_causallms.VLLM.__init__; every
    name is one of its own parameters, tests/jobs/test_eval_vllm.py checks). `parallel` as for HF:
    data = a replica per GPU (lm-eval's data_parallel_size, over Ray), model = one copy split
    across them (tensor_parallel_size)."""
    args: dict = {"pretrained": spec.pretrained, "tokenizer": spec.tokenizer, "dtype": "auto",
                  "batch_size": batch if isinstance(batch, int) else "auto"}
    if spec.revision:
        args["revision"] = spec.revision
    if spec.peft:
        args["lora_local_path"] = _local_adapter(spec.peft)
        args["max_lora_rank"] = max_lora_rank(adapter_rank(args["lora_local_path"]) or 16)
    if context:
        args["max_model_len"] = min(context, VLLM_MAX_MODEL_LEN)
    if (spec.meta or {}).get("chat_template_kwargs"):  # render chat prompts as training did (Qwen3: no thinking)
        args["chat_template_args"] = dict(spec.meta["chat_template_kwargs"])
    if gpus > 1 and parallel == "model":
        args["tensor_parallel_size"] = gpus
    elif gpus > 1 and parallel == "data":
        args["data_parallel_size"] = gpus
    return args


def make_vllm_lm(spec: ModelSpec, batch, parallel: str, gpus: int):
    """lm-eval's VLLM model (imports vLLM: only in the vLLM venv)."""
    from lm_eval.models.vllm_causallms import VLLM

    return VLLM(**vllm_model_args(spec, batch, parallel, gpus, model_context(spec)))
