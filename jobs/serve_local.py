"""`python -m jobs.serve_local --model M --port P`: an OpenAI-compatible server on this machine
(CPU is fine) for a trained model, an adapter, or the tiny model: transformers' own `transformers
serve` (transformers.cli.serve.Serve, FastAPI + uvicorn), run in this process.

Why transformers serve and not a server of our own: it is the maintained OpenAI-compatible
server of the library that trained the model; it renders chat requests with the model
directory's tokenizer and its chat template (`apply_chat_template(..., add_generation_prompt=True)`),
which is the template training used (jobs/templates.py), and answers /v1/chat/completions and
/v1/models. What we add:
  - model resolution as `eval` does it (jobs.eval_model): a run's output dir, the tiny model id;
    an adapter directory is merged onto its bf16 base first (jobs.publish.merge_adapter) into
    `<out>/merged`, since the server loads one model directory;
  - `--prompt-log FILE`: one JSON line per chat request with the exact prompt token ids the
    server handed to generation (recorded where transformers passes `inputs["input_ids"]` to its
    response parser), so a test can prove the served prompt is the training tokenization.
The process serves until it is signalled (SIGTERM/SIGINT).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

from sftcore.errors import SftlaunchError, UserError, job_exit


def resolve_local_model(ref: str, work: Path) -> str:
    """A directory transformers serve can load: the model itself, or the adapter merged."""
    from jobs.eval_model import resolve_model

    spec = resolve_model(ref)
    if spec.peft is None:
        return spec.pretrained
    from jobs.publish import merge_adapter

    out = work / "merged"
    if not (out / "config.json").is_file():
        merge_adapter(Path(spec.peft), out)
    return str(out)


def _ids(input_ids) -> list[int]:
    ids = input_ids.tolist() if hasattr(input_ids, "tolist") else list(input_ids)
    return [int(i) for i in (ids[0] if ids and isinstance(ids[0], list) else ids)]


def install_prompt_log(path: Path) -> None:
    """Record the prompt ids of every chat completion (streaming or not) as transformers passes
    them from `apply_chat_template` to its response parser; the call itself is unchanged."""
    from transformers.cli.serving import chat_completion as cc

    lock = threading.Lock()
    parse, build = cc.parse_assistant_message, cc.build_response_parser

    def log(input_ids) -> None:
        with lock, path.open("a") as f:
            f.write(json.dumps({"prompt_token_ids": _ids(input_ids)}) + "\n")

    def logged_parse(processor, model, generated_ids, input_ids, *args, **kwargs):
        log(input_ids)
        return parse(processor, model, generated_ids, input_ids, *args, **kwargs)

    def logged_build(processor, model, input_ids, *args, **kwargs):
        log(input_ids)
        return build(processor, model, input_ids, *args, **kwargs)

    cc.parse_assistant_message, cc.build_response_parser = logged_parse, logged_build


def serve(model_dir: str, host: str, port: int, prompt_log: Path | None = None) -> None:
    """Run transformers serve pinned to `model_dir` until signalled."""
    # /v1/models lists the Hub cache as well as the pinned model; an absent cache dir is an error there.
    from huggingface_hub import constants
    from transformers.cli.serve import Serve

    Path(constants.HF_HUB_CACHE).mkdir(parents=True, exist_ok=True)
    if prompt_log is not None:
        install_prompt_log(prompt_log)
    print(f"serving {model_dir} at http://{host}:{port}/v1 (model name: {model_dir})", flush=True)
    Serve(force_model=model_dir, host=host, port=port, device="cpu" if not _has_cuda() else "auto",
          log_level="warning")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.serve_local", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model or adapter directory, or the tiny model id")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--work", default=None, help="where a merged adapter is written (default: beside the adapter)")
    p.add_argument("--prompt-log", default=None, help="JSONL file: the prompt token ids of every chat request")
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            raise UserError(f"--host {args.host}: the local server has no authentication; it listens on loopback only")
        work = Path(args.work) if args.work else Path(args.model).expanduser().parent / "serve"
        model_dir = resolve_local_model(args.model, work)
        serve(model_dir, args.host, args.port, Path(args.prompt_log) if args.prompt_log else None)
    except SftlaunchError as exc:
        return job_exit(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
