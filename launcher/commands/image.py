"""`sftlaunch image build|push`: the container image from docker/, tagged with this version.

A thin wrapper over `docker buildx build` so that everyone builds the image the same way (context
= the repository root, docker/Dockerfile, version labels filled in, linux/amd64) and so that a
push records the digest it produced: runs then render `image_id` as `repo@sha256:…`, which
cannot drift when a tag is moved. The digest comes from buildx's `--metadata-file`
(`containerimage.digest`), falling back to `docker buildx imagetools inspect`.

Docker problems are bad input (exit 2) with the fix in the message: docker not installed, no
daemon reachable, buildx missing. A build or push that runs and fails is exit 1.
"""

from __future__ import annotations

import datetime as _dt
import json
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import click

from launcher import __version__
from launcher.options import dry_run_option, json_option
from sftcore.contract import Env
from sftcore.errors import JobFailed, UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
DEFAULT_PLATFORM = "linux/amd64"  # every GPU cloud sftlaunch targets is x86_64


def _check_docker() -> str:
    """Path of a docker CLI that can reach a daemon and has buildx, or a UserError saying why not."""
    docker = shutil.which("docker")
    if docker is None:
        raise UserError(
            "docker is not installed (no `docker` on PATH); install Docker Engine with the buildx plugin "
            "(https://docs.docker.com/engine/install/) or build on a machine that has it"
        )
    info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if info.returncode != 0 or not info.stdout.strip():
        reason = next((line.strip() for line in info.stderr.splitlines() if line.strip()), "no answer")
        raise UserError(
            f"no Docker daemon reachable ({reason}); start it (`sudo systemctl start docker`, or open Docker "
            "Desktop) or point DOCKER_HOST at one; `sftlaunch image build --dry-run` shows the command without Docker"
        )
    buildx = subprocess.run([docker, "buildx", "version"], capture_output=True, text=True)
    if buildx.returncode != 0:
        raise UserError(
            "docker buildx is not available; install the buildx plugin (package docker-buildx-plugin, "
            "https://docs.docker.com/go/buildx/)"
        )
    return docker


def _vcs_ref() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _parse_build_args(values: tuple[str, ...]) -> list[str]:
    out = []
    for value in values:
        key, sep, _ = value.partition("=")
        if not sep or not key or not key.replace("_", "").isalnum():
            raise UserError(f"--build-arg {value!r}: use KEY=VALUE, e.g. --build-arg FLASH_ATTN_VERSION=2.8.3")
        if any(word in key.upper() for word in ("TOKEN", "SECRET", "PASSWORD", "KEY")):
            # Build args end up in the image's history for anyone who pulls it.
            raise UserError(f"--build-arg {key}: looks like a secret; build args are visible in the image history, "
                            "so pass secrets at run time (they are, by name, in the rendered task)")
        out.append(value)
    return out


def build_argv(
    docker: str, tag: str, platform: str, *, push: bool, root: bool, metadata_file: str,
    build_args: list[str] = (),  # type: ignore[assignment]
) -> list[str]:
    """The `docker buildx build` command line; a pure function so tests and --dry-run share it."""
    args = [
        f"{Env.VERSION}={__version__}",
        f"VCS_REF={_vcs_ref()}",
        f"BUILD_DATE={_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}",
    ]
    if root:
        args.append("IMAGE_USER=root")
    args += list(build_args)
    argv = [docker, "buildx", "build", "--file", str(DOCKERFILE), "--platform", platform, "--tag", tag]
    for arg in args:
        argv += ["--build-arg", arg]
    # --push sends the image to the registry; --load puts a single-platform build in the local engine.
    argv += ["--push" if push else "--load", "--metadata-file", metadata_file, str(REPO_ROOT)]
    return argv


def _digest_from_metadata(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    digest = data.get("containerimage.digest") if isinstance(data, dict) else None
    return digest if isinstance(digest, str) and digest.startswith("sha256:") else None


def _digest_from_registry(docker: str, tag: str) -> str | None:
    out = subprocess.run([docker, "buildx", "imagetools", "inspect", tag, "--format", "{{json .Manifest}}"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    try:
        digest = json.loads(out.stdout).get("digest")
    except (ValueError, AttributeError):
        return None
    return digest if isinstance(digest, str) and digest.startswith("sha256:") else None


def _run(ctx_tag: str, platform: str, push: bool, root: bool, dry_run: bool, build_arg: tuple[str, ...],
         as_json: bool) -> None:
    from launcher import images

    if not DOCKERFILE.is_file():
        raise UserError(f"{DOCKERFILE} not found; `sftlaunch image` builds from a clone of the sftlaunch repository "
                        "(git clone, then pip install -e '.[cloud]')")
    tag = images.check_reference(ctx_tag) if ctx_tag is not None else images.default_tag(root=root)
    extra = _parse_build_args(build_arg)
    if dry_run:
        argv = build_argv("docker", tag, platform, push=push, root=root, metadata_file="<metadata.json>",
                          build_args=extra)
        click.echo(shlex.join(argv))
        if push:
            click.echo(f"# then record the pushed digest for {tag} in {images.images_file()}")
        return
    docker = _check_docker()
    with tempfile.TemporaryDirectory(prefix="sftlaunch-image-") as tmp:
        meta = Path(tmp) / "metadata.json"
        argv = build_argv(docker, tag, platform, push=push, root=root, metadata_file=str(meta), build_args=extra)
        click.echo("$ " + shlex.join(argv), err=True)
        proc = subprocess.run(argv)  # output streams to the terminal: builds take many minutes
        if proc.returncode != 0:
            verb = "push" if push else "build"
            hint = f"; check `docker login {tag.split('/')[0]}`" if push else ""
            raise JobFailed(f"image {verb} of {tag} failed (docker exit {proc.returncode}); see docker's output above{hint}")
        digest = _digest_from_metadata(meta)
    result: dict[str, str | None] = {"tag": tag, "digest": digest}
    if push:
        digest = digest or _digest_from_registry(docker, tag)
        if digest is None:
            raise JobFailed(f"pushed {tag} but could not read its digest (no containerimage.digest in buildx's "
                            f"metadata, and `docker buildx imagetools inspect {tag}` failed); runs will use the tag")
        result["digest"] = digest
        result["ref"] = images.record_digest(tag, digest)
        result["recorded_in"] = str(images.images_file())
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif push:
        click.echo(f"pushed {result['ref']}\nrecorded in {result['recorded_in']}: runs of this version use this digest")
    else:
        click.echo(f"built {tag}" + (f" ({digest})" if digest else ""))


def _common(f):
    f = click.option("--build-arg", multiple=True, metavar="KEY=VALUE",
                     help="Extra Dockerfile build arg, e.g. FLASH_ATTN_VERSION=2.8.3 (repeatable).")(f)
    f = click.option("--root", is_flag=True,
                     help="Build the variant that runs as root (needed on RunPod); tag suffix -root.")(f)
    f = click.option("--platform", default=DEFAULT_PLATFORM, show_default=True, help="Target platform.")(f)
    f = click.option("--tag", "-t", default=None, metavar="REPO:TAG",
                     help=f"Image tag (default: ${Env.IMAGE_REPO} or ghcr.io/sftlaunch/sftlaunch, :<version>).")(f)
    f = dry_run_option(f)
    f = json_option(f)
    return f


@click.group()
def image() -> None:
    """Build or push the container image from docker/ (wraps `docker buildx build`)."""


@image.command()
@_common
def build(tag, platform, root, build_arg, dry_run, as_json):
    """Build the image into the local Docker engine."""
    _run(tag, platform, push=False, root=root, dry_run=dry_run, build_arg=build_arg, as_json=as_json)


@image.command()
@_common
def push(tag, platform, root, build_arg, dry_run, as_json):
    """Build and push the image, and record its digest so runs use it by digest."""
    _run(tag, platform, push=True, root=root, dry_run=dry_run, build_arg=build_arg, as_json=as_json)
