"""jobs.publish: model card, bucket copy against a real S3 API (moto), Hub upload against a local
server that speaks the Hub's HTTP endpoints (a failed LFS part retried, overwrite refused)."""

from __future__ import annotations

import json
import shutil
import socket

import pytest
import yaml

from jobs import publish
from tests.jobs.eval_fixtures import REPO, throwaway_model
from tests.jobs.fake_hub import FakeHub

RUN_ID = "sftl-tiny-pub-0001"
TRAIN = REPO / "recipes" / "data" / "tiny-task" / "train.jsonl"


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    return throwaway_model(tmp_path_factory.mktemp("pub") / "model")


def _recipe(tmp_path, bucket, hub_repo="me/tiny-pub", merge=False):
    data = {
        "name": "tiny-pub",
        "model": {"id": "sftlaunch/tiny-llama"},
        "method": "full",
        "data": {"sources": [{"path": str(TRAIN), "format": "alpaca", "max_samples": 500}], "template": "plain",
                 "seq_len": 64},
        "train": {"precision": "fp32", "micro_batch_size": 8, "grad_accum": 1, "gradient_checkpointing": False},
        "resources": {"clouds": ["local"]},
        "eval": {"preset": None, "tasks": ["tiny_mc"]},
        "output": {"bucket": bucket, "hub_repo": hub_repo, "merge_adapter": merge},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run_dir(tmp_path, base_model):
    run = tmp_path / "run"
    shutil.copytree(base_model, run / "final")
    (run / "final" / "sftlaunch.json").write_text(json.dumps({
        "run_id": RUN_ID, "recipe_sha256": "cd" * 32, "base_model": "sftlaunch/tiny-llama",
        "method": "full", "template": "plain"}))
    lines = [{"step": s, "total_steps": 40, "loss": 3.0 / s, "lr": 1e-3, "tokens_per_s": 900.0, "epoch": s / 40,
              "elapsed_s": 1.5 * s} for s in range(1, 41)]
    lines.append({"step": 40, "eval_loss": 0.2, "elapsed_s": 61.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    for name, model_id, value in (("eval-base", "sftlaunch/tiny-llama", 0.25), ("eval", RUN_ID, 0.81)):
        (run / name).mkdir()
        (run / name / "results.json").write_text(json.dumps({
            "model": {"id": model_id, "base_model": None if name == "eval-base" else "sftlaunch/tiny-llama"},
            "average": value, "limit": None, "harness": {"name": "lm-eval", "version": "0.4.13"},
            "tasks": [{"task": "tiny_mc", "name": "tiny_mc", "metric": "acc", "filter": "none", "value": value,
                       "stderr": 0.04, "shots": 0, "samples": 100}]}))
    return run


@pytest.fixture()
def s3(monkeypatch):
    """A moto S3 server on 127.0.0.1 (free port) with an empty bucket; s3fs pointed at it."""
    import boto3
    import fsspec
    import s3fs
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": url})
    s3fs.S3FileSystem.clear_instance_cache()
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    client.create_bucket(Bucket="sftl-test")
    yield client
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture()
def hub(monkeypatch):
    import huggingface_hub.constants as constants

    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(publish, "HUB_ATTEMPTS", 2)
        yield fake


def test_publish_to_s3_and_hub_then_refuse_to_overwrite(tmp_path, base_model, s3, hub, capsys, monkeypatch):
    monkeypatch.setenv("SFTLAUNCH_HARDWARE", "local 1xCPU")
    monkeypatch.setenv("SFTLAUNCH_USD_PER_HOUR", "2.5")
    recipe = _recipe(tmp_path, "s3://sftl-test/runs")  # the job's bucket: the recipe's output.bucket
    run = _run_dir(tmp_path, base_model)
    assert publish.main(["--recipe", str(recipe), "--run-dir", str(run)]) == 0

    # Bucket: model files under model/, results and card beside them, byte-identical.
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="sftl-test", Prefix=f"runs/{RUN_ID}/")["Contents"]}
    for rel in ("model/config.json", "model/model.safetensors", "model/README.md", "model/training_loss.png",
                "results.json", "README.md"):
        assert f"runs/{RUN_ID}/{rel}" in keys, rel
    body = s3.get_object(Bucket="sftl-test", Key=f"runs/{RUN_ID}/model/model.safetensors")["Body"].read()
    assert body == (run / "final" / "model.safetensors").read_bytes()

    # Hub: a private repo with the model at its root; the big file went multipart, its first part
    # failed once and was retried.
    repo = hub.repos["me/tiny-pub"]
    assert repo["private"] is True and repo["commits"] == 1
    card = repo["files"]["README.md"].decode()
    assert "- Hardware: local 1xCPU" in card and "- Estimated cost: $0.04 at $2.50/h" in card
    assert repo["files"]["model.safetensors"] == (run / "final" / "model.safetensors").read_bytes()
    assert {"README.md", "config.json", "results.json", "training_loss.png", "sftlaunch.json"} <= set(repo["files"])
    multipart = [p for p in (run / "publish").iterdir() if p.stat().st_size > 4096]
    assert hub.part_failures == len(multipart) >= 1  # each multipart upload's first part failed once
    for p in (run / "publish").iterdir():
        assert repo["files"][p.name] == p.read_bytes(), p.name
    assert hub.validated and hub.validated[-1]["base_model"] == "sftlaunch/tiny-llama"

    # A second publish must not replace main ...
    capsys.readouterr()
    assert publish.main(["--recipe", str(recipe), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "exists and has a main branch" in err and "--force" in err and "Traceback" not in err
    assert repo["commits"] == 1
    # ... unless told to; then the repo holds exactly this upload (a file of the old one is gone).
    repo["files"]["pytorch_model.bin"] = b"an older model's weights"
    repo["files"][".gitattributes"] = b"*.bin filter=lfs"
    assert publish.main(["--recipe", str(recipe), "--run-dir", str(run), "--force"]) == 0
    assert repo["commits"] == 2
    assert set(repo["files"]) == {p.name for p in (run / "publish").iterdir()} | {".gitattributes"}


def test_large_folders_go_through_the_resumable_uploader(tmp_path, base_model, hub, monkeypatch):
    monkeypatch.setattr(publish, "LARGE_FOLDER_BYTES", 0)
    hub.fail_part_once = False
    folder = tmp_path / "publish"
    shutil.copytree(base_model, folder)
    publish.hub_upload(folder, "me/large", force=False)
    repo = hub.repos["me/large"]
    assert repo["private"] is True
    for p in base_model.iterdir():
        assert repo["files"][p.name] == p.read_bytes(), p.name
    assert (folder / ".cache" / "huggingface").is_dir()  # the resume state upload_large_folder keeps
    assert not any(name.startswith(".cache") for name in repo["files"])


def test_forced_large_upload_also_removes_stale_files(tmp_path, base_model, hub, monkeypatch):
    monkeypatch.setattr(publish, "LARGE_FOLDER_BYTES", 0)
    hub.fail_part_once = False
    hub.add_repo("me/large", {"old/adapter_model.safetensors": b"stale", "config.json": b"{}"})
    folder = tmp_path / "publish"
    shutil.copytree(base_model, folder)
    publish.hub_upload(folder, "me/large", force=True)
    files = hub.repos["me/large"]["files"]
    assert set(files) == {p.name for p in base_model.iterdir()}
    assert files["config.json"] == (base_model / "config.json").read_bytes()


def test_model_card_contents_and_loss_plot(tmp_path, base_model, monkeypatch):
    recipe = _recipe(tmp_path, str(tmp_path / "bucket"), hub_repo=None)  # the job's bucket: output.bucket
    run = _run_dir(tmp_path, base_model)
    assert publish.main(["--recipe", str(recipe), "--run-dir", str(run)]) == 0
    out = run / "publish"
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "sftlaunch/tiny-llama" and front["license"] == "other"
    assert "sftlaunch" in front["tags"] and front["library_name"] == "transformers"
    assert f"| {TRAIN} | train | alpaca | 500 (rows in the file (capped by max_samples)) |" in card
    assert "- Hardware: not recorded" in card
    assert "Training time: 0.02 h (61 s)" in card
    assert "| Model | Average | tiny_mc (acc) |" in card
    assert "| sftlaunch/tiny-llama | 25.00 | 25.00 |" in card and f"| {RUN_ID} | 81.00 | 81.00 |" in card
    assert card.index("sftlaunch/tiny-llama | 25.00") < card.index(f"{RUN_ID} | 81.00")  # base row first
    assert "BitsAndBytesConfig(load_in_4bit=True" in card
    assert "```yaml\nname: tiny-pub" in card and "max_samples: 500" in card
    png = (out / "training_loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert (tmp_path / "bucket" / RUN_ID / "model" / "config.json").is_file()


def test_adapter_merge_matches_the_adapter_and_is_full_precision(tmp_path, base_model):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_model),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    merged_dir = publish.merge_adapter(tmp_path / "adapter", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    assert not (merged_dir / "adapter_config.json").exists()
    assert json.loads((merged_dir / "config.json").read_text()).get("quantization_config") is None
    ids = torch.tensor([[2, 5, 7, 11, 13]])
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.bfloat16),
                                    tmp_path / "adapter").merge_and_unload()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, ref.float()(ids).logits, atol=1e-2)
        base_logits = AutoModelForCausalLM.from_pretrained(base_model)(ids).logits
    assert not torch.allclose(merged(ids).logits, base_logits, atol=1e-3)  # the adapter changed something


def test_adapter_card_snippet_attaches_the_adapter_to_the_4bit_base_and_runs(tmp_path, base_model):
    """The adapter variant of the card: peft metadata, and a usage snippet that loads the base by
    id in 4-bit NF4 and attaches the adapter with PeftModel; executed here against local dirs."""
    import re

    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from jobs.modelcard import render_card

    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(base_model),
                   LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    shutil.copy(base_model / "tokenizer.json", adapter)
    shutil.copy(base_model / "tokenizer_config.json", adapter)
    recipe = yaml.safe_load(_recipe(tmp_path, None, hub_repo="me/tiny-lora").read_text())
    recipe["method"] = "qlora"
    card = render_card(recipe=recipe, meta={"base_model": "org/base-7b", "run_id": RUN_ID}, results=[], metrics=[],
                       repo_id="me/tiny-lora", is_adapter=True, hardware=None, usd_per_hour=None, has_plot=False)
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "peft" and front["base_model"] == "org/base-7b"
    assert {"peft", "lora", "qlora"} <= set(front["tags"])
    snippet = re.search(r"## Usage\n\n```python\n(.*?)```", card, re.S).group(1)
    assert 'base_model_id = "org/base-7b"' in snippet and 'peft_model_id = "me/tiny-lora"' in snippet
    assert "load_in_4bit=True" in snippet and 'bnb_4bit_quant_type="nf4"' in snippet
    assert "model = PeftModel.from_pretrained(model, peft_model_id)" in snippet
    scope: dict = {}
    exec(snippet.replace("org/base-7b", str(base_model)).replace("me/tiny-lora", str(adapter)), scope)  # noqa: S102
    import bitsandbytes as bnb

    model = scope["model"]
    assert isinstance(model, PeftModel)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert sum(1 for n, _ in model.named_modules() if n.endswith("lora_A")) > 0


def test_merge_uses_the_recipe_revision_and_remote_code_setting(tmp_path, base_model, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    get_peft_model(AutoModelForCausalLM.from_pretrained(base_model),
                   LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    calls = []
    real_model, real_tok = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

    def model_from(path, **kw):
        calls.append(("model", kw.get("revision"), kw.get("trust_remote_code")))
        return real_model(path, dtype=kw["dtype"])

    def tok_from(path, **kw):
        calls.append(("tokenizer", kw.get("revision"), kw.get("trust_remote_code")))
        return real_tok(path)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", model_from)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tok_from)
    publish.merge_adapter(tmp_path / "adapter", tmp_path / "merged", revision="v1.0", trust_remote_code=True)
    assert calls == [("model", "v1.0", True), ("tokenizer", "v1.0", True)]


def test_missing_model_or_token_is_exit_2(tmp_path, base_model, capsys, monkeypatch):
    recipe = _recipe(tmp_path, None)
    assert publish.main(["--recipe", str(recipe), "--run-dir", str(tmp_path / "empty")]) == 2
    assert "no trained model" in capsys.readouterr().err
    run = _run_dir(tmp_path, base_model)
    assert publish.main(["--recipe", str(recipe), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "HF_TOKEN is not set" in err and "me/tiny-pub" in err


@pytest.mark.parametrize("template", ["plain", "llama2-chat", "chatml"])
def test_published_tokenizer_carries_the_training_template(tmp_path, base_model, template):
    """`apply_chat_template` on the published model gives the ids the model was trained on,
    even for a run whose saved tokenizer still had the base model's own template."""
    from transformers import AutoTokenizer

    from jobs import templates

    recipe = _recipe(tmp_path, str(tmp_path / "bucket"), hub_repo=None)
    run = _run_dir(tmp_path, base_model)
    meta = json.loads((run / "final" / "sftlaunch.json").read_text())
    (run / "final" / "sftlaunch.json").write_text(json.dumps({**meta, "template": template}))
    trained_tok = AutoTokenizer.from_pretrained(run / "final")
    templates.prepare_tokenizer(trained_tok, template)
    assert publish.main(["--recipe", str(recipe), "--run-dir", str(run), "--no-hub"]) == 0
    published = AutoTokenizer.from_pretrained(run / "publish")
    assert published.chat_template == templates.chat_template(template, published)
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reverse: fig plum"},
            {"role": "assistant", "content": "plum fig"}, {"role": "user", "content": "kiwi pear"},
            {"role": "assistant", "content": "pear kiwi"}]
    ids = published.apply_chat_template(conv, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    if template != "chatml":  # chatml's markers are added by training (prepare_tokenizer), not by publish
        assert ids == templates.render(conv, template, trained_tok)[0]


def test_card_names_the_offer_that_ran_and_costs_it_at_its_rate(tmp_path):
    """DIR/final/sftlaunch.json's offer (jobs/rate.py, written by train) is the card's
    "Ran on" line, and its $/h prices the training time."""
    from jobs.modelcard import render_card

    recipe = yaml.safe_load(_recipe(tmp_path, None).read_text())
    offer = {"usd_per_hour": 0.7, "cloud": "gcp", "region": "us-central1", "accelerator": "L4", "count": 1,
             "nodes": 1, "spot": False, "how": "the price in us-central1"}
    card = render_card(recipe=recipe, meta={"base_model": "org/base-7b", "run_id": RUN_ID, "offer": offer}, results=[],
                       metrics=[{"step": 1, "elapsed_s": 3600.0}], repo_id="me/x", is_adapter=False,
                       hardware="gcp 1×L4 | gcp 1×A100", usd_per_hour=offer["usd_per_hour"], has_plot=False)
    assert "- Ran on: gcp us-central1 1×L4 $0.70/h (the offer SkyPilot launched" in card
    assert "- Estimated cost: $0.70 at $0.70/h" in card
    without = render_card(recipe=recipe, meta={"base_model": "org/base-7b", "run_id": RUN_ID}, results=[], metrics=[],
                          repo_id="me/x", is_adapter=False, hardware=None, usd_per_hour=None, has_plot=False)
    assert "Ran on" not in without


def test_card_tells_how_to_prompt_a_model_trained_with_a_template_switch(tmp_path):
    """A Qwen3 trained without reasoning records enable_thinking=False (jobs.templates); the card
    says to pass it, where vLLM and transformers take it. Without a switch the card says nothing."""
    from jobs.modelcard import render_card

    recipe = yaml.safe_load(_recipe(tmp_path, None).read_text())

    def card(meta):
        return render_card(recipe=recipe, meta={"base_model": "Qwen/Qwen3-30B-A3B", "run_id": RUN_ID, **meta},
                           results=[], metrics=[], repo_id="me/x", is_adapter=True, hardware=None,
                           usd_per_hour=None, has_plot=False)

    assert "`apply_chat_template(..., enable_thinking=False)`" in card({"chat_template_kwargs": {"enable_thinking": False}})
    assert "apply_chat_template(" not in card({"chat_template_kwargs": {}})
