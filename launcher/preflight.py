"""Preflight: what would make a run fail after the GPUs are rented, checked before renting them.

Why: the costly failures of a fine-tuning run are not in the recipe but in the world around it —
a gated model whose licence the token's account never accepted (found when the download starts,
after provisioning), a read-only token or a foreign namespace in `output.hub_repo` (found at
publish, after hours of training), a bucket that does not exist or refuses writes (found at the
first checkpoint), a dataset id with a typo, a cloud with no credentials. Each is cheap to ask
about from the laptop, so `sftlaunch preflight RECIPE` and `up` ask first.

Every check runs in its own daemon thread with a deadline: an endpoint that accepts and never
answers yields "could not check" when the deadline passes, never a hung command (a daemon thread
does not hold the process open at exit). Only what the run itself will have is used: the
container receives HF_TOKEN and, for s3:// buckets, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from
this environment, so a token saved by `hf auth login` passes no cloud check. Nothing printed
carries a secret value: every line goes through `sftcore.masking.mask`.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict
from pathlib import Path

from launcher.backends import credentials
from launcher.preflight_checks import (
    CHECK_TIMEOUT_S,
    FAIL,
    INSTALL_CLOUD,
    INSTALL_TRAIN,
    LABELS,
    PASS,
    UNKNOWN,
    WARN,
    Check,
    Line,
    run_checks,
)
from sftcore.errors import one_line

PROBE_PREFIX = ".sftlaunch-preflight-"


# -- what to check for a recipe ---------------------------------------------------------------------
def recipe_checks(recipe, *, local: bool = False, clouds: list[str] | None = None,
                  enabled: dict[str, bool] | None = None, timeout: float = CHECK_TIMEOUT_S) -> list[Check]:
    """The checks for `recipe`'s run: cloud (`local` False) or on this machine.

    `clouds`: the clouds the run may use (default: the recipe's); `enabled`: SkyPilot's answer
    when the caller already has it (`up` asked it to pick a cloud), so it is not asked twice.
    """
    from launcher import preflight_hub as hub

    checks = [hub.model_check(recipe, local, timeout)]
    if recipe.output.hub_repo:
        checks.append(hub.repo_write_check(recipe.output.hub_repo, local, timeout))
    for i, src in enumerate(recipe.data.sources):
        checks.append(data_check(i, src, local, timeout))
    if recipe.output.bucket:
        uri = recipe.output.bucket
        checks.append(Check("bucket", uri, lambda: probe_bucket(uri, timeout), timeout,
                            "rerun when the store answers, or check the network and the endpoint", "://" in uri))
    if not local:
        from sftcore.clouds import CLOUDS

        wanted = [c for c in (recipe.resources.clouds if clouds is None else clouds) if c in CLOUDS]
        checks += image_checks(recipe, wanted or [c for c in recipe.resources.clouds if c in CLOUDS], timeout)
        if wanted:
            checks.append(cloud_check(wanted, enabled))
    return checks


def image_checks(recipe, clouds: list[str], timeout: float) -> list[Check]:
    """A check per image the run may pull (RunPod gets the -root variant): does its manifest exist?"""
    from launcher.images import needs_root, resolve_image

    images: dict[str, bool] = {}  # reference -> the -root variant
    for cloud in clouds:
        images.setdefault(resolve_image(recipe.image, cloud=cloud), needs_root(cloud))
    return [Check("image", ref, lambda ref=ref, root=root: image_status(ref, recipe.image is None, root, timeout),
                  timeout, "rerun when the registry answers, or check the network")
            for ref, root in images.items()]


def image_status(ref: str, default: bool, root: bool = False, timeout: float = CHECK_TIMEOUT_S) -> tuple[str, str, str]:
    """The registry's answer for `ref` as a preflight line (launcher.registry speaks the protocol)."""
    from launcher import registry
    from sftcore.contract import Env

    answer = registry.manifest_state(ref, timeout)
    host = registry.parse_reference(ref).registry
    push = (f"build and push it: `sftlaunch image push{' --root' if root else ''}` (set {Env.IMAGE_REPO} to a "
            "registry you can push to first), or set image: in the recipe"
            if default else "fix image: in the recipe, or push that image")
    if answer.state == registry.EXISTS and answer.credentials is None:
        return PASS, "exists" + (f" ({answer.digest})" if answer.digest else ""), ""
    if answer.state == registry.EXISTS and registry.docker_login_names([ref]):
        return (PASS, "private; the run logs in with SKYPILOT_DOCKER_USERNAME/PASSWORD (passed to SkyPilot as "
                "secrets at launch)" + (f" ({answer.digest})" if answer.digest else ""), "")
    if answer.state == registry.EXISTS:
        return (WARN, f"private: readable with the credentials of {answer.credentials}, but the run pulls it "
                "without credentials (SkyPilot logs in only with its docker login variables)",
                f"export SKYPILOT_DOCKER_USERNAME, SKYPILOT_DOCKER_PASSWORD and SKYPILOT_DOCKER_SERVER={host} "
                f"(a read-only token), or make the image public (on {host}: the package's visibility)")
    if answer.state == registry.MISSING:
        return FAIL, f"{answer.detail}; the GPU host would fail at pull", push
    if answer.state == registry.DENIED and registry.docker_login_names([ref]):
        return (FAIL, f"{answer.detail} for the credentials of {answer.credentials}: the run logs in with them and "
                "would be refused the same way", f"give SKYPILOT_DOCKER_USERNAME read access to it, or {push}")
    if answer.state == registry.DENIED:
        whose = f" for the credentials of {answer.credentials}" if answer.credentials else ""
        return (FAIL, f"{answer.detail}{whose}: the image is private or does not exist, and the run pulls without "
                "credentials", f"{push}; for a private image export SKYPILOT_DOCKER_USERNAME, "
                f"SKYPILOT_DOCKER_PASSWORD and SKYPILOT_DOCKER_SERVER={host}")
    return UNKNOWN, answer.detail, "rerun when the registry answers, or check the network"


def data_check(i: int, src, local: bool, timeout: float) -> Check:
    from sftcore.recipe import looks_local
    from sftcore.recipe.input import data_path_problem

    if looks_local(src.path):
        def fn():
            problem = data_path_problem(Path(src.path))
            if problem:
                return FAIL, problem, f"fix data.sources[{i}].path"
            return PASS, "local data; uploaded with the run" if not local else "local data", ""

        return Check(f"data[{i}]", src.path, fn, timeout, remote=False)
    from launcher import preflight_hub as hub

    return Check(f"data[{i}]", src.path, lambda: hub.dataset_read(src, local, timeout), timeout)


# -- the bucket ---------------------------------------------------------------------------------------
def _bucket_fixes(uri: str) -> dict[str, str]:
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    name = uri.split("://", 1)[1].split("/", 1)[0] if "://" in uri else uri  # the bucket's name
    if scheme in ("gs", "gcs"):
        return {
            "missing": f"create it: `gcloud storage buckets create gs://{name} --location=us-central1`, "
                       "or fix output.bucket",
            "denied": f"grant this account Storage Object Admin on gs://{name} (create and delete objects)",
            "creds": "log in for Google Cloud Storage: `gcloud auth application-default login` "
                     "(or GOOGLE_APPLICATION_CREDENTIALS=/path/key.json)",
        }
    if scheme in ("s3", "s3a"):
        return {
            "missing": f"create it: `aws s3 mb s3://{name}`, or fix output.bucket",
            "denied": f"allow s3:PutObject and s3:DeleteObject on arn:aws:s3:::{name}/* for these keys",
            "creds": "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the run receives only these two)",
        }
    return {"missing": f"create the directory {uri}", "denied": f"make {uri} writable", "creds": ""}


def _classify_store_error(exc: BaseException) -> str:
    """missing | denied | nocreds | badcreds | unknown, from what s3fs, gcsfs and their clients
    raise (gcsfs.retry.validate_response: 404 FileNotFoundError, 403 OSError "Forbidden",
    other codes HttpError with .code; s3fs: botocore codes mapped to FileNotFoundError and
    PermissionError, the code kept in the message)."""
    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return "missing"
    if name in ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"):
        return "nocreds"
    # s3fs raises a rejected key (unknown id, wrong secret) as PermissionError too: keys first.
    if name == "RefreshError" or getattr(exc, "code", None) == 401 or any(s in text for s in (
            "InvalidAccessKeyId", "SignatureDoesNotMatch", "signature we calculated",
            "Access Key Id you provided does not exist", "invalid_grant")):
        return "badcreds"
    if isinstance(exc, PermissionError) or "AccessDenied" in text or text.startswith("Forbidden") \
            or getattr(exc, "code", None) == 403:
        return "denied"
    return "unknown"


def probe_bucket(uri: str, timeout: float = CHECK_TIMEOUT_S) -> tuple[str, str, str]:
    """Write a small probe object under `uri` and delete it: the bucket exists and the run can
    checkpoint there (and prune old checkpoints). Storage options as for every launcher bucket read
    (sftcore.store's `fail_fast`: short per-request timeouts, bounded retries)."""
    fixes = _bucket_fixes(uri)
    if uri.startswith(("s3://", "s3a://")):
        missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not os.environ.get(k)]
        if missing:
            return FAIL, f"{' and '.join(missing)} not set: the run could not write there", fixes["creds"]
    import importlib.util

    if importlib.util.find_spec("fsspec") is None:
        return UNKNOWN, "fsspec is not installed here", INSTALL_TRAIN
    from sftcore import store

    probe = f"{uri.rstrip('/')}/{PROBE_PREFIX}{uuid.uuid4().hex[:12]}"
    stage = "reach"
    try:
        with store.quiet_logs():
            if "://" not in uri:
                Path(uri).mkdir(parents=True, exist_ok=True)
            fs, path = store.filesystem(probe, fail_fast=True, fresh=True)
            deadline = {"timeout": timeout} if store.is_async(fs) else {}
            stage = "write"
            fs.pipe_file(path, b"sftlaunch preflight probe; safe to delete\n", **deadline)
            stage = "delete"
            fs.rm_file(path, **deadline)
    except ImportError as exc:
        return UNKNOWN, f"no filesystem for {uri.split('://')[0]}:// here ({one_line(exc)})", INSTALL_TRAIN
    except Exception as exc:  # noqa: BLE001 - classified below; anything else is "could not check"
        kind = _classify_store_error(exc)
        reason = one_line(exc, with_type=True, limit=200)
        if stage == "delete" and kind in ("denied", "unknown"):
            status = FAIL if kind == "denied" else UNKNOWN
            return (status, f"the probe was written but could not be deleted ({reason}); old checkpoints could "
                    f"not be pruned", f"{fixes['denied']}; then remove {probe}")
        if kind == "missing":
            return FAIL, f"the bucket does not exist ({reason})", fixes["missing"]
        if kind == "denied":
            return FAIL, f"writing a probe object was refused ({reason})", fixes["denied"]
        if kind == "nocreds":
            return FAIL, f"no credentials for it on this machine ({reason})", fixes["creds"]
        if kind == "badcreds":
            return FAIL, f"the store did not accept these credentials ({reason})", fixes["creds"]
        return UNKNOWN, f"could not {stage} a probe object ({reason})", "check the network and the store's endpoint"
    return PASS, "exists; a probe object was written and deleted", ""


# -- cloud credentials ------------------------------------------------------------------------------
# SkyPilot's own per-cloud credential check (what `sky check` calls for each cloud, without
# touching the API server or its state database), in a child process we can time out and kill.
def cloud_check(clouds: list[str], enabled: dict[str, bool] | None = None) -> Check:
    """One check for all clouds (one `import sky`), a line per cloud. `enabled`: SkyPilot's
    answer when the caller already has it."""

    def fn():
        try:
            states = ({c: (bool(enabled.get(c)), "") for c in clouds} if enabled is not None
                      else credentials.sky_credentials(clouds))
        except ModuleNotFoundError:
            return UNKNOWN, "SkyPilot is not installed here", INSTALL_CLOUD
        return cloud_lines(clouds, states)

    return Check("cloud", ", ".join(clouds), fn, credentials.SKY_CHECK_TIMEOUT_S + 5,
                 f"run `sky check {' '.join(clouds)}` to see why")


def cloud_lines(clouds: list[str], states: dict[str, tuple[bool, str]]) -> list[Line]:
    """A line per cloud: a cloud without credentials fails only when no allowed cloud has them
    (`up` moves on to a cloud that has them, and says so)."""
    from launcher.backends.sky import CREDENTIAL_HINTS

    usable = [c for c in clouds if states[c][0]]
    out = []
    for c in clouds:
        ok, reason = states[c]
        if ok:
            out.append(Line("cloud", c, PASS, "credentials found" + (f" ({reason})" if reason else ""), ""))
            continue
        detail = f"no credentials{': ' + reason if reason else ''}"
        if usable:
            detail += f"; it will be skipped ({', '.join(usable)} will be used)"
        out.append(Line("cloud", c, WARN if usable else FAIL, detail, CREDENTIAL_HINTS.get(c, f"`sky check {c}`")))
    return out


# -- the whole report -------------------------------------------------------------------------------
def preflight(recipe, **kwargs) -> list[Line]:
    return run_checks(recipe_checks(recipe, **kwargs))


def gate(recipe, *, dry_run: bool, local: bool = False, **kwargs) -> bool:
    """`up`'s preflight, before anything is launched: the table, then a refusal (exit 2) when a
    check failed. A dry run only shows it and returns whether one failed (`up` exits 2 at its
    end). A local run checks only what it will ask of a service (Hub, bucket): its local files
    were checked when the recipe loaded. Nothing to check: nothing printed."""
    from sftcore.errors import UserError

    checks = [c for c in recipe_checks(recipe, local=local, **kwargs) if c.remote or not local]
    if not checks:
        return False
    lines = run_checks(checks)
    render(lines, "Preflight")
    if failed(lines) and not dry_run:
        raise UserError(f"preflight: {sum(ln.status == FAIL for ln in lines)} check(s) failed (the FAIL lines above, "
                        f"each with its fix); nothing was launched")
    return failed(lines)


PREFLIGHT_FAILED = "preflight failed (the FAIL lines above, each with its fix); fix them before launching"


def failed(lines: list[Line]) -> bool:
    return any(line.status == FAIL for line in lines)


def to_json(lines: list[Line]) -> str:
    return json.dumps({"ok": not failed(lines), "checks": [asdict(line) for line in lines]}, indent=2)


def render(lines: list[Line], title: str, err: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 132), stderr=err)
    table = Table(title=title, title_justify="left")
    for col in ("check", "target", "result", "detail", "fix"):
        table.add_column(col, overflow="fold")
    styles = {PASS: "green", WARN: "yellow", FAIL: "bold red", UNKNOWN: "yellow"}
    for line in lines:
        table.add_row(_plain(line.check), _plain(line.target), f"[{styles[line.status]}]{LABELS[line.status]}[/]",
                      _plain(line.detail), _plain(line.fix))
    console.print(table)
    n_fail = sum(line.status == FAIL for line in lines)
    n_unknown = sum(line.status == UNKNOWN for line in lines)
    summary = f"preflight: {n_fail} failed" if n_fail else "preflight: ok"
    if n_unknown:
        summary += f", {n_unknown} could not be checked"
    console.print(summary, markup=False)


def _plain(text: str):
    """As written: a path or an error message with [brackets] is not rich markup."""
    from rich.text import Text

    return Text(text)
