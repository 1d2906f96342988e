"""`sftlaunch serve --local RUN`: transformers serve (jobs.serve_local) answers the real `openai`
client, and the prompt token ids it generated from are the training tokenization of the same
conversation (jobs.templates.render, what jobs/data.py trains on): train/serve parity through the
endpoint. The run is the session's trained tiny run (tests/tiny_run.py); the server is stopped at
the end (its process group, which this test started)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no answer from {url} within {timeout} s")


def _answer_starts(mask: list[bool]) -> list[int]:
    return [i for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1])]


def test_openai_client_multi_turn_prompts_are_the_training_ids(tiny_local_run, tmp_path):
    run = tiny_local_run
    assert run.returncode == 0, run.output[-2000:]
    port, log = free_port(), tmp_path / "prompts.jsonl"
    env = {**run.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("HF_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "serve", "--local", run.run_id, "--port", str(port),
                             "--prompt-log", str(log)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/v1/models", proc)
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", timeout=60, max_retries=0)
        model = str(run.run_dir / "final")
        conv = [{"role": "system", "content": "Reverse the words."}, {"role": "user", "content": "berry apple berry plum"}]
        usages = []
        for follow_up in ("kiwi fig berry", None):
            reply = client.chat.completions.create(model=model, messages=conv, max_tokens=12, temperature=0)
            usages.append(reply.usage.prompt_tokens)
            conv.append({"role": "assistant", "content": reply.choices[0].message.content})
            if len(usages) == 1:  # the fine-tune answers its task through the endpoint
                assert reply.choices[0].message.content.strip() == "plum berry apple berry"
            if follow_up:
                conv.append({"role": "user", "content": follow_up})
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    served = [json.loads(line)["prompt_token_ids"] for line in log.read_text().splitlines()]
    assert len(served) == 2, out[-2000:]
    from transformers import AutoTokenizer

    from jobs.templates import render

    tok = AutoTokenizer.from_pretrained(model)  # the published tokenizer, carrying the trained template
    ids, mask = render(conv, "plain", tok)  # the training tokenization of the whole conversation
    starts = _answer_starts(mask)
    assert len(starts) == 2
    for prompt, start, used in zip(served, starts, usages, strict=True):
        assert prompt == ids[:start], "the served prompt is not the training prefix"
        assert used == len(prompt)
