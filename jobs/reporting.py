"""Whether, and how, the training job reports to Weights & Biases.

Why a check before training: an exported WANDB_API_KEY with no reachable W&B made wandb retry
for days while the run looked `running`, and a malformed key failed the run at its first step.
Observability must never block or fail training, so W&B is used online only when its server
answers within PROBE_TIMEOUT_S and accepts the key; an unreachable server means offline logging
(kept under the run directory, uploadable later with `wandb sync`), a malformed or rejected key
means no W&B at all; either way with one warning in the log. wandb's own files go under the run
directory (WANDB_DIR), never into the directory the user launched from.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

from sftcore.contract import JobEnv

DEFAULT_BASE_URL = "https://api.wandb.ai"  # wandb's default for WANDB_BASE_URL
PROBE_TIMEOUT_S = 10.0  # whole probe, connect to answer; override with SFTLAUNCH_WANDB_TIMEOUT_S
# wandb's own retry settings (WANDB__X maps to its setting x_x), bounded: left unset, a W&B that
# goes away mid-run is retried for days when the job exits and flushes. About 10 minutes at most.
BOUNDED_RETRIES = {
    "WANDB__FILE_STREAM_RETRY_MAX": "10", "WANDB__FILE_STREAM_RETRY_WAIT_MAX_SECONDS": "30",
    "WANDB__FILE_STREAM_TIMEOUT_SECONDS": "30", "WANDB__FILE_TRANSFER_RETRY_MAX": "10",
    "WANDB__FILE_TRANSFER_RETRY_WAIT_MAX_SECONDS": "30", "WANDB__GRAPHQL_RETRY_MAX": "10",
    "WANDB__GRAPHQL_RETRY_WAIT_MAX_SECONDS": "30", "WANDB_HTTP_TIMEOUT": "30",
}
_VIEWER_QUERY = json.dumps({"query": "query Viewer { viewer { id } }"}).encode()


def warn(msg: str) -> None:
    from jobs.checkpoint import warn as job_warn

    job_warn(msg)


def report_to(run_dir: Path | None = None) -> list[str] | str:
    """`report_to` for TrainingArguments: ["wandb"] (online, or offline with WANDB_MODE set) or "none".

    Only rank 0 probes (it is the only process transformers' WandbCallback logs from); the other
    ranks follow the environment without a network call.
    """
    key = os.environ.get("WANDB_API_KEY")
    if not key:
        return "none"
    if importlib.util.find_spec("wandb") is None:
        warn("WANDB_API_KEY is set but wandb is not installed; not reporting to W&B (pip install 'sftlaunch[train]')")
        return "none"
    if run_dir is not None:
        os.environ.setdefault("WANDB_DIR", str(run_dir))  # wandb/ goes under the run, not the cwd
    mode = (os.environ.get("WANDB_MODE") or "").strip().lower()
    if mode == "disabled":
        return "none"
    if mode in ("offline", "dryrun") or int(os.environ.get("RANK", "0")) != 0:
        return ["wandb"]
    problem = key_problem(key)
    if problem:
        warn(f"WANDB_API_KEY is malformed ({problem}); training goes on without W&B: fix the key to report to W&B")
        return "none"
    base = (os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    verdict, detail = probe(base, key, _timeout())
    if verdict == "ok":
        for name, value in BOUNDED_RETRIES.items():
            os.environ.setdefault(name, value)
        return ["wandb"]
    if verdict == "rejected":
        warn(f"W&B at {base} rejected WANDB_API_KEY ({detail}); training goes on without W&B: check the key")
        return "none"
    os.environ["WANDB_MODE"] = "offline"
    where = os.environ.get("WANDB_DIR") or "the working directory"
    warn(f"W&B at {base} is unreachable ({detail}); logging offline under {where}/wandb, "
         "upload it later with `wandb sync`")
    return ["wandb"]


def key_problem(key: str) -> str | None:
    """wandb's own format check (the one that fails a run at its first step), or None."""
    try:
        from wandb.sdk.lib.wbauth.validation import check_api_key
    except ImportError:  # another wandb layout: its documented rule, 40+ word characters after an optional prefix
        secret = key.split("-", 1)[-1]
        if not secret.replace("_", "").replace("-", "").isalnum():
            return "API key may only contain the letters A-Z, digits and underscores."
        return None if len(secret) >= 40 else f"API key must have 40+ characters, has {len(secret)}."
    return check_api_key(key)


def probe(base_url: str, key: str, timeout: float) -> tuple[str, str]:
    """("ok" | "rejected" | "unreachable", detail): ask W&B's GraphQL API who the key belongs to.

    The whole exchange is bounded by `timeout` (a thread, not only the socket timeout, so a
    server that accepts and then trickles or never answers cannot hold the job). The key goes
    only into the Authorization header; no detail quotes it.
    """
    auth = base64.b64encode(f"api:{key}".encode()).decode()
    answer: dict[str, tuple[str, str]] = {}

    def ask() -> None:
        try:
            request = urllib.request.Request(f"{base_url}/graphql", data=_VIEWER_QUERY, method="POST", headers={
                "Content-Type": "application/json", "Authorization": f"Basic {auth}", "User-Agent": "sftlaunch-job"})
            with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - http(s) from WANDB_BASE_URL
                raw = resp.read(1 << 16)
        except urllib.error.HTTPError as exc:
            answer["v"] = ("rejected", f"HTTP {exc.code}") if exc.code in (401, 403) else ("unreachable", f"HTTP {exc.code}")
            return
        except Exception as exc:  # noqa: BLE001 - URLError, timeouts, resets, a URL without http(s)://: all "not reachable"
            reason = getattr(exc, "reason", None) or exc
            if isinstance(reason, TimeoutError):  # the socket's own deadline beat the join below: same answer
                answer["v"] = ("unreachable", f"no answer within {timeout:g} s")
            else:
                answer["v"] = ("unreachable", " ".join(str(reason).split())[:120] or type(exc).__name__)
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            answer["v"] = ("unreachable", "the answer is not W&B's API (not JSON)")
            return
        viewer = (body.get("data") or {}).get("viewer") if isinstance(body, dict) else None
        answer["v"] = ("ok", "") if viewer else ("rejected", "it does not identify a user")

    worker = threading.Thread(target=ask, name="wandb-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    return answer.get("v", ("unreachable", f"no answer within {timeout:g} s"))


def _timeout() -> float:
    """The probe's bound: Env.WANDB_TIMEOUT_S when set (at most 300 s), else PROBE_TIMEOUT_S."""
    value = JobEnv.from_env().wandb_timeout_s
    return value if value is not None and value <= 300 else PROBE_TIMEOUT_S
