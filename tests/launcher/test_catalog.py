"""Catalog inputs from outside the package: Hub config.json, the Kubernetes inventory, the
refreshed price snapshot in $SFTLAUNCH_HOME (written from SkyPilot's catalogs, read offline)."""

from __future__ import annotations

import http.server
import json
import os
import threading
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from launcher import catalog
from launcher.cli import cli
from launcher.estimate.candidates import plan
from sftcore.errors import UserError
from sftcore.recipe import recipe_from_dict
from tests.sky_catalog import FIXTURE_DIR

REPO = Path(__file__).resolve().parents[2]

# A small Llama-shaped config.json, as the Hub serves it (fields as in meta-llama/Llama-2-7b-hf).
LLAMA_CFG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "num_hidden_layers": 16,
             "intermediate_size": 5632, "num_attention_heads": 32, "num_key_value_heads": 4,
             "vocab_size": 32000, "tie_word_embeddings": False}
TOKEN = "hf_CANARYtokenVALUE0123456789"


class _Hub(http.server.BaseHTTPRequestHandler):
    """/org/small: a config; /gated/model: 401 without a token, 403 with one; else 404."""

    seen: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/org/small/resolve/"):
            body = json.dumps(LLAMA_CFG).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        code = (403 if self.headers.get("Authorization") else 401) if self.path.startswith("/gated/") else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(monkeypatch):
    _Hub.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield _Hub
    server.shutdown()
    server.server_close()


def _recipe(model: str, revision: str | None = None, tmp: Path | None = None):
    data = {"name": "hub", "model": {"id": model, "revision": revision}, "method": "qlora",
            "lora": {"r": 16, "target_modules": ["q_proj", "v_proj"]}, "quantization": {},
            "data": {"sources": [{"path": "garage-bAInd/Open-Platypus", "format": "platypus", "max_samples": 1000}],
                     "seq_len": 512},
            "resources": {"clouds": ["runpod", "lambda", "gcp"]}}
    if tmp is None:
        return recipe_from_dict(data)
    path = tmp / "hub.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_hub_config_gives_the_shape_and_is_cached(hub):
    r = _recipe("org/small", revision="v1.0")
    result = plan(r)
    assert result.chosen is not None, result.reason
    # Plain arithmetic from the config: 16 x (q 2048² + k,v 2·2048·256 + o 2048² + 3·2048·5632) + 2·32000·2048.
    expected = 16 * (2048 * 2048 * 2 + 2 * 2048 * 256 + 3 * 2048 * 5632) + 2 * 32000 * 2048
    shape = catalog.model_shape("org/small", "v1.0")
    assert shape["params_b"] * 1e9 == pytest.approx(expected)
    assert shape["linear"]["k_proj"] == [2048, 256]
    assert hub.seen[0] == ("/org/small/resolve/v1.0/config.json", None)
    cached = list((Path(os.environ["SFTLAUNCH_HOME"]) / "model-configs").rglob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text()) == LLAMA_CFG
    plan(r)
    assert len(hub.seen) == 1  # the second plan read the cache


def test_hub_token_is_sent_as_bearer_and_never_shown(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    res = CliRunner().invoke(cli, ["plan", str(_recipe("gated/model", tmp=tmp_path))])
    assert res.exit_code == 2, res.output
    assert hub.seen[-1] == ("/gated/model/resolve/main/config.json", f"Bearer {TOKEN}")
    assert TOKEN not in res.output and "Traceback" not in res.output
    assert "HTTP 403" in res.output and "accept the model's licence" in res.output and "model.id" in res.output


def test_gated_model_without_token_says_set_hf_token(hub, tmp_path):
    res = CliRunner().invoke(cli, ["plan", str(_recipe("gated/model", tmp=tmp_path))])
    assert res.exit_code == 2
    assert "HTTP 401" in res.output and "set HF_TOKEN" in res.output and "gated/model" in res.output
    assert "nothing fits" not in res.output  # a model problem, not a GPU problem


def test_missing_model_on_the_hub_is_a_404_hint(hub):
    reason = plan(_recipe("org/missing")).reason
    assert "HTTP 404" in reason and "check model.id and model.revision" in reason


def test_unreachable_hub_keeps_the_table_error_with_a_hint(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    reason = plan(_recipe("org/small")).reason
    assert "not in the planner's model table" in reason and "unreachable" in reason and "HF_ENDPOINT" in reason


def test_hf_hub_offline_asks_nobody(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE" in plan(_recipe("org/small")).reason
    assert hub.seen == []


def test_moe_config_counts_active_parameters():
    # Mixtral-8x7B-v0.1's config.json; the model card gives 46.7B total, 12.9B active.
    cfg = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 32000, "num_local_experts": 8, "num_experts_per_tok": 2}
    shape = catalog.shape_from_config(cfg)
    assert shape["params_b"] == pytest.approx(46.70, abs=0.05)
    assert shape["active_params_b"] == pytest.approx(12.88, abs=0.05)
    assert shape["experts"] == {"total": 8, "active": 2}


# ---------------------------------------------------------------------------------------------
# Kubernetes inventory


def _home() -> Path:
    home = Path(os.environ["SFTLAUNCH_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    return home


def test_kubernetes_inventory_from_file_and_env(monkeypatch):
    assert catalog.kubernetes_offers() == []  # nothing declared: nothing offered
    (_home() / "kubernetes.yaml").write_text("gpus:\n  - {name: h100, count: 8, usd_per_hour: 1.5}\n  - {name: L4, count: 3}\n")
    offers = catalog.kubernetes_offers()
    assert sorted((o.gpu, o.count, o.on_demand) for o in offers) == sorted(
        [("H100", c, 1.5) for c in (1, 2, 4, 8)] + [("L4", c, 0.0) for c in (1, 2, 3)])
    monkeypatch.setenv("SFTLAUNCH_K8S_GPUS", "A100-80GB:2")
    monkeypatch.setenv("SFTLAUNCH_K8S_USD_PER_GPU_HOUR", "0.7")
    assert [(o.gpu, o.count, o.on_demand) for o in catalog.kubernetes_offers()] == [("A100-80GB", 1, 0.7), ("A100-80GB", 2, 0.7)]


@pytest.mark.parametrize("text, needle", [
    ("gpus: []", "gpus: list your cluster's GPUs"),
    ("gpus:\n  - {name: H100, count: 0}", "count: GPUs per node must be a positive integer"),
    ("gpus:\n  - {name: A100-80, count: 8}", "did you mean A100-80GB?"),
    ("gpus:\n  - {name: H100, count: 8, price: 2}", "unknown key price"),
    ("gpus:\n  - {name: H100, count: 8, usd_per_hour: -1}", "usd_per_hour"),
    ("gpus: [H100", "cannot read it"),
])
def test_bad_kubernetes_inventory_is_one_clear_error(text, needle):
    (_home() / "kubernetes.yaml").write_text(text)
    with pytest.raises(UserError, match="kubernetes.yaml") as exc:
        catalog.kubernetes_offers()
    assert needle in str(exc.value)


def test_bad_kubernetes_env_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("SFTLAUNCH_K8S_GPUS", "H100")
    with pytest.raises(UserError, match="SFTLAUNCH_K8S_GPUS.*NAME:COUNT"):
        catalog.kubernetes_offers()


def test_fixture_dir_has_every_snapshot_cloud():
    assert {p.name for p in FIXTURE_DIR.iterdir() if p.is_dir()} >= {"common", "gcp", "lambda", "runpod"}
