"""Preflight's Hugging Face checks: can the run's token read the model and the datasets, and
write `output.hub_repo`?

Why these calls: `model_info` says whether a model is gated (its metadata stays public), and
the Hub's own `auth-check` endpoint (huggingface_hub's `HfApi.auth_check`, read or `write=True`)
answers for the token itself: GatedRepo when the account has not been granted the licence,
refused when the token may not write. `whoami` gives the token's role (read, write,
fineGrained) and the account's organisations, which decide whether a repo that does not exist
yet may be created. huggingface_hub is in the `train` extra and imported here only.
"""

from __future__ import annotations

import os
from pathlib import Path

from launcher.preflight_checks import FAIL, INSTALL_TRAIN, PASS, UNKNOWN, WARN, Check

TINY_MODEL_ID = "sftlaunch/tiny-llama"  # == jobs.tiny.TINY_MODEL_ID: built locally, never on the Hub
WRITE_ROLES_IN_ORG = ("admin", "write", "contributor")


def endpoint() -> str:
    from launcher.catalog import hub_endpoint

    return hub_endpoint()


def run_token(write: bool, local: bool) -> str | None:
    """The token the run will use. A cloud run receives HF_TOKEN only; a local run reads the
    Hub with any token huggingface_hub finds, and publishes with HF_TOKEN or
    HUGGING_FACE_HUB_TOKEN (jobs.publish)."""
    token = os.environ.get("HF_TOKEN")
    if token or not local:
        return token or None
    if write:
        return os.environ.get("HUGGING_FACE_HUB_TOKEN") or None
    from huggingface_hub import get_token

    return get_token()


def _unsent_token_hint(local: bool) -> str:
    """When a cloud run will get no token although this machine has one (saved by `hf auth login`)."""
    if local or os.environ.get("HF_TOKEN"):
        return ""
    try:
        from huggingface_hub import get_token

        return " (a token is saved on this machine, but runs receive only HF_TOKEN)" if get_token() else ""
    except Exception:  # noqa: BLE001 - only a hint
        return ""


def _api(token: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), token=token or False)


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


OFFLINE = (UNKNOWN, "HF_HUB_OFFLINE is set, so the Hub was not asked", "unset HF_HUB_OFFLINE and rerun")


def _offline_now() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub parses it (constants._is_true), read at check time."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _unreachable(exc: BaseException) -> tuple[str, str, str] | None:
    """'could not check' for offline mode, timeouts, refused connections and server errors."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    from sftcore.errors import one_line

    if isinstance(exc, OfflineModeIsEnabled):
        return OFFLINE
    status = _http_status(exc) if isinstance(exc, HfHubHTTPError) else None
    if status is not None and status < 500 and status != 429:
        return None
    if status is None and isinstance(exc, HfHubHTTPError):
        return None
    return UNKNOWN, f"the Hub at {endpoint()} did not answer ({one_line(exc, with_type=True, limit=160)})", \
        "check the network (or HF_ENDPOINT) and rerun"


def _guarded(fn):
    """Run a Hub check: no huggingface_hub → could not check (install fix); network trouble →
    could not check; any other Hub error → the check's own classification."""
    def wrapper(*args, **kwargs):
        try:
            import huggingface_hub  # noqa: F401
        except ImportError:
            return UNKNOWN, "huggingface_hub is not installed here", INSTALL_TRAIN
        if _offline_now():  # huggingface_hub reads HF_HUB_OFFLINE once, at its import; this is now
            return OFFLINE
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified: unreachable or re-raised as unforeseen
            verdict = _unreachable(exc)
            if verdict is None:
                raise
            return verdict
    return wrapper


# -- model ------------------------------------------------------------------------------------------
def model_check(recipe, local: bool, timeout: float) -> Check:
    model_id, revision = recipe.model.id, recipe.model.revision
    if model_id == TINY_MODEL_ID:
        return Check("model", model_id, lambda: (PASS, "the tiny test model, built on the machine that runs it", ""),
                     remote=False)
    path = Path(model_id).expanduser()
    if path.exists() or model_id.startswith((".", "/", "~")) or model_id.count("/") != 1:
        return Check("model", model_id, lambda: _local_model(path, local), remote=False)
    return Check("model", model_id, lambda: _hub_read(model_id, revision, "model", local, timeout), timeout)


def _local_model(path: Path, local: bool) -> tuple[str, str, str]:
    if not local:
        return (WARN, "a local model path is not uploaded to cloud runs; the container must have it at this path",
                "push the model to the Hub and set model.id to its id, or run with --local")
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        return FAIL, f"{path} {what}", "point model.id at a model directory (config.json and weights) or a Hub id"
    return PASS, "local model directory", ""


def dataset_read(src, local: bool, timeout: float) -> tuple[str, str, str]:
    return _hub_read(src.path, None, "dataset", local, timeout)


@_guarded
def _hub_read(repo_id: str, revision: str | None, kind: str, local: bool, timeout: float) -> tuple[str, str, str]:
    """Can the run's token read `repo_id`? Gated: has the account been granted access?"""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RevisionNotFoundError

    token = run_token(write=False, local=local)
    api = _api(token)
    page = f"{endpoint()}/{'datasets/' if kind == 'dataset' else ''}{repo_id}"
    field = "model.id" if kind == "model" else "data.sources[].path"
    try:
        info = (api.model_info if kind == "model" else api.dataset_info)(repo_id, revision=revision, timeout=timeout)
    except RevisionNotFoundError:
        return FAIL, f"the {kind} has no revision {revision!r}", "fix model.revision (a branch, tag or commit)"
    except GatedRepoError:
        info = None
    except HfHubHTTPError as exc:
        if not _refused(exc):
            raise
        hint = "" if token else "; if it is private, set HF_TOKEN to a token that can read it"
        return (FAIL, f"no such {kind} on the Hub, or it is private ({'HF_TOKEN' if token else 'no token'})"
                f"{_unsent_token_hint(local)}", f"fix {field}{hint}")
    gated = getattr(info, "gated", True) if info is not None else True
    if info is not None and not gated and not getattr(info, "private", False):
        return PASS, f"public {kind}", ""
    try:
        api.auth_check(repo_id, repo_type=kind, token=token or False)
    except HfHubHTTPError as exc:
        if not _refused(exc):
            raise
        if not token:
            return (FAIL, f"gated {kind}, and no HF_TOKEN to read it with{_unsent_token_hint(local)}",
                    f"accept the license at {page}, then export HF_TOKEN=<a token of that account>")
        if _http_status(exc) == 401 and not isinstance(exc, GatedRepoError):
            return (FAIL, "the Hub refused HF_TOKEN (invalid, expired or revoked)",
                    f"create a new token at {endpoint()}/settings/tokens")
        if isinstance(exc, GatedRepoError):
            return (FAIL, f"gated {kind}: the account behind HF_TOKEN has not been granted access",
                    f"accept the license at {page} with that account (and wait for approval), then rerun")
        return FAIL, f"the Hub refuses HF_TOKEN for this {kind}", f"use a token of an account with access to {page}"
    kind_word = f"gated ({gated})" if gated else "private"
    return PASS, f"{kind_word} {kind}; HF_TOKEN has access", ""


def _refused(exc: BaseException) -> bool:
    """Not found, gated, private or forbidden: the Hub's "no" (huggingface_hub maps 401 on
    huggingface.co repo URLs to RepositoryNotFoundError; other endpoints keep the status)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    return isinstance(exc, RepositoryNotFoundError) or _http_status(exc) in (401, 403, 404)


# -- output.hub_repo --------------------------------------------------------------------------------
def repo_write_check(repo_id: str, local: bool, timeout: float) -> Check:
    return Check("hub_repo", repo_id, lambda: _hub_write(repo_id, local), timeout)


@_guarded
def _hub_write(repo_id: str, local: bool) -> tuple[str, str, str]:
    """Can the run's token publish to `repo_id`: create it (it must not exist: jobs.publish
    refuses to overwrite a repo's main branch), or write to it?"""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    tokens_page = f"{endpoint()}/settings/tokens"
    token = run_token(write=True, local=local)
    if not token:
        return (FAIL, f"publishing needs a write token and HF_TOKEN is not set{_unsent_token_hint(local)}",
                f"export HF_TOKEN=<a write token from {tokens_page}>, or remove output.hub_repo")
    api = _api(token)
    try:
        who = api.whoami()
    except HfHubHTTPError as exc:
        if _http_status(exc) == 401:
            return FAIL, "the Hub refused HF_TOKEN (invalid, expired or revoked)", f"create a new write token at {tokens_page}"
        raise
    user = who.get("name", "?")
    access = ((who.get("auth") or {}).get("accessToken") or {})
    role = access.get("role")
    if role == "read":
        return FAIL, f"HF_TOKEN is a read-only token (user {user})", f"use a write token (create one at {tokens_page})"
    try:
        api.auth_check(repo_id, write=True)
    except HfHubHTTPError as exc:
        if isinstance(exc, RepositoryNotFoundError) or _http_status(exc) == 404:
            return _may_create(repo_id, user, who, access)
        if _http_status(exc) in (401, 403):
            return (FAIL, f"the Hub refuses writes to {repo_id} for {user}'s token",
                    f"publish under a namespace the token may write (e.g. {user}/{repo_id.split('/')[1]}), "
                    "or get write access to the repo")
        raise
    refs = api.list_repo_refs(repo_id)
    if any(b.name == "main" for b in refs.branches):
        return (FAIL, f"{repo_id} exists and has a main branch: publish refuses to overwrite it",
                "set output.hub_repo to a new repo (or delete the old one)")
    return PASS, f"{user} may write to {repo_id}", ""


def _may_create(repo_id: str, user: str, who: dict, access: dict) -> tuple[str, str, str]:
    """The repo does not exist: may this token create it in its namespace?"""
    namespace = repo_id.split("/")[0]
    fix = f"publish under {user}/{repo_id.split('/')[1]}, or use a token that may create repos in {namespace}"
    if access.get("role") == "fineGrained":
        scoped = ((access.get("fineGrained") or {}).get("scoped")) or []
        if any((s.get("entity") or {}).get("name") == namespace and "repo.write" in (s.get("permissions") or [])
               for s in scoped):
            return PASS, f"{repo_id} will be created (private); the fine-grained token may write in {namespace}", ""
        return FAIL, f"the fine-grained token has no repo.write permission in {namespace}", fix
    if namespace == user:
        return PASS, f"{repo_id} will be created (private) under {user}", ""
    roles = {o.get("name"): o.get("roleInOrg") for o in who.get("orgs") or []}
    if roles.get(namespace) in WRITE_ROLES_IN_ORG:
        return PASS, f"{repo_id} will be created (private) in {namespace}, where {user} is {roles[namespace]}", ""
    why = f"is {roles[namespace]} there" if namespace in roles else "is not a member"
    return FAIL, f"{user} may not create repos in {namespace} ({why})", fix
