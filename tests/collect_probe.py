"""A pytest plugin (`-p tests.collect_probe`) that records what collecting the suite costs: once
collection ends it writes, as JSON to the file named by $COLLECT_PROBE_OUT, the heavy packages the
collecting process has imported and the number of items collected.

Why: pytest imports every test module to collect it, in every xdist worker, before any test runs.
A module-level import of torch, transformers or sky there costs each process seconds on 2 cores;
tests/test_collection.py asserts none is loaded and bench/collect_time.py prints the figures."""

from __future__ import annotations

import json
import os
import sys

OUT_ENV = "COLLECT_PROBE_OUT"
# Packages that take a second or more to import on 2 cores (torch alone ~8 s): a test that needs
# one imports it in its body or through the `requires` marker (tests/conftest.py).
HEAVY = ("torch", "transformers", "sky", "deepspeed", "peft", "accelerate", "datasets", "lm_eval",
         "vllm", "bitsandbytes", "trl")


def pytest_collection_finish(session):
    out = os.environ.get(OUT_ENV)
    if out:
        loaded = [name for name in HEAVY if name in sys.modules]
        with open(out, "w") as f:
            json.dump({"heavy": loaded, "items": len(session.items)}, f)
