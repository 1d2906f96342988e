"""The planner against published measurements and plain arithmetic (sources cited per test)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher import catalog
from launcher.cli import cli
from launcher.estimate.candidates import plan
from launcher.estimate.memory import eval_memory, lora_params, memory
from launcher.estimate.timing import timing
from sftcore.recipe import load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def _recipe(model: str, method: str = "qlora", seq: int = 2048, mb: int = 1, ev=None, **train) -> object:
    data = {
        "name": "t", "model": {"id": model}, "method": method,
        "data": {"sources": [{"path": "ehartford/dolphin", "format": "dolphin", "max_samples": 25000}], "seq_len": seq},
        "train": {"micro_batch_size": mb, **train},
        "resources": {"clouds": ["lambda", "runpod", "gcp"]},
        "eval": ev,  # training-only unless a test asks for the post-training eval
    }
    if method in ("lora", "qlora"):
        data["lora"] = {"r": 64, "alpha": 16, "dropout": 0.1, "target_modules": "all-linear"}
    if method == "qlora":
        data["quantization"] = {"double_quant": True}
    return recipe_from_dict(data)


def test_qlora_paper_65b_fits_one_48gb_gpu():
    # Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", abstract: "finetune a
    # 65B parameter model on a single 48GB GPU" (LLaMA-65B, NF4 + double quant, LoRA r=64 on all
    # linear layers, paged optimizers, gradient checkpointing, batch 1, ~512-token sequences).
    # The claim is about training, so no post-training eval here (see the eval tests below).
    r = _recipe("huggyllama/llama-65b", seq=512, mb=1)
    m = memory(r)
    # Quantized weights alone: ~65B x 0.5 bytes + constants ~= 33-35 GB (paper's Figure 6: ~33 GB).
    assert 32 < m.weights < 36
    assert m.total - m.pageable <= 48, m.as_dict()
    result = plan(r, gpu="A6000:1")
    assert result.chosen is not None and result.chosen.fits
    assert result.chosen.borderline  # it fits, but only just: plan says so


def test_reference_run_fits_80gb_not_24gb():
    # sft-demos' reference run: Llama-2-70B QLoRA, seq 2048, trained on one 80 GB GPU.
    r = load_recipe(REPO / "recipes/llama2-70b-qlora.yaml")
    need = memory(r).total
    assert need < 80 * 0.9, need  # fits with headroom
    assert need > 24
    chosen = plan(r, gpu="H100:1").chosen
    assert chosen.fits and not chosen.borderline
    # ...and so does its eval (4-bit, one replica per GPU), which is part of "fits".
    assert chosen.eval_mem_gb is not None and chosen.eval_mem_gb < 80 * 0.9
    assert plan(r, gpu="A10:1").chosen is None  # 24 GB (Lambda)


def test_7b_full_needs_16_bytes_per_param():
    # Mixed-precision Adam: bf16 weights (2) + bf16 grads (2) + fp32 master, m, v (12) = 16 bytes
    # per parameter before activations (Rajbhandari et al. 2020, ZeRO, section 3.1): ~108 GB for 6.74B.
    r = _recipe("meta-llama/Llama-2-7b-hf", method="full", seq=2048, mb=1, deepspeed="zero3", optimizer="adamw_torch")
    one = memory(r, gpus=1)
    assert 105 < one.weights + one.trainable < 112
    assert one.total > 80  # does not fit one 80 GB GPU without offload
    eight = memory(r, gpus=8)
    assert eight.total < 80 * 0.9  # ZeRO-3 over 8 shards it to ~14 GB + activations
    assert plan(r, gpu="A100-80GB:8").chosen.fits
    assert plan(r, gpu="A100-80GB:1").chosen is None


def test_reference_run_time_within_50_percent_of_17_hours():
    # sft-demos (daniel-furman/sft-demos README, Llama-2-70B dolphin run) reports about 17 hours
    # of training for 25k dolphin rows at seq 2048 on 1xH100. Compared: the training time plan()
    # estimates on the card it actually picks, with checkpoint saves (the trainer's wall clock
    # includes them) but WITHOUT the post-training eval, provisioning, image pull or download.
    r = load_recipe(REPO / "recipes/llama2-70b-qlora.yaml")
    chosen = plan(r, cloud="gcp", gpu="H100:1").chosen  # GCP's a3-highgpu-1g: one H100 SXM
    assert (chosen.cloud, chosen.accelerators) == ("gcp", "H100:1")
    t = chosen.timing
    hours = t.train_hours + t.terms["checkpoint_hours"]
    assert 17 * 0.5 <= hours <= 17 * 1.5, hours
    assert t.eval_hours > 0 and chosen.eta_hours > hours + t.eval_hours  # the ETA adds eval and overheads


def test_lora_param_count_is_plain_arithmetic():
    # Llama-2-7B, r=8 on q and v: 32 layers x 8 x (4096+4096) x 2 = 4,194,304 (PEFT prints this).
    from launcher.catalog import model_shape

    assert lora_params(model_shape("meta-llama/Llama-2-7b-hf"), ["q_proj", "v_proj"], 8) == 4_194_304


def test_nothing_fits_says_why_and_what_would():
    r = _recipe("meta-llama/Llama-2-70b-hf", method="full", seq=2048, mb=1)
    result = plan(r)
    assert result.chosen is None
    assert re.search(r"needs ≈1\.\d TB of GPU memory", result.reason), result.reason
    assert "use method qlora" in result.reason and "zero3-offload" in result.reason


def test_unknown_model_is_a_clear_reason():
    r = _recipe("someone/unknown-model")  # the Hub is not asked: conftest sets HF_HUB_OFFLINE
    result = plan(r)
    assert "not in the planner's model table" in result.reason and "HF_HUB_OFFLINE" in result.reason
    assert result.reason_field == "model.id"


def test_spot_and_capabilities_shape_candidates():
    r = _recipe("meta-llama/Llama-2-7b-hf")  # spot=True as a what-if: the CLI flag also wants a bucket
    spot = plan(r, spot=True)
    assert spot.candidates and all(c.spot and c.cloud in ("runpod", "gcp") for c in spot.candidates)
    assert all(c.total_usd <= d.total_usd for c, d in zip(spot.candidates, spot.candidates[1:], strict=False) if c.fits and d.fits)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_plans_offline_and_comment_matches(path):
    r = load_recipe(path)
    result = plan(r)
    assert result.chosen is not None, result.reason
    comment = next((line for line in path.read_text().splitlines()[:3] if "→" in line), None)
    if comment is None:
        assert r.resources.clouds == ["local"], f"{path.name}: first lines must state the planned GPU, time and cost"
        return
    m = re.search(r"→ (?:(\d+) nodes × )?(\d+)×(\S+) on (\w+)(?: \(spot\))?, ~([\d.]+) (h|min), ~\$(\d+)", comment)
    assert m, comment
    nodes, count, gpu, cloud, t, unit, usd = m.groups()
    c = result.chosen
    assert (int(nodes or 1), int(count), gpu, cloud) == (c.nodes, c.gpus_per_node, c.gpu, c.cloud), comment
    hours = float(t) / (60 if unit == "min" else 1)
    assert abs(hours - c.eta_hours) <= max(0.1 * c.eta_hours, 0.05), (comment, c.eta_hours)
    assert abs(float(usd) - c.total_usd) <= max(0.1 * c.total_usd, 1.0), (comment, c.total_usd)


def test_plan_cli_table_json_explain_and_exit_codes(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli, ["plan", str(REPO / "recipes/llama2-70b-qlora.yaml"), "--explain"])
    assert ok.exit_code == 0, ok.output
    assert "→" in ok.output and "activations" in ok.output and "eval" in ok.output
    js = runner.invoke(cli, ["plan", str(REPO / "recipes/llama2-70b-qlora.yaml"), "--json"])
    import json

    data = json.loads(js.output)
    assert data["chosen"]["fits"] and data["offers_date"]
    over = (REPO / "recipes/llama2-70b-qlora.yaml").read_text().replace("max_usd: 80", "max_usd: 5")
    (tmp_path / "over.yaml").write_text(over)
    res = runner.invoke(cli, ["plan", str(tmp_path / "over.yaml")])
    assert res.exit_code == 2 and "resources.max_usd" in res.output
    full = over.replace("method: qlora", "method: full").split("lora:")[0] + "data:" + over.split("data:")[1]
    (tmp_path / "full.yaml").write_text(full)
    res = runner.invoke(cli, ["plan", str(tmp_path / "full.yaml")])
    assert res.exit_code == 2 and "nothing fits" in res.output and "Traceback" not in res.output


def test_readme_gallery_matches_plan():
    # README.md's recipe gallery states the same plan as the recipe comments.
    readme = (REPO / "README.md").read_text()
    for path in RECIPES:
        row = next((line for line in readme.splitlines() if line.startswith(f"| [{path.stem}](")), None)
        assert row, f"README gallery lacks {path.stem}"
        cells = [c.strip() for c in row.strip("|").split("|")]
        c = plan(load_recipe(path)).chosen
        gpu = (f"{c.nodes}×" if c.nodes > 1 else "") + f"{c.gpus_per_node}×{c.gpu} on {c.cloud}"
        assert cells[4] == gpu, (path.stem, cells[4], gpu)
        value, unit = cells[5].split()
        hours = float(value) / (60 if unit == "min" else 1)
        assert abs(hours - c.eta_hours) <= max(0.1 * c.eta_hours, 0.05), (path.stem, cells[5], c.eta_hours)
        assert abs(float(cells[6].lstrip("$")) - c.total_usd) <= max(0.1 * c.total_usd, 1.0), (path.stem, cells[6])


# ---------------------------------------------------------------------------------------------
# Post-training eval must fit the machine that trains (jobs/evaluate.py: one replica per GPU).


def _with_eval(path: str, **ev):
    data = load_recipe(REPO / path).resolved_dict()
    data["eval"] = None if ev.get("skip") else {**(data["eval"] or {}), **ev}
    return recipe_from_dict(data, base_dir=REPO / "recipes")


def test_bf16_eval_of_70b_fits_no_gpu_it_trains_on_and_the_reason_names_the_fix():
    # 68.98B parameters x 2 bytes = 138 GB per replica before activations: more than 80 GB, and
    # (with activations and context) more than an H200's 141 GB too.
    r = _with_eval("recipes/llama2-70b-qlora.yaml", load_4bit=False)
    m = eval_memory(r)
    assert 137 < m.weights < 140 and m.total > 141
    result = plan(r, cloud="gcp")  # up to H200 (141 GB); a B200 (Lambda, 180 GB) would hold it
    assert result.chosen is None
    assert "post-training eval needs" in result.reason
    assert "set eval.load_4bit: true" in result.reason and "eval: null" in result.reason
    h100 = next(c for c in result.candidates if c.gpu == "H100" and c.gpus_per_node == 1)
    assert h100.blocked_by_eval and h100.why_not.startswith("eval needs")
    assert h100.mem_needed_gb < 80  # training alone would have fitted
    # Either fix from the message makes it plan on one 80 GB GPU again.
    for fixed in (_with_eval("recipes/llama2-70b-qlora.yaml", load_4bit=True),
                  _with_eval("recipes/llama2-70b-qlora.yaml", skip=True)):
        chosen = plan(fixed, cloud="gcp").chosen
        assert chosen is not None and chosen.mem_available_gb == 80 and chosen.gpus_per_node == 1


def test_mixtral_4bit_keeps_its_fused_experts_bf16():
    # transformers 5 stores Mixtral's experts as fused 3-D parameters, not nn.Linear, and
    # bitsandbytes quantizes nn.Linear only (tests/jobs/test_tiny_families.py loads a tiny MoE in
    # 4 bits and sees it): the 45.1B expert weights stay bf16, ~90 GB, for training and 4-bit eval.
    bf16 = _with_eval("recipes/mixtral-8x7b-qlora.yaml", load_4bit=False)
    l40s = next(c for c in plan(bf16, gpu="L40S:1").candidates)
    assert not l40s.fits and l40s.eval_mem_gb > 90
    four = load_recipe(REPO / "recipes/mixtral-8x7b-qlora.yaml")
    assert four.eval.load_4bit
    # Training: the experts stay bf16 (jobs.model.prepare_for_kbit_training does not upcast them as
    # peft would): ~90 GB, not ~180 GB.
    assert 88 < memory(four).weights < 100 and eval_memory(four).weights > 88
    chosen = plan(four).chosen
    assert chosen.mem_available_gb > 96 and chosen.eval_mem_gb < chosen.mem_available_gb * 0.9


def test_eval_memory_is_one_full_replica_per_gpu():
    # Data parallel: each GPU holds the whole model, so more GPUs do not shrink eval memory
    # (unlike ZeRO-3 training memory).
    r = load_recipe(REPO / "recipes/llama2-7b-full.yaml")
    one, eight = (plan(r, gpu=g).chosen for g in ("A100-80GB:1", "A100-80GB:8"))
    assert eight is not None
    cand_one = one or next(c for c in plan(r, gpu="A100-80GB:1").candidates)
    assert cand_one.eval_mem_gb == eight.eval_mem_gb
    assert 13 < eight.eval_mem_gb < 17  # 6.74B x 2 bytes + activations + context


def test_borderline_eval_is_said_with_its_fix():
    # LLaMA-65B, 4-bit eval with an all-linear r=64 adapter on a 48 GB card: ~44 GB, within the
    # 10% headroom, so plan calls it borderline and says what would make it safe.
    r = _recipe("huggyllama/llama-65b", seq=512, mb=1, ev={"preset": "leaderboard-v1", "load_4bit": True})
    c = plan(r, gpu="A6000:1").chosen
    assert c is not None and c.borderline and "eval" in c.borderline_why and "eval: null" in c.borderline_why
    r = _recipe("huggyllama/llama-65b", seq=512, mb=1, ev={"preset": "leaderboard-v1"})
    result = plan(r, gpu="A6000:1")
    assert result.chosen is None and "set eval.load_4bit: true" in result.reason


def test_eval_time_follows_4bit_mfu_and_runs_on_the_head_node():
    w = catalog.workloads()
    bf16 = _with_eval("recipes/llama2-70b-qlora.yaml", load_4bit=False)
    four = _with_eval("recipes/llama2-70b-qlora.yaml", load_4bit=True)
    t16, t4 = timing(bf16, "runpod", "H100-SXM", 1), timing(four, "runpod", "H100-SXM", 1)
    assert t4.eval_hours / t16.eval_hours == pytest.approx(w["mfu"]["eval"] / w["mfu"]["eval_4bit"])
    # docker/entrypoint.sh runs eval on node 0 only: 2 nodes x 8 GPUs evaluate like 1 x 8.
    r = load_recipe(REPO / "recipes/mistral-7b-full-2node.yaml")
    assert timing(r, "lambda", "H100", 16, gpus_per_node=8).eval_hours == pytest.approx(
        timing(r, "lambda", "H100", 8).eval_hours)


def test_recipes_whose_bf16_model_exceeds_the_planned_gpu_load_4bit_for_eval():
    for path in RECIPES:
        r = load_recipe(path)
        if r.eval is None:
            continue
        c = plan(r).chosen
        if eval_memory(r, load_4bit=False).total > c.mem_available_gb * 0.9:
            assert r.eval.load_4bit, f"{path.name}: bf16 eval does not fit {c.gpu}; set eval.load_4bit: true"


def test_explain_prints_the_eval_terms():
    res = CliRunner().invoke(cli, ["plan", str(REPO / "recipes/llama2-70b-qlora.yaml"), "--explain"])
    assert res.exit_code == 0, res.output
    assert "post-training eval memory per GPU" in res.output and "4-bit nf4 weights" in res.output
    assert "GB/GPU train/eval/have" in res.output


# ---------------------------------------------------------------------------------------------
# One fit rule for candidates, local runs and `plan --explain`


def _mem(total: float, pageable: float = 0.0):
    from launcher.estimate.memory import Memory

    return Memory(weights=total - pageable, trainable=pageable, pageable=pageable, activations=0.0, fixed=0.0)


def test_fit_verdict_draws_the_lines_at_the_headroom_and_the_gpu():
    from launcher.estimate.candidates import fit_verdict

    h = catalog.workloads()["headroom"]
    avail = 80.0
    assert fit_verdict(_mem(avail * (1 - h) - 1), avail)[:2] == (True, False)
    border = fit_verdict(_mem(avail * (1 - h) + 1), avail)
    assert border[:2] == (True, True) and "headroom" in border.why
    paged = fit_verdict(_mem(avail + 5, pageable=10), avail)  # above the GPU, but the optimizer may spill
    assert paged[:2] == (True, True) and "paged optimizer" in paged.why
    over = fit_verdict(_mem(avail + 5, pageable=1), avail)
    assert over[:2] == (False, False) and over.why == f"needs {avail + 5:.1f} GB per GPU, has {avail:.0f} GB"
    # The post-training eval on the same GPU counts too.
    small = _mem(10)
    blocked = fit_verdict(small, avail, ev_mem=_mem(avail + 1))
    assert blocked[:2] == (False, False) and blocked.eval_tight and blocked.why.startswith("eval needs")
    tight = fit_verdict(small, avail, ev_mem=_mem(avail * (1 - h) + 1))
    assert tight[:2] == (True, True) and tight.eval_tight and "eval's" in tight.why
    assert not fit_verdict(small, avail, ev_mem=_mem(20)).eval_tight


def test_local_and_cloud_candidates_share_the_eval_borderline(monkeypatch):
    # Before one rule, a local run whose eval sat within the headroom was not called borderline.
    from launcher.estimate import candidates as estimate  # plan uses its eval_memory

    h = catalog.workloads()["headroom"]
    tight = _mem(catalog.gpu_memory_gb("T4") * (1 - h) + 0.5)
    monkeypatch.setattr(estimate, "eval_memory", lambda *a, **k: tight)
    for clouds, gpu in ((["local"], "T4:1"), (["lambda"], "RTX6000:1")):  # no bf16 either; 24 GB on Lambda
        tight = _mem(catalog.gpu_memory_gb(gpu.split(":")[0]) * (1 - h) + 0.5)
        monkeypatch.setattr(estimate, "eval_memory", lambda *a, _t=tight, **k: _t)
        data = {"name": "t", "model": {"id": "meta-llama/Llama-2-7b-hf"}, "method": "qlora",
                "lora": {"r": 8, "target_modules": ["q_proj"]}, "quantization": {"compute_dtype": "float16"},
                "data": {"sources": [{"path": "ehartford/dolphin", "format": "dolphin", "max_samples": 100}], "seq_len": 256},
                "train": {"precision": "fp16", "micro_batch_size": 1},
                "resources": {"clouds": clouds, "gpu": gpu}, "eval": {"preset": "leaderboard-v1", "load_4bit": True}}
        c = plan(recipe_from_dict(data)).chosen
        assert c is not None and c.borderline and "eval's" in c.borderline_why, (clouds, c)
        assert "eval: null" in c.borderline_why  # and the fix is said


def test_plan_looks_the_model_shape_up_once(monkeypatch):
    # A shape from a local or cached config.json is a file read and a parse; a plan builds
    # hundreds of candidates, each needing memory, timing and eval time.
    calls = []
    real = catalog.model_shape
    monkeypatch.setattr(catalog, "model_shape", lambda *a: calls.append(a) or real(*a))
    result = plan(load_recipe(REPO / "recipes/llama2-70b-qlora.yaml"))
    assert len(result.candidates) > 10 and len(calls) == 1, len(calls)


def test_explain_says_each_verdict_in_the_rules_words(tmp_path):
    roomy = tmp_path / "r.yaml"  # 1x H100 costs more than this recipe's max_usd; the verdicts are the point
    roomy.write_text((REPO / "recipes/llama2-70b-qlora.yaml").read_text().replace("max_usd: 80", "max_usd: 400"))
    res = CliRunner().invoke(cli, ["plan", str(roomy), "--explain", "--gpu", "H100:1"])
    assert res.exit_code == 0, res.output
    h = catalog.workloads()["headroom"]
    assert f"(fits 80 GB with more than the {h:.0%} headroom)" in res.output


def test_every_gpu_runpod_sells_is_weighed_for_the_70b_and_7b_runs():
    # RunPod sells 1x RTX PRO 6000 (96 GB), H100-SXM, H100-NVL, A100-80GB-SXM, B200 and
    # H200-SXM, all with room for the 70B QLoRA run's ~62 GB/GPU (tests/fixtures/catalogs/runpod,
    # verbatim skypilot-catalog rows); none may be dropped for want of a TFLOP/s figure or memory.
    big = plan(load_recipe(REPO / "recipes/llama2-70b-qlora.yaml"), cloud="runpod")
    fits = {c.gpu: c for c in big.candidates if c.fits and c.gpus_per_node == 1}
    for gpu in ("RTXPRO6000", "H100-SXM", "H100-NVL", "A100-80GB-SXM", "A100-80GB", "B200", "H200-SXM", "H100"):
        assert gpu in fits, (gpu, big.notes)
    assert fits["RTXPRO6000"].mem_available_gb == 96 and fits["H200-SXM"].mem_available_gb == 141
    # 24-48 GB cards are weighed and said not to fit, not silently left out.
    too_small = {c.gpu for c in big.candidates if not c.fits and c.gpus_per_node == 1}
    assert {"RTX5090", "RTXA5000", "RTX4090", "RTXA6000", "A40", "L40S", "L4"} <= too_small
    small = plan(load_recipe(REPO / "recipes/llama2-7b-qlora.yaml"), cloud="runpod")
    one = {c.gpu for c in small.candidates if c.fits and c.gpus_per_node == 1}
    assert {"RTX5090", "RTXA5000", "RTX4090", "RTXA6000", "A40", "L4", "L40S", "RTXPRO6000"} <= one
    assert small.chosen.accelerators == "RTXA5000:1"  # $0.27/h, the cheapest total in the excerpt


def test_launch_order_applies_the_plan_choice_rule_to_the_usable_clouds():
    """One chooser: the plan's choice when its cloud is usable; else the same rule (cheapest fit,
    a confident one over a borderline one within 10%) over the usable clouds; fallbacks on usable
    clouds only, sharing spot and nodes, within max_usd."""
    from launcher.failover import launch_order
    from tests.launcher.fake_backend import FakeCandidate, FakePlan

    cheap = FakeCandidate("lambda", total_usd=10.0)
    edgy = FakeCandidate("runpod", total_usd=11.0, borderline=True)
    sure = FakeCandidate("runpod", gpu="A100-80GB", total_usd=11.5)
    gcp = FakeCandidate("gcp", total_usd=30.0)
    misfit = FakeCandidate("runpod", gpu="T4", total_usd=1.0, fits=False)
    plan = FakePlan([misfit, cheap, edgy, sure, gcp], cheap)
    assert launch_order(plan, 3) == [cheap, edgy, sure]
    assert launch_order(plan, 3, usable={"lambda", "runpod", "gcp"}) == [cheap, edgy, sure]
    assert launch_order(plan, 3, usable={"runpod", "gcp"}) == [sure, edgy, gcp]
    assert launch_order(plan, 3, max_usd=20.0, usable={"runpod", "gcp"}) == [sure, edgy]
    assert launch_order(plan, 1, usable={"gcp"}) == [gcp] and launch_order(plan, 3, usable={"kubernetes"}) == []
    assert launch_order(FakePlan([misfit], None), 3) == []
