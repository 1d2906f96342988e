"""jobs.evaluate against the real lm-evaluation-harness, offline, on the tiny model."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from jobs import evaluate
from tests.jobs.eval_fixtures import REPO, eval_rows_env, tiny_model

TINY_RECIPE = REPO / "recipes" / "tiny-local.yaml"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def harness_tasks():
    """The harness's own task registry (YAML configs only: no datasets are downloaded)."""
    return evaluate.task_manager(None)


def bucket_recipe(tmp_path, bucket: str) -> str:
    """A recipe whose output.bucket is `bucket`: where `jobs eval --recipe` copies its scores."""
    path = tmp_path / "bucket-recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "evalbucket", "model": {"id": "sftlaunch/tiny-llama"}, "method": "full",
                                    "data": {"sources": [{"path": "stub/data", "format": "alpaca"}]},
                                    "resources": {"clouds": ["local"]}, "eval": {"tasks": ["tiny_mc"]},
                                    "output": {"bucket": bucket}}))
    return str(path)


def run_eval(tmp_path, *args) -> tuple[int, dict | None]:
    out = tmp_path / "out"
    code = evaluate.main([*args, "--out", str(out)])
    path = out / "results.json"
    return code, (json.loads(path.read_text()) if path.exists() else None)


# -- the preset is the leaderboard's, as the harness defines those tasks ------------------------
def test_preset_tasks_metrics_and_filters_exist_in_the_harness(harness_tasks):
    index = harness_tasks.task_index
    for p in evaluate.PRESETS["leaderboard-v1"]:
        assert p.task in index, p.task
        if p.mean_of_subtasks:
            continue
        cfg = index[p.task].cfg
        assert p.metric in [m["metric"] for m in cfg["metric_list"]], (p.task, p.metric)
        filters = [f["name"] for f in cfg.get("filter_list") or []] or ["none"]
        assert p.filter in filters, (p.task, p.filter, filters)
        # The harness default must not contradict the preset's shots where it sets one.
        assert cfg.get("num_fewshot") in (None, p.shots), (p.task, cfg.get("num_fewshot"))
    by_name = {p.name: p for p in evaluate.PRESETS["leaderboard-v1"]}
    assert [(p.task, p.shots, p.metric) for p in by_name.values()] == [
        ("arc_challenge", 25, "acc_norm"), ("hellaswag", 10, "acc_norm"), ("mmlu", 5, "acc"),
        ("truthfulqa_mc2", 0, "acc"), ("winogrande", 5, "acc"), ("gsm8k", 5, "exact_match")]
    # MMLU's plain mean runs over its 57 subject tasks, each reporting acc.
    subjects = [n for n, e in index.items() if e.kind.name == "TASK" and e.tags & {
        "mmlu_stem_tasks", "mmlu_other_tasks", "mmlu_social_sciences_tasks", "mmlu_humanities_tasks"}]
    assert len(subjects) == 57
    assert all(m["metric"] == "acc" for n in subjects for m in index[n].cfg["metric_list"])
    gsm = index["gsm8k"].cfg["filter_list"][0]
    assert gsm["name"] == "strict-match" and "####" in gsm["filter"][0]["regex_pattern"]


def test_mmlu_is_the_plain_subject_mean_not_the_sample_weighted_one():
    raw = {
        "results": {
            "arc_challenge": {"acc,none": 0.1, "acc_norm,none": 0.5, "acc_norm_stderr,none": 0.01},
            "hellaswag": {"acc_norm,none": 0.6, "acc_norm_stderr,none": 0.01},
            "mmlu": {"acc,none": 0.75, "acc_stderr,none": 0.0},  # weighted: (0.9*300+0.1*100)/400 ≈ 0.7
            "mmlu_stem": {"acc,none": 0.9},
            "mmlu_a": {"acc,none": 0.9, "acc_stderr,none": 0.03},
            "mmlu_b": {"acc,none": 0.1, "acc_stderr,none": 0.04},
            "truthfulqa_mc2": {"acc,none": 0.4, "acc_stderr,none": 0.02},
            "winogrande": {"acc,none": 0.7, "acc_stderr,none": 0.02},
            "gsm8k": {"exact_match,strict-match": 0.2, "exact_match,flexible-extract": 0.3,
                      "exact_match_stderr,strict-match": 0.01},
        },
        "group_subtasks": {"mmlu": ["mmlu_stem"], "mmlu_stem": ["mmlu_a", "mmlu_b"]},
        "n-samples": {"mmlu_a": {"original": 300, "effective": 300}, "mmlu_b": {"original": 100, "effective": 100},
                      "gsm8k": {"original": 1319, "effective": 1319}},
    }
    rows = {r["name"]: r for r in evaluate.reduce_preset(raw, evaluate.PRESETS["leaderboard-v1"])}
    assert rows["MMLU"]["value"] == pytest.approx(0.5)
    assert rows["MMLU"]["samples"] == 400 and rows["MMLU"]["subtasks"] == 2
    assert rows["MMLU"]["stderr"] == pytest.approx(math.sqrt(0.03**2 + 0.04**2) / 2)
    assert rows["GSM8K"]["value"] == 0.2 and rows["GSM8K"]["filter"] == "strict-match"
    assert rows["ARC"]["value"] == 0.5 and rows["ARC"]["shots"] == 25


# -- the real harness on the tiny model --------------------------------------------------------
def test_tiny_tasks_run_through_the_harness(model_dir, tmp_path, monkeypatch):
    eval_rows_env(monkeypatch, tmp_path)
    code, res = run_eval(tmp_path, "--model", str(model_dir), "--tasks", "tiny_mc,tiny_gen",
                         "--limit", "6", "--batch-size", "8", "--recipe-sha256", "ab" * 32)
    assert code == 0
    import lm_eval

    assert res["harness"] == {"name": "lm-eval", "version": lm_eval.__version__}
    rows = {r["task"]: r for r in res["tasks"]}
    assert rows["tiny_mc"]["metric"] == "acc" and rows["tiny_gen"]["metric"] == "exact_match"
    for r in rows.values():
        assert r["samples"] == 6 and r["shots"] == 0 and 0.0 <= r["value"] <= 1.0
        assert r["stderr"] is not None
    assert res["recipe_sha256"] == "ab" * 32 and res["limit"] == 6 and res["wall_s"] > 0
    assert res["backend"] == "hf" and res["device"] == "cpu"  # CPU: lm-eval's HF backend, as before
    assert res["average"] == pytest.approx((rows["tiny_mc"]["value"] + rows["tiny_gen"]["value"]) / 2)


def test_bad_inputs_are_one_line_and_exit_2(tmp_path, capsys, harness_tasks, model_dir, monkeypatch):
    code, _ = run_eval(tmp_path, "--model", str(tmp_path / "nope" / "model"), "--tasks", "tiny_mc")
    assert code == 2 and "no such directory" in capsys.readouterr().err
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone")}))
    code, _ = run_eval(tmp_path, "--model", str(adapter), "--tasks", "tiny_mc")
    err = capsys.readouterr().err
    assert code == 2 and "base_model_name_or_path" in err and "gone" in err
    monkeypatch.setattr(evaluate, "task_manager", lambda *a, **k: harness_tasks)
    code, _ = run_eval(tmp_path, "--model", str(model_dir), "--tasks", "hellaswagg")
    err = capsys.readouterr().err
    assert code == 2 and "unknown lm-eval task 'hellaswagg'" in err and "hellaswag" in err
    assert "Traceback" not in err
    # The preset's datasets live on the Hub: offline, the job fails (exit 1) naming the dataset.
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, _ = run_eval(tmp_path, "--model", str(model_dir), "--preset", "leaderboard-v1", "--limit", "2")
    err = capsys.readouterr().err
    assert code == 1 and "allenai/ai2_arc" in err and "could not be loaded" in err


def test_recipe_with_eval_null_is_skipped(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "noeval", "model": {"id": "sftlaunch/tiny-llama"}, "method": "full",
                                      "data": {"sources": [{"path": "x/y", "format": "alpaca"}]},
                                      "resources": {"clouds": ["local"]}, "eval": None}))
    code, res = run_eval(tmp_path, "--model", str(tmp_path), "--recipe", str(recipe))
    assert code == 0 and res is None and "eval is null" in capsys.readouterr().out


def test_a_fresh_cloud_disk_fetches_the_published_model_from_the_bucket(model_dir, tmp_path, monkeypatch):
    import shutil

    eval_rows_env(monkeypatch, tmp_path)
    shutil.copytree(model_dir, tmp_path / "bucket" / "sftl-x-0001" / "model")
    monkeypatch.setenv("SFTLAUNCH_BUCKET", str(tmp_path / "shell-default"))  # up's default: not the job's
    target = tmp_path / "fresh" / "out" / "final"
    code, res = run_eval(tmp_path, "--model", str(target), "--run-id", "sftl-x-0001", "--tasks", "tiny_mc",
                         "--limit", "2", "--batch-size", "2", "--recipe", bucket_recipe(tmp_path, str(tmp_path / "bucket")))
    assert code == 0 and (target / "config.json").is_file()
    assert res["run_id"] == "sftl-x-0001"
    # ... and the scores go back to the bucket, where status and eval look for them.
    assert json.loads((tmp_path / "bucket" / "sftl-x-0001" / "eval" / "results.json").read_text()) == res
    assert not (tmp_path / "shell-default").exists()


def test_adapter_dir_resolves_its_base_and_scores(model_dir, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    eval_rows_env(monkeypatch, tmp_path)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    code, res = run_eval(tmp_path, "--model", str(tmp_path / "adapter"), "--tasks", "tiny_mc", "--limit", "4",
                         "--batch-size", "4")
    assert code == 0
    assert res["model"]["adapter"] == str(tmp_path / "adapter")
    assert res["model"]["path"] == str(model_dir) and res["tasks"][0]["samples"] == 4
    # An adapter trained on another machine names a base path that is not here; sftlaunch.json's
    # portable base_model is used instead.
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "/elsewhere/base"
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    (tmp_path / "adapter" / "sftlaunch.json").write_text(json.dumps({"base_model": str(model_dir), "run_id": "sftl-a-0001"}))
    spec = evaluate.resolve_model(str(tmp_path / "adapter"))
    assert spec.pretrained == str(model_dir) and spec.model_id == "sftl-a-0001"


def test_several_gpus_relaunch_under_accelerate_once(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(evaluate, "_gpu_count", lambda: 4)
    monkeypatch.setattr(evaluate.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    for var in ("LOCAL_RANK", "WORLD_SIZE", "ACCELERATE_LAUNCH", "SFTLAUNCH_EVAL_NO_DP"):
        monkeypatch.delenv(var, raising=False)
    argv = ["--model", "m/x", "--preset", "leaderboard-v1", "--out", str(tmp_path)]
    assert evaluate.main(argv) == 0
    assert calls == [[sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "4",
                      "--num_machines", "1", "-m", "jobs.evaluate", *argv]]
    # Inside the launched processes (LOCAL_RANK set) it evaluates instead of relaunching.
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(evaluate, "evaluate", lambda args: calls.append("evaluated"))
    assert evaluate.main(argv) == 0 and calls[-1] == "evaluated"


def test_unknown_hub_model_is_one_line_and_exit_2(tmp_path, capsys):
    code, _ = run_eval(tmp_path, "--model", "nosuch/model", "--tasks", "tiny_mc")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        "error: model nosuch/model: not found on the Hub or not reachable offline; check the id, revision and HF_TOKEN"]


def test_parallel_mode_choice():
    big, small, gpu = 150 * 2**30, 10 * 2**30, 80 * 2**30
    choose = evaluate.choose_parallel
    assert choose("auto", 1, False, big, gpu) == "none"
    assert choose("auto", 8, False, small, gpu) == "data"
    assert choose("auto", 8, False, big, gpu) == "model"
    assert choose("auto", 8, True, big, gpu) == "data"  # 4-bit: ~45 GiB fits one 80 GB GPU
    assert choose("auto", 8, False, None, gpu) == "data"  # size unknown: the old default
    assert choose("model", 8, False, small, gpu) == "model" and choose("data", 8, False, big, gpu) == "data"
    assert choose("none", 8, False, big, gpu) == "none"


def test_model_too_big_for_one_gpu_is_split_across_them_in_one_process(tmp_path, monkeypatch):
    """The wiring, offline: sizes come from the weight files (a sparse 150 GiB file here), the
    choice decides between relaunching under accelerate and HFLM(parallelize=True)."""
    for var in ("LOCAL_RANK", "WORLD_SIZE", "ACCELERATE_LAUNCH", "SFTLAUNCH_EVAL_PARALLEL"):
        monkeypatch.delenv(var, raising=False)
    big = tmp_path / "big"
    big.mkdir()
    (big / "config.json").write_text("{}")
    with open(big / "model-00001-of-00001.safetensors", "wb") as fh:
        fh.truncate(150 * 2**30)
    assert evaluate.model_bytes(str(big)) == 150 * 2**30
    monkeypatch.setattr(evaluate, "_gpu_count", lambda: 4)
    monkeypatch.setattr(evaluate, "_gpu_memory_bytes", lambda: 80 * 2**30)
    launched, evaluated = [], []
    monkeypatch.setattr(evaluate.subprocess, "call", lambda cmd: launched.append(cmd) or 0)
    monkeypatch.setattr(evaluate, "evaluate", lambda args: evaluated.append(args.parallel_mode))
    assert evaluate.main(["--model", str(big), "--tasks", "tiny_mc", "--out", str(tmp_path / "o")]) == 0
    assert evaluated == ["model"] and launched == []
    assert evaluate.main(["--model", str(big), "--tasks", "tiny_mc", "--parallel", "data", "--out", str(tmp_path)]) == 0
    assert len(launched) == 1 and "accelerate.commands.launch" in launched[0]
    # An adapter is sized by its base; a hub id by the Hub's safetensors metadata.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(big)}))
    assert evaluate.model_bytes(str(adapter)) == 150 * 2**30
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata",
                        lambda ref, revision=None: type("M", (), {"parameter_count": {"BF16": 70_000_000_000}})())
    assert evaluate.model_bytes("org/llama-70b") == 140_000_000_000
    # ... and model parallel reaches the harness as HFLM(parallelize=True), 4-bit too.
    import lm_eval.models.huggingface as hf

    seen = []

    class FakeHFLM:
        def __init__(self, **kw):
            seen.append(kw)

    real_init = hf.HFLM.__init__
    monkeypatch.setattr(hf, "HFLM", FakeHFLM)
    spec = evaluate.ModelSpec(str(big), None, None, str(big), "big", None, {})
    evaluate.make_lm(spec, "auto", False, "cuda", parallelize=True)
    evaluate.make_lm(spec, "auto", True, "cuda", parallelize=True)
    evaluate.make_lm(spec, "auto", False, "cuda")
    assert [kw.get("parallelize") for kw in seen] == [True, True, None]
    # A trained Qwen3's recorded switch reaches HFLM's chat template (lm-eval's own parameter).
    trained = evaluate.ModelSpec(str(big), None, None, str(big), "big", None,
                                 {"chat_template_kwargs": {"enable_thinking": False}})
    evaluate.make_lm(trained, "auto", False, "cuda")
    assert seen[-1]["chat_template_args"] == {"enable_thinking": False} and "chat_template_args" not in seen[0]
    import inspect

    assert "chat_template_args" in inspect.signature(real_init).parameters


def test_load_4bit_on_cpu_scores_the_tiny_model(model_dir, tmp_path, monkeypatch):
    import bitsandbytes as bnb

    eval_rows_env(monkeypatch, tmp_path)
    lm = evaluate.make_lm(evaluate.resolve_model(str(model_dir)), 2, True, "cpu")
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in lm.model.modules()) > 0
    code, res = run_eval(tmp_path, "--model", str(model_dir), "--tasks", "tiny_mc", "--limit", "4",
                         "--batch-size", "4", "--load-4bit")
    assert code == 0 and res["load_4bit"] is True and res["tasks"][0]["samples"] == 4


@pytest.mark.slow
def test_with_base_scores_the_base_beside_the_fine_tune(model_dir, tmp_path, monkeypatch):
    """What a remote `sftlaunch eval RUN --with-base` runs: both rows, the base's next to OUT and in
    the bucket's eval-base/ where the launcher reads it."""
    import shutil

    eval_rows_env(monkeypatch, tmp_path)
    tuned = tmp_path / "final"
    shutil.copytree(model_dir, tuned)
    (tuned / "sftlaunch.json").write_text(json.dumps({"run_id": "sftl-w-0001", "base_model": str(model_dir)}))
    monkeypatch.setenv("SFTLAUNCH_EVAL_WITH_BASE", "1")
    code, res = run_eval(tmp_path, "--model", str(tuned), "--tasks", "tiny_mc", "--limit", "2", "--batch-size", "2",
                         "--recipe", bucket_recipe(tmp_path, str(tmp_path / "bucket")))
    assert code == 0 and res["run_id"] == "sftl-w-0001"
    base = json.loads((tmp_path / "out-base" / "results.json").read_text())
    assert base["model"]["id"] == str(model_dir) and base["run_id"] is None
    assert json.loads((tmp_path / "bucket" / "sftl-w-0001" / "eval-base" / "results.json").read_text()) == base
    monkeypatch.delenv("SFTLAUNCH_EVAL_WITH_BASE")
    (tuned / "sftlaunch.json").write_text(json.dumps({"run_id": "sftl-w-0001"}))
    code, _ = run_eval(tmp_path, "--model", str(tuned), "--tasks", "tiny_mc", "--with-base")
    assert code == 2


# -- fine-tuning on the tiny task must move the tiny score ---------------------------------------
# tiny-local as shipped (6 epochs = 120 steps, ~16 s on 2 cores): a 40-step cut passed on one
# machine (tiny_mc 0.55+) and not on CI's (0.475), so the margin below is checked at full length.
TRAIN_STEPS = 120
HAVE_TRAIN = TINY_RECIPE.exists() and (REPO / "jobs" / "train.py").exists() and (REPO / "jobs" / "__main__.py").exists()


@pytest.mark.slow
def test_finetuned_tiny_model_beats_the_untrained_one(tmp_path, monkeypatch, request):
    """With the project's trainer when it is there (the session's shared run of
    recipes/tiny-local.yaml, tests/tiny_run.py), else with a minimal training loop on a throwaway
    tiny model."""
    eval_rows_env(monkeypatch, tmp_path)
    if HAVE_TRAIN:
        from sftcore.recipe import load_recipe

        train = load_recipe(TINY_RECIPE).resolved_dict()["train"]
        assert train.get("max_steps") in (None, TRAIN_STEPS) and train["epochs"] == 6, train
        run = request.getfixturevalue("tiny_local_run")
        assert run.returncode == 0, run.output[-3000:]
        untrained, trained = "sftlaunch/tiny-llama", str(run.run_dir / "final")
        # Training really learns the synthetic task: held-out eval loss, untrained (the eval run
        # before the first step) vs after TRAIN_STEPS steps.
        rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
        evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
        assert evals[0][0] == 0 and evals[-1][0] == TRAIN_STEPS, evals
        assert evals[-1][1] < 0.5 * evals[0][1] and evals[0][1] - evals[-1][1] > 1.0, evals
    else:
        from tests.jobs.eval_fixtures import quick_finetune, throwaway_model

        base = throwaway_model(tmp_path / "base")
        untrained, trained = str(base), str(quick_finetune(base, tmp_path / "trained"))
    scores = {}
    for label, model in (("untrained", untrained), ("trained", trained)):
        code, res = run_eval(tmp_path / label, "--model", model, "--tasks", "tiny_mc,tiny_gen", "--limit", "40",
                             "--batch-size", "16")
        assert code == 0
        scores[label] = res["scores"]
    assert scores["trained"]["tiny_mc"] >= scores["untrained"]["tiny_mc"] + 0.3, scores
    # Exact generation: the untrained model never answers exactly; tiny-local as shipped does
    # most of the time (100% measured on 40 held-out rows).
    assert scores["trained"]["tiny_gen"] >= scores["untrained"]["tiny_gen"] + 0.5, scores
