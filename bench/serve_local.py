"""Output tokens/s of `sftlaunch serve --local` on CPU, through the real `openai` client.

Why: the local server (transformers serve, jobs/serve_local.py) is what a user tries before
renting a GPU and what the parity test talks to; this prints how fast it answers, beside the
same model's bare `generate` on the same prompt, so the server's own overhead is visible.
Greedy decoding; a reply may stop at EOS before max_tokens, so the figure counts the tokens the
server reports (usage.completion_tokens). Prints figures; asserts nothing.

    python bench/serve_local.py [--model sftlaunch/tiny-llama] [--requests 8] [--max-tokens 64] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 180) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return time.perf_counter() - start
        except OSError:
            time.sleep(0.25)
    raise SystemExit("server did not answer")


def _bare_generate(model_dir: str, messages: list[dict], max_tokens: int) -> tuple[int, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        model.generate(**ids, max_new_tokens=4, do_sample=False)  # warm-up
        start = time.perf_counter()
        out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
        elapsed = time.perf_counter() - start
    return out.shape[-1] - ids["input_ids"].shape[-1], elapsed


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="sftlaunch/tiny-llama")
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=1)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from jobs.serve_local import resolve_local_model

    model_dir = resolve_local_model(args.model, Path(tempfile.mkdtemp()))
    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", "jobs.serve_local", "--model", args.model, "--port", str(port)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        ready_s = _wait(f"http://127.0.0.1:{port}/v1/models", proc)
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", timeout=120, max_retries=0)
        messages = [{"role": "system", "content": "Reverse the words."}, {"role": "user", "content": "kiwi fig berry"}]

        def one(_i: int) -> int:
            r = client.chat.completions.create(model=model_dir, messages=messages, max_tokens=args.max_tokens,
                                               temperature=0)
            return r.usage.completion_tokens

        one(0)  # warm-up: the first request loads the model
        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            tokens = sum(pool.map(one, range(args.requests)))
        elapsed = time.perf_counter() - start
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    bare_tokens, bare_s = _bare_generate(model_dir, messages, args.max_tokens)
    print(f"model {args.model} on CPU ({os.cpu_count()} cores), {args.requests} requests x max_tokens "
          f"{args.max_tokens}, concurrency {args.concurrency}")
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"server ready (listening) after {ready_s:.1f} s")
    print(f"served: {tokens} output tokens in {elapsed:.2f} s = {tokens / elapsed:.1f} tokens/s "
          f"({elapsed / args.requests * 1000:.0f} ms per request)")
    print(f"bare model.generate: {bare_tokens} tokens in {bare_s:.2f} s = {bare_tokens / bare_s:.1f} tokens/s")


if __name__ == "__main__":
    main()
