"""Secrets: which environment variables are secret, how they reach SkyPilot, how they are masked.

Why one module: a token must never land in a rendered YAML, the run registry, a log we write or
an error we print. Values are read from the caller's environment only at the moment of launch
(and handed to SkyPilot as task secrets, which it keeps out of its own YAML dumps); everything we
print or store goes through `mask()` first, which replaces every known secret value.
"""

from __future__ import annotations

import os
import re

# Secrets a run may need inside the container, by name (render passes them as SkyPilot secrets).
# Values come from the caller's env.
JOB_SECRETS = ("HF_TOKEN", "WANDB_API_KEY")
# Cloud keys that may sit in the caller's environment; never forwarded, always masked.
CLOUD_SECRETS = (
    "RUNPOD_API_KEY", "LAMBDA_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "GOOGLE_API_KEY", "HUGGING_FACE_HUB_TOKEN", "SKYPILOT_API_SERVER_TOKEN",
    "SKYPILOT_DOCKER_PASSWORD",  # SkyPilot's registry login (preflight's image check may use it)
)
ALL_SECRETS = JOB_SECRETS + CLOUD_SECRETS
MASK = "****"
# Token shapes worth masking even when they did not come from a known variable.
_TOKEN_PATTERNS = (
    re.compile(r"\bhf_[A-Za-z0-9]{20,}\b"),
    re.compile(r"\brpa_[A-Za-z0-9]{20,}\b"),
    re.compile(r"\bsecret_[A-Za-z0-9_]{20,}\b"),
)
_MIN_LEN = 4  # shorter values would mask ordinary words


def secret_values(env: dict | None = None) -> list[str]:
    env = os.environ if env is None else env
    values = {env.get(name, "") for name in ALL_SECRETS}
    return sorted((v for v in values if len(v) >= _MIN_LEN), key=len, reverse=True)


def mask(text, env: dict | None = None):
    """`text` with every secret value replaced by ****; non-strings pass through unchanged."""
    if not isinstance(text, str) or not text:
        return text
    for value in secret_values(env):
        if value in text:
            text = text.replace(value, MASK)
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(MASK, text)
    return text


def mask_obj(obj, env: dict | None = None):
    """Deep `mask` over JSON-like data (dicts, lists, strings) before it is stored or printed."""
    if isinstance(obj, str):
        return mask(obj, env)
    if isinstance(obj, dict):
        return {k: mask_obj(v, env) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [mask_obj(v, env) for v in obj]
    return obj


def launch_secrets(names, env: dict | None = None) -> tuple[dict[str, str], list[str]]:
    """(name -> value for the secrets present now, names that are missing).

    Called only inside the backend's launch call, so values live in memory for that call alone.
    """
    env = os.environ if env is None else env
    present, missing = {}, []
    for name in names:
        value = env.get(name)
        if value:
            present[name] = value
        else:
            missing.append(name)
    return present, missing
