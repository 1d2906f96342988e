"""Offline SkyPilot catalog snapshot for tests that run SkyPilot's own optimizer.

SkyPilot 0.14.1 reads `~/.sky/catalogs/v8/<cloud>/vms.csv` (sky.skylet.constants
CATALOG_SCHEMA_VERSION = 'v8') and downloads it when missing — impossible offline. The path is
fixed when `sky.catalog.common` is imported (it resolves HOME then), so the snapshot must be
installed before sky is imported: callers run SkyPilot in a subprocess with HOME pointing at the
directory `install_catalogs` filled. Clouds are enabled the way SkyPilot's tests/conftest.py
`enable_all_clouds` does it: by patching `sky.check.get_cached_enabled_clouds_or_refresh`
(see `OPTIMIZE_SCRIPT`), since no credentials exist here.

tests/fixtures/catalogs/ holds verbatim excerpts of SkyPilot's published v8 catalogs
(skypilot-org/skypilot-catalog; see its README.md for paths and commits). The packaged
launcher/data/offers-snapshot.json is generated from them by scripts/snapshot_offers.py, so the
planner and SkyPilot read the same rows in these tests.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "catalogs"
CATALOG_VERSION = "v8"
CLOUDS = ("common", "gcp", "lambda", "runpod")


def install_catalogs(home: Path, drop: dict[str, str] | None = None) -> Path:
    """Copy the snapshot under HOME/.sky/catalogs/v8/ and return that directory.

    `drop` {cloud: text}: leave out that cloud's rows containing `text` (an offer made
    unavailable, for the failover test)."""
    dest = Path(home) / ".sky" / "catalogs" / CATALOG_VERSION
    for cloud in CLOUDS:
        (dest / cloud).mkdir(parents=True, exist_ok=True)
        for csv in (FIXTURE_DIR / cloud).glob("*.csv"):
            shutil.copy(csv, dest / cloud / csv.name)
    for cloud, text in (drop or {}).items():
        path = dest / cloud / "vms.csv"
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(x for i, x in enumerate(lines) if i == 0 or text not in x))
    return dest


def sky_env(home: Path, drop: dict[str, str] | None = None) -> dict:
    """Environment for a SkyPilot subprocess that sees only the snapshot in HOME."""
    install_catalogs(home, drop)
    env = dict(os.environ)
    env["SKYPILOT_API_SERVER_ENDPOINT"] = "http://127.0.0.1:9"  # nothing serves it: never a real server
    env["HOME"] = str(home)
    # sky.skylet.runtime_utils resolves the catalog dir under $SKY_RUNTIME_DIR (default ~).
    env["SKY_RUNTIME_DIR"] = str(home)
    env["SKYPILOT_DISABLE_USAGE_COLLECTION"] = "1"
    # Hermetic even with a network: a catalog SkyPilot finds missing (or stale) would be fetched
    # from GitHub; a dead proxy makes that fail at once instead of testing today's prices.
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        env[var] = "http://127.0.0.1:9"
    for var in ("NO_PROXY", "no_proxy"):
        env.pop(var, None)
    return env


OPTIMIZE_SCRIPT = r"""
import json, sys
from unittest import mock
import sky
from sky import clouds, optimizer
from sky.utils import registry
from sky import check as sky_check

for spec in json.loads(sys.argv[1]):
  enabled = [registry.CLOUD_REGISTRY.from_str(c) for c in spec["clouds"]]
  with mock.patch.object(sky_check, "get_cached_enabled_clouds_or_refresh",
                         lambda *a, **k: enabled):
    task = sky.Task(run="true", num_nodes=spec.get("nodes", 1))
    accs = spec["accelerators"]
    accs = accs if isinstance(accs, list) else [accs]
    task.set_resources({sky.Resources(cloud=registry.CLOUD_REGISTRY.from_str(c),
                                      accelerators=a, use_spot=spec.get("spot", False))
                        for c in spec["clouds"] for a in accs})
    dag = sky.Dag()
    dag.add(task)
    optimizer.Optimizer.optimize(dag, quiet=True)
    best = task.best_resources
    print("RESULT " + json.dumps({"cloud": str(best.cloud).lower(),
                                  "accelerators": best.accelerators,
                                  "cost": best.get_cost(3600)}))
"""


def sky_optimize(home: Path, specs: list[dict], timeout: int = 120) -> list[dict]:
    """Run SkyPilot's in-process optimizer (sky.optimizer.Optimizer.optimize) on the snapshot.

    SkyPilot 0.14's `sky.optimize` goes through the API server; the optimizer class itself runs
    in-process without one, which is what `sky launch --dry-run` ends up calling server-side.
    """
    """Each spec: {"clouds": [...], "accelerators": "H100:1" or a list, "spot", "nodes"}.

    One subprocess for all specs: importing sky costs seconds.
    """
    spec = json.dumps(specs)
    proc = subprocess.run([sys.executable, "-c", OPTIMIZE_SCRIPT, spec], env=sky_env(home),
                          capture_output=True, text=True, timeout=timeout)
    results = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines()
               if line.startswith("RESULT ")]
    if len(results) == len(specs):
        return results
    raise AssertionError(f"sky optimizer failed (rc {proc.returncode}):\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


TASK_SCRIPT = r"""
import json, sys
from unittest import mock
import sky
from sky import exceptions, optimizer
from sky.utils import registry
from sky import check as sky_check

for spec in json.loads(sys.argv[1]):
  enabled = [registry.CLOUD_REGISTRY.from_str(c) for c in spec["clouds"]]
  with mock.patch.object(sky_check, "get_cached_enabled_clouds_or_refresh", lambda *a, **k: enabled):
    try:
      task = sky.Task.from_yaml_config(spec["task"])
      dag = sky.Dag()
      dag.add(task)
      optimizer.Optimizer.optimize(dag, quiet=True)
      best = task.best_resources
      out = {"ok": True, "cloud": str(best.cloud).lower(), "accelerators": best.accelerators,
             "region": best.region, "cost": best.get_cost(3600)}
    except (exceptions.ResourcesUnavailableError, ValueError) as exc:
      out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:400]}
  print("RESULT " + json.dumps(out))
"""


def sky_optimize_tasks(home: Path, specs: list[dict], drop: dict[str, str] | None = None,
                       timeout: int = 300) -> list[dict]:
    """Each spec {"task": rendered task dict, "clouds": enabled clouds}: SkyPilot parses the
    task exactly as `sky launch` would (sky.Task.from_yaml_config) and its optimizer picks the
    resources; returns {"ok", "cloud", "accelerators", "region", "cost" ($/h per node)} or
    {"ok": False, "error"} per spec. One subprocess for all: importing sky costs seconds."""
    proc = subprocess.run([sys.executable, "-c", TASK_SCRIPT, json.dumps(specs)], env=sky_env(home, drop),
                          capture_output=True, text=True, timeout=timeout)
    results = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if len(results) == len(specs):
        return results
    raise AssertionError(f"sky failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


LAUNCH_ENV_SCRIPT = r"""
import json, math, sys
from unittest import mock
import sky
from sky import exceptions, optimizer
from sky.backends import backend_utils, cloud_vm_ray_backend, task_codegen
from sky.skylet import constants
from sky.utils import registry
from sky import check as sky_check

def job_env(task, launched):
  # What SkyPilot's backend gives the job's processes: its own predefined env (cloud/region of
  # the launched resources) and the GPU count from the task's demands, as its codegen computes it.
  handle = mock.Mock(cluster_name=task.name, launched_resources=launched)
  backend = cloud_vm_ray_backend.CloudVmRayBackend.__new__(cloud_vm_ray_backend.CloudVmRayBackend)
  with mock.patch.object(cloud_vm_ray_backend.common_utils, "get_current_user_name", return_value="u"):
    env = backend._skypilot_predefined_env_vars(handle)
  task.best_resources = launched
  _, count = task_codegen.RayCodeGen._get_accelerator_details(None, backend_utils.get_task_demands_dict(task))
  env[constants.SKYPILOT_NUM_GPUS_PER_NODE] = str(int(math.ceil(count)))
  return env

for spec in json.loads(sys.stdin.read()):
  enabled = [registry.CLOUD_REGISTRY.from_str(c) for c in spec["clouds"]]
  with mock.patch.object(sky_check, "get_cached_enabled_clouds_or_refresh", lambda *a, **k: enabled):
    try:
      pinned = spec["task"]["resources"].get("region")  # from_yaml_config consumes the dict
      task = sky.Task.from_yaml_config(spec["task"])
      dag = sky.Dag()
      dag.add(task)
      optimizer.Optimizer.optimize(dag, quiet=True)
      best = task.best_resources
      # The provisioner tries the regions that sell it cheapest first; the last is the dearest.
      regions = [pinned] if pinned else [r.name for r in best.cloud.regions_with_offering(
          best.instance_type, best.accelerators, best.use_spot, None, None)] or [best.region]
      launches = []
      for region in dict.fromkeys([regions[0], regions[-1]]):
        launched = best.copy(region=region, zone=None)
        launches.append({"region": region, "cost": launched.get_cost(3600), "env": job_env(task, launched)})
      out = {"ok": True, "cloud": str(best.cloud).lower(), "accelerators": best.accelerators,
             "instance_type": best.instance_type, "launches": launches}
    except (exceptions.ResourcesUnavailableError, ValueError) as exc:
      out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:400]}
  print("RESULT " + json.dumps(out))
"""


def sky_launch_envs(home: Path, specs: list[dict], timeout: int = 600) -> list[dict]:
    """Each spec {"task", "clouds"}: SkyPilot parses and optimizes the task, then for the cheapest
    and the dearest region that sells its pick, returns what the job would see: {"ok", "cloud",
    "accelerators", "instance_type", "launches": [{"region", "cost" ($/h per node), "env"}]},
    the env built by SkyPilot's own backend code. One subprocess for all specs."""
    proc = subprocess.run([sys.executable, "-c", LAUNCH_ENV_SCRIPT], input=json.dumps(specs), env=sky_env(home),
                          capture_output=True, text=True, timeout=timeout)  # stdin: specs exceed ARG_MAX
    results = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if len(results) == len(specs):
        return results
    raise AssertionError(f"sky failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
