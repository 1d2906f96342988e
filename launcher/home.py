"""Where sftlaunch keeps the user's state: `$SFTLAUNCH_HOME`, default `~/.sftlaunch` (docs/architecture.md).

A module of its own, importing nothing but the standard library, so that the light modules
(the catalog, the image records) and the run registry share one definition without the former
paying for the registry's sqlite import.
"""

from __future__ import annotations

import os
from pathlib import Path

from sftcore.contract import Env


def sftlaunch_home() -> Path:
    return Path(os.environ.get(Env.HOME) or Path.home() / ".sftlaunch")
