"""SkyPilot for `up --dry-run`: its credential check and its optimizer, without an API server.

Why: SkyPilot 0.14's SDK calls (`sdk.check`, `sdk.optimize`) go through an API server and start
a local one when none answers. A dry run did that: on a fresh HOME it spent a minute starting
the server (70-89 s measured, bench/RESULTS.md) and left it running after sftlaunch exited, a
process the user never asked for. Both questions have server-free answers in SkyPilot's own
code: each cloud's `check_credentials` (what `sky check` runs per cloud; launcher.preflight
already asks it that way) and `sky.optimizer.Optimizer.optimize` (what the server's optimize
request runs), told which clouds are enabled by the credential check we just made instead of
reading the server's state database. Each runs in a child process with a deadline: SkyPilot's
globals (the patched enabled-cloud lookup, its catalog directory) never touch this process, and
nothing is left behind when it exits.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

from sftcore.clouds import CLOUDS

OPTIMIZE_TIMEOUT_S = 120.0  # importing sky and reading its catalogs; the optimizer itself is fast
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_MARK = "SFTLAUNCH-NORESOURCES "  # the child's line for "no resources", as _OPTIMIZE prints it

# Task.from_yaml_config + Optimizer.optimize, as the server's optimize request does, with the
# enabled clouds given instead of read from (or refreshed into) SkyPilot's state database.
_OPTIMIZE = """
import json, sys
spec = json.loads(sys.stdin.read())
import sky
from sky import check as sky_check, exceptions, optimizer
from sky.utils import dag_utils, registry
enabled = [registry.CLOUD_REGISTRY.from_str(c) for c in spec["enabled"]]
sky_check.get_cached_enabled_clouds_or_refresh = lambda *a, **k: list(enabled)
task = sky.Task.from_yaml_config(spec["task"])
try:
    optimizer.Optimizer.optimize(dag_utils.convert_entrypoint_to_dag(task), quiet=False)
except exceptions.ResourcesUnavailableError as exc:
    sys.stdout.flush()
    print("SFTLAUNCH-NORESOURCES " + json.dumps(str(exc)), flush=True)
    sys.exit(3)
"""


class OfflineSky:
    """The two calls a dry run makes, with `SkyBackend`'s signatures, asked without a server."""

    def __init__(self, timeout: float = OPTIMIZE_TIMEOUT_S):
        self._timeout = timeout
        self._enabled: list[str] = []

    def enabled_clouds(self, clouds: list[str]) -> dict[str, bool]:
        """cloud -> whether SkyPilot's own per-cloud check finds compute credentials."""
        from launcher.backends import credentials

        wanted = [c for c in clouds if c in CLOUDS]
        if not wanted:
            return {}
        states = credentials.sky_credentials(wanted)
        self._enabled = [c for c in wanted if states.get(c, (False, ""))[0]]
        return {c: c in self._enabled for c in wanted}

    def optimize(self, task_config: dict) -> str:
        """SkyPilot's optimizer table for the task; ResourcesUnavailableError's text raised as
        RuntimeError when no enabled cloud offers what it asks."""
        config = dict(task_config)
        config.pop("secrets", None)  # names only in a dry run; nothing secret crosses to the child
        payload = json.dumps({"task": config, "enabled": self._enabled})
        proc = subprocess.Popen([sys.executable, "-c", _OPTIMIZE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(payload, timeout=self._timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise TimeoutError(f"SkyPilot's optimizer gave no answer within {self._timeout:g} s") from None
        lines = [_ANSI.sub("", line).rstrip() for line in out.splitlines()]
        lines = [line for line in lines if line.strip() and not line.startswith("<sky-payload>")]
        refused = next((line for line in lines if line.startswith(_MARK)), None)
        if refused is not None:
            raise RuntimeError(json.loads(refused[len(_MARK):]))
        if proc.returncode != 0:
            raise RuntimeError(f"SkyPilot's optimizer failed: {lines[-1] if lines else f'exit code {proc.returncode}'}")
        return "\n".join(lines) or "(SkyPilot printed no plan)"
