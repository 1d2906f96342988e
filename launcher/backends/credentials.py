"""SkyPilot's own credential check, asked in a child process: which clouds can launch compute,
and SkyPilot's reason for those that cannot.

Why a child process: `import sky` costs seconds and GCP's check asks Google, so the check runs
with a deadline and is killed past it (`up` never hangs on it), and the caller's process never
imports SkyPilot. Preflight's cloud lines and `up --dry-run`'s offline optimizer both ask here.
"""

from __future__ import annotations

import json
import subprocess
import sys

from sftcore.errors import one_line

SKY_CHECK_TIMEOUT_S = 90.0  # `import sky` alone takes seconds, and GCP's check asks Google

_SKY_CHECK = """
import json, sys
from sky.clouds import cloud as sky_cloud
from sky.utils import registry
out = {}
for name in sys.argv[1:]:
    try:
        ok, reason = registry.CLOUD_REGISTRY.from_str(name).check_credentials(sky_cloud.CloudCapability.COMPUTE)
    except Exception as exc:
        ok, reason = False, f"{type(exc).__name__}: {exc}"
    out[name] = [bool(ok), reason]
print("SFTLAUNCH-CHECK " + json.dumps(out, default=str))
"""


def sky_credentials(clouds: list[str], timeout: float = SKY_CHECK_TIMEOUT_S) -> dict[str, tuple[bool, str]]:
    """cloud -> (can launch compute, SkyPilot's reason). Raises ModuleNotFoundError without SkyPilot
    and TimeoutError past `timeout` (the child is killed)."""
    import importlib.util

    if importlib.util.find_spec("sky") is None:
        raise ModuleNotFoundError("SkyPilot is not installed")
    proc = subprocess.Popen([sys.executable, "-c", _SKY_CHECK, *clouds], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise TimeoutError(f"SkyPilot's check gave no answer within {timeout:g} s") from None
    for line in out.splitlines():
        if line.startswith("SFTLAUNCH-CHECK "):
            data = json.loads(line.split(" ", 1)[1])
            return {c: (bool(ok), reason_text(reason)) for c, (ok, reason) in data.items()}
    last = err.strip().splitlines()[-1] if err.strip() else f"exit code {proc.returncode}, no output"
    raise RuntimeError(f"SkyPilot's check failed: {last}")


def reason_text(reason) -> str:
    """SkyPilot's reason as one line; Kubernetes answers per kubeconfig context."""
    if isinstance(reason, dict):
        return "; ".join(f"context {ctx}: {reason_text(txt)}" for ctx, txt in reason.items())
    # SkyPilot's first line names the problem; the rest (and a first line's closing "run the
    # following commands:") repeats set-up steps that the fix column gives.
    line = one_line(RuntimeError(str(reason)), limit=200) if reason else ""
    head, sep, last = line.rstrip().rpartition(". ")
    return head + "." if sep and last.endswith(":") else line
