"""`sftlaunch serve`: the SkyServe service it renders (parsed and validated by the installed
SkyPilot's own SkyServiceSpec, Task and serve_utils.validate_service_task), the GPU it picks for
weights + KV cache, the $ figures of the plan, and status/logs/down through the ownership rule
(a fake SkyServe, tests/launcher/fake_serve.py)."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from launcher import catalog, services
from launcher.cli import cli
from launcher.serve_cost import ACHIEVED, BANDWIDTH_GBPS, CONCURRENCY, CONTEXT_TOKENS, serve_cost
from launcher.serve_render import (
    GPU_MEMORY_UTILIZATION,
    MODEL_DIR,
    VLLM_IMAGE,
    lora_rank_flag,
    render_service,
    serve_choices,
    serve_memory,
    source_from_model,
    source_from_run,
)

RUN = "sftl-l2-7b-qlora-ab12"
QLORA = {"name": "l2-7b-qlora", "model": {"id": "meta-llama/Llama-2-7b-hf"}, "method": "qlora",
         "lora": {"r": 64, "alpha": 16}, "data": {"seq_len": 2048}, "resources": {"clouds": ["runpod", "gcp"]},
         "output": {"bucket": "gs://my-bucket/sftlaunch", "merge_adapter": False}}


def _invoke(*args):
    return CliRunner(mix_stderr=False).invoke(cli, list(args))


def _record(recipe=QLORA, run_id=RUN, **fields):
    from launcher.runs import Registry

    return Registry().create(run_id, recipe, state="succeeded", bucket=(recipe.get("output") or {}).get("bucket"),
                             **fields)


def _sky_parse(task: dict):
    """The installed SkyPilot's own parsers and the check `sky serve up` runs on a service task."""
    import sky
    from sky.serve import SkyServiceSpec
    from sky.serve.serve_utils import validate_service_task

    spec = SkyServiceSpec.from_yaml_config(task["service"])
    parsed = sky.Task.from_yaml_config(yaml.safe_load(yaml.safe_dump(task)))
    validate_service_task(parsed, pool=False)
    return spec, parsed


def _plan_for(source, clouds=("runpod", "gcp")):
    shape = catalog.model_shape(source.shape_of)
    mem = serve_memory(shape, max(4096, CONCURRENCY * CONTEXT_TOKENS), source.lora_rank)
    choices, _ = serve_choices(mem, list(clouds))
    return mem, choices


def test_adapter_run_renders_a_service_skypilot_accepts():
    source = source_from_run(_record())
    assert source.adapter == MODEL_DIR and source.base == "meta-llama/Llama-2-7b-hf"
    assert source.model_uri == "gs://my-bucket/sftlaunch/" + RUN + "/model"
    _mem, choices = _plan_for(source)
    task = render_service(source, choices, RUN, 4096)
    spec, parsed = _sky_parse(task)
    assert spec.readiness_path == "/v1/models" and spec.min_replicas == 0 and spec.max_replicas == 2
    assert spec.target_qps_per_replica == 4.0 and spec.downscale_delay_seconds == 900
    assert parsed.service is not None and parsed.file_mounts == {MODEL_DIR: source.model_uri}
    res = list(parsed.resources)
    assert {r.image_id[None] if r.image_id else None for r in res} == {f"docker:{VLLM_IMAGE}"}
    assert all(r.ports == ["8000"] and r.labels == {"sftlaunch-run": RUN} for r in res)
    run = task["run"]
    assert "vllm serve meta-llama/Llama-2-7b-hf" in run and "--enable-lora" in run
    assert f"--lora-modules {RUN}={MODEL_DIR}" in run and "--max-lora-rank 64" in run
    # the published tokenizer (the trained chat template), not the base's
    assert f"--tokenizer {MODEL_DIR}" in run and f"--chat-template {MODEL_DIR}/chat_template.jinja" in run
    assert "QLoRA adapter served on the bf16 base" in source.notes[0]


def test_merged_hub_model_renders_a_service_skypilot_accepts():
    source = source_from_model("mistralai/Mistral-7B-v0.1")
    _mem, choices = _plan_for(source)
    task = render_service(source, choices, "sftl-mistral-7b-v0-1-aaaa", 8192, max_replicas=3, idle_minutes=5)
    spec, _ = _sky_parse(task)
    assert spec.max_replicas == 3 and spec.downscale_delay_seconds == 300
    assert "--enable-lora" not in task["run"] and "--max-model-len 8192" in task["run"]
    assert "file_mounts" not in task


def test_the_cheapest_offer_that_holds_weights_and_kv_cache_is_chosen():
    source = source_from_model("meta-llama/Llama-2-13b-hf")
    mem, choices = _plan_for(source)
    # 13B in bf16 is 26 GB; with its KV cache it does not fit a 24 GB card
    assert mem.weights_gb == pytest.approx(26.0, rel=0.02)
    first = choices[0]
    assert first.mem_needed_gb <= first.mem_available_gb * GPU_MEMORY_UTILIZATION
    assert [c.usd_per_hour for c in choices] == sorted(c.usd_per_hour for c in choices)
    for cloud in ("runpod", "gcp"):
        for offer in catalog.offers(cloud):  # every cheaper offer is refused for memory
            if offer.on_demand is not None and offer.on_demand * offer.count < first.usd_per_hour \
                    and offer.count in (1, 2, 4, 8) and not catalog.unusable_reason(offer):
                avail = catalog.gpu_memory_gb(offer.gpu, offer)
                assert mem.per_gpu(offer.count) > avail * GPU_MEMORY_UTILIZATION, offer


def test_kv_cache_uses_the_kv_heads():
    # Llama-2-70B has 8 KV heads of 128: 2 x 80 layers x 1024 x 2 bytes per token
    shape = catalog.model_shape("meta-llama/Llama-2-70b-hf")
    assert serve_memory(shape, 1000).kv_bytes_per_token == 2 * 80 * 1024 * 2


def test_cost_per_million_tokens_follows_bandwidth_and_price():
    c = serve_cost("A100-80GB", 1, 2.0, weights_gb=14.0, kv_bytes_per_token=524288.0)
    read = 14.0e9 + CONCURRENCY * CONTEXT_TOKENS * 524288.0
    tps = CONCURRENCY / (read / (BANDWIDTH_GBPS["A100-80GB"] * 1e9 * ACHIEVED))
    assert c.tokens_per_s == pytest.approx(tps)
    assert c.usd_per_million == pytest.approx(2.0 / (tps * 3600) * 1e6)
    assert "not a measurement" in c.assumption


def test_lora_rank_rounds_up_to_a_rank_vllm_accepts():
    assert [lora_rank_flag(r) for r in (1, 4, 8, 9, 64, 300, 512)] == [1, 8, 8, 16, 64, 320, 512]


def test_dry_run_shows_the_plan_and_the_yaml():
    _record()
    r = _invoke("serve", RUN, "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert "/h per replica" in r.stderr and "per 1M output tokens at 16 concurrent sequences" in r.stderr
    assert yaml.safe_load(r.stdout)["service"]["replica_policy"]["min_replicas"] == 0
    j = _invoke("serve", RUN, "--dry-run", "--json")
    plan = json.loads(j.stdout)["plan"]
    assert plan["service"] == RUN and plan["usd_per_1m_output_tokens"] > 0 and plan["usd_per_hour"] > 0


@pytest.mark.parametrize("args, words", [
    (("serve", "./some/dir"), "cloud replica can only download a Hub model"),
    (("serve", "sftl-nope-0000"), "no run"),
    (("serve", "down"), "needs the service NAME"),
])
def test_bad_input_is_one_line_and_exit_2(args, words, tmp_path):
    (tmp_path / "x").mkdir()
    _record()  # a registry exists
    r = _invoke(*args)
    assert r.exit_code == 2 and words in r.stderr and "Traceback" not in r.stderr


def test_a_run_without_bucket_or_hub_repo_is_refused_for_the_cloud():
    _record({**QLORA, "output": {"bucket": None}})
    r = _invoke("serve", RUN, "--dry-run")
    assert r.exit_code == 2 and "serve --local" in r.stderr


def test_up_records_the_service_then_status_logs_and_down(fake_serve):
    _record()
    r = _invoke("serve", RUN, "--yes")
    assert r.exit_code == 0, r.stderr
    assert ("up", RUN) in fake_serve.calls and services.get(RUN)["user_hash"] == "u-me"
    assert fake_serve.tasks[RUN]["service"]["replica_policy"]["min_replicas"] == 0
    st = _invoke("serve", "status", "--json")
    assert [row["name"] for row in json.loads(st.stdout)] == [RUN]
    fake_serve.logs[RUN] = ["INFO: Started server process"]
    lg = _invoke("serve", "logs", RUN)
    assert "Started server process" in lg.stdout and fake_serve.calls[-1] == ("tail_logs", RUN, "replica", 1, False)
    dn = _invoke("serve", "down", RUN, "--yes")
    assert dn.exit_code == 0 and ("down", RUN) in fake_serve.calls and services.get(RUN)["downed_at"]


def test_down_refuses_what_is_not_ours(fake_serve):
    fake_serve.add("sftl-theirs-0000", "u-me")  # our user, but never recorded by sftlaunch serve
    fake_serve.add("sftl-mate-1111", "u-teammate")  # recorded here, but another SkyPilot user's
    services.record("sftl-mate-1111", None, "m/x", "gcp", "L4:1", 0.7, "u-me", {})
    fake_serve.add("my-own-svc", "u-me")
    for name, why in (("sftl-theirs-0000", "not launched by `sftlaunch serve`"),
                      ("sftl-mate-1111", "belongs to SkyPilot user u-teammate"),
                      ("my-own-svc", "not launched by `sftlaunch serve`")):
        r = _invoke("serve", "down", name, "--yes")
        assert r.exit_code == 2 and why in r.stderr, r.stderr
    assert not [c for c in fake_serve.calls if c[0] == "down"]
    gone = _invoke("serve", "down", "sftl-gone-2222", "--yes")
    assert gone.exit_code == 0 and "nothing to do" in gone.stdout


def test_local_dry_run_names_the_server_command():
    r = _invoke("serve", "sftlaunch/tiny-llama", "--local", "--port", "8123", "--dry-run")
    assert r.exit_code == 0 and "-m jobs.serve_local --model sftlaunch/tiny-llama --port 8123" in r.stdout


@pytest.mark.parametrize("has_template", [True, False])
def test_the_run_script_passes_the_published_template_when_there_is_one(tmp_path, has_template):
    """The replica's script under bash, with a stand-in `vllm` that prints its arguments."""
    import subprocess

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    if has_template:
        (model_dir / "chat_template.jinja").write_text("{{ messages }}")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "vllm").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (tmp_path / "bin" / "vllm").chmod(0o755)
    source = source_from_run(_record())
    _mem, choices = _plan_for(source)
    script = render_service(source, choices, RUN, 4096)["run"].replace(MODEL_DIR, str(model_dir))
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    args = out.stdout.splitlines()
    assert args[:2] == ["serve", "meta-llama/Llama-2-7b-hf"] and args[args.index("--tokenizer") + 1] == str(model_dir)
    assert ("--chat-template" in args) is has_template
    if has_template:
        assert args[args.index("--chat-template") + 1] == f"{model_dir}/chat_template.jinja"


def test_the_backend_reads_skypilots_service_records_and_calls_its_sdk_as_declared(monkeypatch):
    """SkyServe's status record (sky/serve/serve_state.py's fields, its real enums) becomes a
    Service; each SDK call the backend makes binds to the installed sky.serve signature."""
    import inspect

    import sky
    from sky.serve import ReplicaStatus, ServiceStatus

    from launcher.backends import serve as backend

    record = {"name": RUN, "status": ServiceStatus.READY, "endpoint": "1.2.3.4:30001", "user_hash": "u-me",
              "policy": "Autoscaling from 0 to 2 replicas", "requested_resources_str": "1x[L4:1]",
              "replica_info": [{"replica_id": 1, "status": ReplicaStatus.READY},
                               {"replica_id": 2, "status": ReplicaStatus.PROVISIONING}]}
    svc = backend._svc(record)
    assert (svc.name, svc.status, svc.user_hash, svc.replicas, svc.ready_replicas) == (RUN, "READY", "u-me", 2, 1)
    inspect.signature(sky.serve.up).bind(object(), service_name=RUN)
    inspect.signature(sky.serve.status).bind([RUN])
    inspect.signature(sky.serve.down).bind(RUN)
    inspect.signature(sky.serve.tail_logs).bind(RUN, target="replica", replica_id=1, follow=False, output_stream=None)
    assert {"replica", "controller"} <= {c.value for c in sky.serve.ServiceComponent}


def test_a_second_serve_of_a_running_service_is_refused(fake_serve):
    _record()
    assert _invoke("serve", RUN, "--yes").exit_code == 0
    again = _invoke("serve", RUN, "--yes")
    assert again.exit_code == 2 and "already up" in again.stderr
    assert [c for c in fake_serve.calls if c[0] == "up"] == [("up", RUN)]


def test_skypilot_unreachable_starts_nothing(fake_serve, monkeypatch):
    _record()

    def boom(*_a, **_k):
        raise ConnectionError("Could not connect to SkyPilot API server at http://127.0.0.1:9")

    monkeypatch.setattr(fake_serve, "status", boom)
    r = _invoke("serve", RUN, "--yes")
    assert r.exit_code == 2 and "cannot reach SkyPilot" in r.stderr and "Traceback" not in r.stderr
    assert services.get(RUN) is None and not [c for c in fake_serve.calls if c[0] == "up"]


def test_status_and_down_with_skypilot_unreachable_are_one_line(fake_serve, monkeypatch):
    services.record(RUN, RUN, "m/x", "gcp", "L4:1", 0.7, "u-me", {})
    monkeypatch.setattr(fake_serve, "status", lambda *_a: (_ for _ in ()).throw(ConnectionError("refused")))
    for args in (("serve", "status"), ("serve", "down", RUN, "--yes")):
        r = _invoke(*args)
        assert r.exit_code == 2 and "cannot reach SkyPilot (ConnectionError: refused)" in r.stderr, r.stderr
    assert services.get(RUN)["downed_at"] is None


def test_gpu_flag_picks_that_gpu_and_count_and_refuses_what_cannot_hold_the_model():
    ok = _invoke("serve", "meta-llama/Llama-2-70b-hf", "--dry-run", "--json", "--cloud", "gcp", "--gpu", "A100-80GB:8")
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["plan"]["accelerators"] == "A100-80GB:8"
    assert "--tensor-parallel-size 8" in json.loads(ok.stdout)["task"]["run"]
    small = _invoke("serve", "meta-llama/Llama-2-70b-hf", "--dry-run", "--cloud", "gcp", "--gpu", "L4:1")
    assert small.exit_code == 2 and "no offer on gcp holds" in small.stderr and "on L4 x1" in small.stderr


@pytest.mark.parametrize("merge", [False, True])
def test_a_run_published_only_to_the_hub_is_served_from_its_repo(merge):
    recipe = {**QLORA, "output": {"bucket": None, "hub_repo": "me/l2-7b-dolphin", "merge_adapter": merge}}
    source = source_from_run(_record(recipe))
    _mem, choices = _plan_for(source)
    task = render_service(source, choices, RUN, 4096)
    _sky_parse(task)
    assert "file_mounts" not in task
    if merge:
        assert "vllm serve me/l2-7b-dolphin " in task["run"] and "--enable-lora" not in task["run"]
    else:
        assert f"--lora-modules {RUN}=me/l2-7b-dolphin" in task["run"] and "--tokenizer me/l2-7b-dolphin" in task["run"]


def test_serving_before_any_run_leaves_a_registry_status_can_read(fake_serve):
    """The first thing recorded in a fresh SFTLAUNCH_HOME is a service: runs.db is still the registry's."""
    r = _invoke("serve", "mistralai/Mistral-7B-v0.1", "--yes")
    assert r.exit_code == 0, r.stderr
    st = _invoke("status")
    assert st.exit_code == 0, st.stderr
    assert [row["name"] for row in json.loads(_invoke("serve", "status", "--json").stdout)][0].startswith("sftl-mistral")
