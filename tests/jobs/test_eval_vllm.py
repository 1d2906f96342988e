"""The vLLM eval backend, offline on CPU: the arguments given to lm-eval's VLLM checked against
lm-eval's own installed source (it imports vLLM, which this venv cannot hold next to the training
torch), the backend decision on this host, the re-run under the vLLM venv's interpreter, and the
HF path unchanged where vLLM cannot run. vLLM itself runs only on a GPU host (not here)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from jobs import eval_vllm, evaluate
from jobs.eval_model import ModelSpec
from tests.jobs.eval_fixtures import REPO, eval_rows_env, tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("models"))


def _adapter(tmp_path: Path, r: int, rank_pattern: dict | None = None) -> Path:
    d = tmp_path / f"adapter-r{r}"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/base", "r": r,
                                                       "rank_pattern": rank_pattern or {}}))
    return d


# -- lm-eval's VLLM, as its installed source defines it --------------------------------------------
def test_lm_eval_vllm_parameters_are_read_from_the_installed_source():
    import importlib.util

    params = eval_vllm.lm_eval_vllm_params()
    src = Path(importlib.util.find_spec("lm_eval").origin).parent / "models" / "vllm_causallms.py"
    assert "import vllm" in src.read_text() or "from vllm import" in src.read_text()  # why ast, not import
    assert {"pretrained", "lora_local_path", "max_lora_rank", "tensor_parallel_size", "data_parallel_size"} <= params
    assert "self" not in params and "lora_path" not in params and "device" not in params


def test_every_argument_we_give_is_a_parameter_of_lm_eval_vllm(tmp_path):
    params = eval_vllm.lm_eval_vllm_params()
    assert eval_vllm.VLLM_ARG_NAMES <= params, eval_vllm.VLLM_ARG_NAMES - params
    adapter = _adapter(tmp_path, 24)
    full = ModelSpec("/m", None, None, "/m", "m", None, {})
    lora = ModelSpec("/base", None, str(adapter), str(adapter), "a", "/base", {})
    hub = ModelSpec("org/m", "main", None, "org/m", "org/m", None, {})
    qwen3 = ModelSpec("/q", None, None, "/q", "q", None, {"chat_template_kwargs": {"enable_thinking": False}})
    seen = set()
    for spec, batch, parallel, gpus, want in (
        (full, "auto", "none", 1, {"pretrained": "/m", "tokenizer": "/m", "dtype": "auto", "batch_size": "auto"}),
        (lora, 8, "none", 1, {"lora_local_path": str(adapter), "max_lora_rank": 32, "batch_size": 8}),
        (hub, "auto:4", "data", 4, {"revision": "main", "data_parallel_size": 4}),
        (full, "auto", "model", 8, {"tensor_parallel_size": 8, "max_model_len": eval_vllm.VLLM_MAX_MODEL_LEN}),
        # a trained Qwen3 is scored with the prompts it was trained on (lm-eval pops enable_thinking)
        (qwen3, "auto", "none", 1, {"chat_template_args": {"enable_thinking": False}}),
    ):
        args = eval_vllm.vllm_model_args(spec, batch, parallel, gpus, context=131072 if gpus == 8 else None)
        assert want.items() <= args.items(), args
        seen |= set(args)
    assert seen == eval_vllm.VLLM_ARG_NAMES  # the constant names exactly what can be given


def test_max_model_len_is_the_models_context_capped(model_dir):
    spec = ModelSpec(str(model_dir), None, None, str(model_dir), "tiny", None, {})
    ctx = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
    assert eval_vllm.model_context(spec) == ctx
    assert eval_vllm.vllm_model_args(spec, "auto", "none", 1, ctx)["max_model_len"] == min(ctx, 8192)
    assert eval_vllm.vllm_model_args(spec, "auto", "none", 1, 131072)["max_model_len"] == 8192
    assert eval_vllm.model_context(ModelSpec("/nowhere", None, None, "/nowhere", "x", None, {})) is None


def test_adapter_rank_reads_the_largest_rank_and_too_big_is_exit_2(tmp_path, model_dir):
    assert eval_vllm.adapter_rank(str(_adapter(tmp_path, 8, {"layers.0.q_proj": 128}))) == 128
    assert eval_vllm.adapter_rank(str(model_dir)) is None  # full weights
    big = _adapter(tmp_path, 1024)
    with pytest.raises(evaluate.EvalInputError, match="LoRA rank 1024"):
        eval_vllm.pick_backend("vllm", 1, False, str(big))


# -- the backend decision and the re-run under the vLLM venv ---------------------------------------
def _fake_python(tmp_path: Path) -> tuple[Path, Path]:
    """An executable standing in for /opt/vllm/bin/python: records its argv and PYTHONPATH."""
    log = tmp_path / "vllm-python.json"
    exe = tmp_path / "python"
    exe.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                   f"json.dump({{'argv': sys.argv[1:], 'pythonpath': os.environ.get('PYTHONPATH')}}, "
                   f"open({str(log)!r}, 'w'))\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe, log


@pytest.fixture
def gpu_host(monkeypatch):
    """This CPU host as the job would see a GPU host: n Ampere+ GPUs, no launcher env."""
    for var in ("LOCAL_RANK", "WORLD_SIZE", "ACCELERATE_LAUNCH", "SFTLAUNCH_EVAL_PARALLEL",
                "SFTLAUNCH_EVAL_BACKEND", "SFTLAUNCH_VLLM_PYTHON"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(eval_vllm, "_capable", lambda: True)

    def gpus(n: int):
        monkeypatch.setattr(evaluate, "_gpu_count", lambda: n)
    return gpus


def test_auto_on_a_gpu_reruns_itself_under_the_vllm_venv(gpu_host, tmp_path, monkeypatch, capsys, model_dir):
    gpu_host(1)
    exe, log = _fake_python(tmp_path)
    monkeypatch.setenv("SFTLAUNCH_VLLM_PYTHON", str(exe))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    argv = ["--model", str(model_dir), "--tasks", "tiny_mc", "--out", str(tmp_path / "o")]
    assert evaluate.main(argv) == 0
    ran = json.loads(log.read_text())
    assert ran["argv"] == ["-m", "jobs.evaluate", *argv, "--backend", "vllm"]
    assert ran["pythonpath"] == f"{REPO}{os.pathsep}/elsewhere"  # the project, which that venv lacks
    out = capsys.readouterr().out
    assert "eval backend vllm (auto: vLLM on this GPU)" in out and f"eval with vLLM: {exe}" in out


def test_recipe_backend_and_4bit_steer_the_choice(gpu_host, tmp_path, monkeypatch):
    gpu_host(1)
    exe, log = _fake_python(tmp_path)
    monkeypatch.setenv("SFTLAUNCH_VLLM_PYTHON", str(exe))
    ran = []
    monkeypatch.setattr(evaluate, "evaluate", lambda args: ran.append(args.backend))
    import yaml

    recipe = yaml.safe_load((REPO / "recipes" / "tiny-local.yaml").read_text())
    for src in recipe["data"]["sources"]:
        src["path"] = str(REPO / "recipes" / src["path"])
    for ev, want in (({"preset": "leaderboard-v1", "backend": "hf"}, "hf"),
                     ({"preset": "leaderboard-v1", "load_4bit": True}, "hf")):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump({**recipe, "eval": ev}))
        assert evaluate.main(["--model", "m/x", "--recipe", str(path), "--out", str(tmp_path / "o")]) == 0
        assert ran[-1] == want and not log.exists()
    assert evaluate.main(["--model", "m/x", "--tasks", "t", "--backend", "hf", "--out", str(tmp_path / "o")]) == 0
    assert ran[-1] == "hf" and not log.exists()
    on_gpu = {**recipe["resources"], "gpu": "H100:1"}  # a local run on a GPU (tiny-local's auto is the CPU)
    path.write_text(yaml.safe_dump({**recipe, "resources": on_gpu, "eval": {"preset": "leaderboard-v1", "backend": "vllm"}}))
    assert evaluate.main(["--model", "m/x", "--recipe", str(path), "--out", str(tmp_path / "o")]) == 0
    assert json.loads(log.read_text())["argv"][-2:] == ["--backend", "vllm"] and len(ran) == 3


def test_auto_without_a_vllm_venv_keeps_hf_and_vllm_by_name_is_exit_2(gpu_host, tmp_path, monkeypatch, capsys):
    gpu_host(1)
    monkeypatch.setenv("SFTLAUNCH_VLLM_PYTHON", str(tmp_path / "no-such-python"))
    monkeypatch.setattr(eval_vllm.contract, "VLLM_PYTHON", str(tmp_path / "no-such-python"))
    ran = []
    monkeypatch.setattr(evaluate, "evaluate", lambda args: ran.append(args.backend))
    argv = ["--model", "m/x", "--tasks", "t", "--out", str(tmp_path / "o")]
    assert evaluate.main(argv) == 0 and ran == ["hf"]
    assert "eval backend hf (auto: this image has no vLLM venv)" in capsys.readouterr().out
    assert evaluate.main([*argv, "--backend", "vllm"]) == 2 and ran == ["hf"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --backend vllm: no vLLM here") and "--backend hf" in err[0]


def test_on_cpu_auto_is_hf_and_vllm_by_name_is_exit_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(evaluate, "_gpu_count", lambda: 0)
    ran = []
    monkeypatch.setattr(evaluate, "evaluate", lambda args: ran.append(args.backend))
    argv = ["--model", "m/x", "--tasks", "t", "--out", str(tmp_path / "o")]
    assert evaluate.main(argv) == 0 and ran == ["hf"]
    assert capsys.readouterr().out == ""  # the CPU path prints nothing new
    assert evaluate.main([*argv, "--backend", "vllm"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: eval.backend vllm: vLLM needs an NVIDIA GPU (CPU runs use hf); set eval.backend to auto or hf")


def test_inside_the_vllm_venv_several_gpus_stay_in_one_process(gpu_host, tmp_path, monkeypatch):
    gpu_host(4)
    monkeypatch.setattr(evaluate, "have_vllm", lambda: True)
    monkeypatch.setattr(evaluate, "model_bytes", lambda *a: 10 * 2**30)
    monkeypatch.setattr(evaluate, "_gpu_memory_bytes", lambda: 80 * 2**30)
    launched, ran = [], []
    monkeypatch.setattr(evaluate.subprocess, "call", lambda cmd, **kw: launched.append(cmd) or 0)
    monkeypatch.setattr(evaluate, "evaluate", lambda args: ran.append((args.backend, args.parallel_mode)))
    assert evaluate.main(["--model", "m/x", "--tasks", "t", "--backend", "vllm", "--out", str(tmp_path)]) == 0
    assert ran == [("vllm", "data")] and launched == []  # lm-eval's data_parallel_size, no accelerate


def test_score_with_vllm_builds_lm_evals_vllm_model_and_records_the_backend(model_dir, tmp_path, monkeypatch):
    """_score's wiring: backend vllm asks make_vllm_lm for the model (stood in for here by the
    harness's HFLM on the tiny model, since vLLM cannot run on this CPU) and results.json says
    which backend scored."""
    eval_rows_env(monkeypatch, tmp_path)
    asked = []

    def fake_make_vllm_lm(spec, batch, parallel, gpus):
        asked.append(eval_vllm.vllm_model_args(spec, batch, parallel, gpus))
        return evaluate.make_lm(spec, batch, False, "cpu")

    monkeypatch.setattr(eval_vllm, "make_vllm_lm", fake_make_vllm_lm)
    args = evaluate.build_parser().parse_args(["--model", str(model_dir), "--tasks", "tiny_mc", "--limit", "4",
                                               "--batch-size", "4", "--backend", "vllm", "--out", str(tmp_path / "o")])
    res = evaluate.evaluate(args)
    assert asked == [{"pretrained": str(model_dir), "tokenizer": str(model_dir), "dtype": "auto", "batch_size": 4}]
    assert res["backend"] == "vllm" and res["tasks"][0]["samples"] == 4
