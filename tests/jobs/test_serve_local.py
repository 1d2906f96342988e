"""`sftlaunch serve --local RUN`: transformers serve (jobs.serve_local) answers the real `openai`
client, and the prompt token ids it generated from are the training tokenization of the same
conversation (jobs.templates.render, what jobs/data.py trains on): train/serve parity through the
endpoint. The run is a recorded local run whose model is the tiny model with the tokenizer
training saves; the server is stopped at the end (its process group, which this test started)."""

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


def _published_run(tmp_path: Path, template: str) -> tuple[str, Path]:
    """A finished local run in the registry whose `final/` is the tiny model with the tokenizer
    training saves (jobs.model.load_tokenizer: the recipe's template prepared on it)."""
    import shutil

    from jobs.model import load_tokenizer
    from jobs.tiny import ensure_tiny
    from launcher.runs import Registry
    from sftcore.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "tiny-local.yaml", overrides={("data", "template"): template})
    run_id, local = f"sftl-serve-{template[:5]}-0a0a", tmp_path / "run"
    final = local / "final"
    shutil.copytree(ensure_tiny(), final)
    load_tokenizer(recipe, str(final)).save_pretrained(final)
    Registry().create(run_id, recipe.resolved_dict(), state="succeeded", local_dir=str(local))
    return run_id, final


@pytest.mark.parametrize("template", ["plain", "llama2-chat"])
def test_openai_client_multi_turn_prompts_are_the_training_ids(template, tmp_path):
    run_id, final = _published_run(tmp_path, template)
    port, log = free_port(), tmp_path / "prompts.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "serve", "--local", run_id, "--port", str(port),
                             "--prompt-log", str(log)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    conv = [{"role": "system", "content": "Reverse the words."}, {"role": "user", "content": "berry apple berry plum"}]
    usages = []
    try:
        _wait_ready(f"http://127.0.0.1:{port}/v1/models", proc)
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", timeout=60, max_retries=0)
        for follow_up in ("kiwi fig berry", None):
            reply = client.chat.completions.create(model=str(final), messages=conv, max_tokens=8, temperature=0)
            usages.append(reply.usage.prompt_tokens)
            conv.append({"role": "assistant", "content": reply.choices[0].message.content.strip() or "ok"})
            if follow_up:
                conv.append({"role": "user", "content": follow_up})
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    served = [json.loads(line)["prompt_token_ids"] for line in log.read_text().splitlines()]
    assert len(served) == 2, out[-2000:]
    from transformers import AutoTokenizer

    from jobs.templates import render

    tok = AutoTokenizer.from_pretrained(final)  # the published tokenizer, carrying the trained template
    ids, mask = render(conv, template, tok)  # the training tokenization of the whole conversation
    starts = _answer_starts(mask)
    assert len(starts) == 2
    for prompt, start, used in zip(served, starts, usages, strict=True):
        assert prompt == ids[:start], "the served prompt is not the training prefix"
        assert used == len(prompt)


def test_an_adapter_is_merged_onto_its_base_before_serving(tmp_path):
    """transformers serve loads one model directory: a LoRA adapter is merged (jobs.publish.merge_adapter)
    and the merged model computes what base + adapter compute."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jobs.serve_local import resolve_local_model
    from jobs.tiny import ensure_tiny

    base_dir = str(ensure_tiny())
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(adapter)
    merged = resolve_local_model(str(adapter), tmp_path / "work")
    assert merged == str(tmp_path / "work" / "merged") and (Path(merged) / "config.json").is_file()
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter))(ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)(ids).logits
    assert torch.allclose(got, want, atol=0.05), (got - want).abs().max()
    base = AutoModelForCausalLM.from_pretrained(base_dir)(ids).logits.detach()
    assert not torch.allclose(base, want, atol=1e-3)  # the adapter changes the output


def test_the_trained_tiny_run_answers_its_task_through_the_endpoint(tiny_local_run, tmp_path):
    """The session's real run (recipes/tiny-local.yaml, trained to reverse words), served by run id."""
    run = tiny_local_run
    assert run.returncode == 0, run.output[-2000:]
    port, log = free_port(), tmp_path / "prompts.jsonl"
    env = {**run.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("HF_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "serve", "--local", run.run_id, "--port", str(port),
                             "--prompt-log", str(log)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    conv = [{"role": "system", "content": "Reverse the words."}, {"role": "user", "content": "berry apple berry plum"}]
    try:
        _wait_ready(f"http://127.0.0.1:{port}/v1/models", proc)
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", timeout=60, max_retries=0)
        reply = client.chat.completions.create(model=str(run.run_dir / "final"), messages=conv, max_tokens=12,
                                               temperature=0)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    assert reply.choices[0].message.content.strip() == "plum berry apple berry", out[-2000:]
    from transformers import AutoTokenizer

    from jobs.templates import render

    conv.append({"role": "assistant", "content": "plum berry apple berry"})
    ids, mask = render(conv, "plain", AutoTokenizer.from_pretrained(run.run_dir / "final"))
    served = json.loads(log.read_text().splitlines()[0])["prompt_token_ids"]
    assert served == ids[:_answer_starts(mask)[0]]
