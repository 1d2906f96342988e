"""Does the container image a run will pull exist in its registry? Asked before renting a GPU.

Why: the GPU host pulls the image only after it has been provisioned. An image that was never
pushed (the default `ghcr.io/sftlaunch/sftlaunch:<version>` until someone runs `sftlaunch image
push`), a typo in `image:`, or a private package fails there, after the money is spent. The
registry answers the same question from the laptop in a few hundred milliseconds.

The protocol is the OCI Distribution API, as docker speaks it (stdlib urllib, no dependency):
HEAD `/v2/<repository>/manifests/<tag or digest>` with the manifest media types in Accept; a 401
carries `WWW-Authenticate: Bearer realm="…",service="…",scope="…"`, whose realm hands out a pull
token (anonymously, or for Basic credentials), and the request is repeated with it. 404, or a
`MANIFEST_UNKNOWN` / `NAME_UNKNOWN` error, is an image that is not there. Names are normalised
as docker does (`ubuntu` is `docker.io/library/ubuntu:latest`, served by registry-1.docker.io);
a loopback registry (127.0.0.0/8, localhost) is spoken to over plain http, as dockerd treats it
as insecure by default.

Credentials: SkyPilot logs the GPU host into a registry only with SKYPILOT_DOCKER_USERNAME,
SKYPILOT_DOCKER_PASSWORD and SKYPILOT_DOCKER_SERVER in the task's envs or secrets
(sky/task.py `_with_docker_login_config`). When all three are set here and their server is the
registry of every image the run may pull, render declares them as task secrets (names only; `up`
passes the values at launch, `docker_login_names`), so a private image is pulled with them.
Otherwise the run pulls anonymously: SkyPilot would prefix another registry's image with the login
server. So the check asks anonymously first; credentials (those three variables, else a `docker
login` saved in ~/.docker/config.json) tell a private image from a missing one, and whether the
run can pull it. No password or token is ever put in a message.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"  # where docker.io's /v2/ API is served
DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")
SKY_DOCKER_ENV = ("SKYPILOT_DOCKER_USERNAME", "SKYPILOT_DOCKER_PASSWORD", "SKYPILOT_DOCKER_SERVER")
MISSING_CODES = ("MANIFEST_UNKNOWN", "NAME_UNKNOWN")
EXISTS, MISSING, DENIED, UNKNOWN = "exists", "missing", "denied", "unknown"
_CHALLENGE_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


@dataclass(frozen=True)
class ImageRef:
    registry: str  # as docker names it: docker.io, ghcr.io, host:5000
    repository: str  # library/ubuntu, sftlaunch/sftlaunch
    reference: str  # a tag, or sha256:… for a digest

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry


@dataclass
class Answer:
    state: str  # EXISTS | MISSING | DENIED | UNKNOWN
    detail: str
    digest: str | None = None
    credentials: str | None = None  # where the credentials used came from, never their value


def parse_reference(ref: str) -> ImageRef:
    """`ref` as docker resolves it (distribution/reference ParseNormalizedNamed): a first path
    component holding "." or ":", or "localhost", is a registry; otherwise docker.io, where a
    one-component name lives under library/. No tag means `latest`."""
    name, digest = (ref.split("@", 1) + [None])[:2]
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, path = first.lower(), rest
    else:
        registry, path = DOCKER_HUB, name
    if registry in DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return ImageRef(registry, path, digest or tag or "latest")


def _is_loopback(host: str) -> bool:
    hostname = urllib.parse.urlsplit(f"//{host}").hostname or ""
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


# -- credentials --------------------------------------------------------------------------------------
def _same_registry(server: str, registry: str) -> bool:
    host = urllib.parse.urlsplit(server if "://" in server else f"//{server}").netloc.lower()
    if host in DOCKER_HUB_ALIASES:
        host = DOCKER_HUB
    return host == registry


def docker_login_names(images, env=None) -> tuple[str, ...]:
    """SkyPilot's docker login variables when all three are set in `env` (default: this process's)
    and SkyPilot's login would pull every one of `images` unchanged; () otherwise. SkyPilot
    prefixes an image not starting with `<server>/` with it (`DockerLoginConfig.format_image`), so
    the server must be written as the image's registry is (`ghcr.io`, not `https://ghcr.io`); a
    Docker Hub image written without a registry stays the same image under `docker.io/`."""
    env = os.environ if env is None else env
    user, password, server = (env.get(k) for k in SKY_DOCKER_ENV)
    if not (user and password and server):
        return ()

    def unchanged(image: str) -> bool:
        if image.startswith(f"{server}/"):
            return True
        try:
            return server == DOCKER_HUB and parse_reference(image).registry == DOCKER_HUB
        except ValueError:
            return False

    images = list(images)
    return SKY_DOCKER_ENV if images and all(unchanged(image) for image in images) else ()


def find_credentials(registry: str, env: dict | None = None) -> tuple[str, str, str] | None:
    """(username, password, where from) for `registry`: SkyPilot's docker login variables when
    their server is this registry, else the `auths` entry `docker login` saved in
    $DOCKER_CONFIG/config.json (default ~/.docker). Credential helpers are not run."""
    env = os.environ if env is None else env
    user, password, server = (env.get(k) for k in SKY_DOCKER_ENV)
    if user and password and server and _same_registry(server, registry):
        return user, password, "SKYPILOT_DOCKER_USERNAME/PASSWORD"
    config = Path(env.get("DOCKER_CONFIG") or Path(env.get("HOME") or Path.home()) / ".docker") / "config.json"
    try:
        auths = json.loads(config.read_text()).get("auths") or {}
    except (OSError, ValueError, AttributeError):
        return None
    for key, entry in auths.items() if isinstance(auths, dict) else ():
        if not isinstance(entry, dict) or not _same_registry(key, registry):
            continue
        if entry.get("username") and entry.get("password"):
            return entry["username"], entry["password"], f"docker login ({config})"
        try:
            user, _, password = base64.b64decode(entry.get("auth") or "").decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            continue
        if user and password:
            return user, password, f"docker login ({config})"
    return None


# -- the protocol -------------------------------------------------------------------------------------
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a loopback registry: no proxy


def _request(url: str, timeout: float, headers: dict[str, str], method: str = "GET"):
    """(status, headers, body): 401 and 404 are answers here, not exceptions; redirects are followed.
    HTTPS_PROXY and friends apply, as for docker, except to a loopback registry."""
    req = urllib.request.Request(url, headers={"User-Agent": "sftlaunch-preflight", **headers}, method=method)
    opener = _DIRECT if _is_loopback(urllib.parse.urlsplit(url).netloc) else urllib.request.build_opener()
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read(65536) if method != "HEAD" else b""
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read(65536) if method != "HEAD" else b""


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…",scope="…"` -> ("bearer", {realm, service, scope})."""
    scheme, _, params = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): (quoted if quoted else bare) for k, quoted, bare in _CHALLENGE_PARAM.findall(params)}


def _basic(creds: tuple[str, str, str]) -> str:
    return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()


def _token(challenge: dict[str, str], image: ImageRef, creds, timeout: float) -> tuple[str | None, int]:
    """A pull token from the challenge's realm: (token, status of the token request)."""
    realm = challenge.get("realm")
    if not realm:
        return None, 0
    query = {"scope": challenge.get("scope") or f"repository:{image.repository}:pull"}
    if challenge.get("service"):
        query["service"] = challenge["service"]
    url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
    status, _, body = _request(url, timeout, {"Authorization": _basic(creds)} if creds else {})
    if status != 200:
        return None, status
    try:
        data = json.loads(body)
    except ValueError:
        return None, status
    return (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None, status


def _error_codes(body: bytes) -> list[str]:
    """The codes of the registry's JSON error body, `{"errors": [{"code": …, "message": …}]}`."""
    try:
        errors = json.loads(body).get("errors") or []
    except (ValueError, AttributeError):
        return []
    return [str(e.get("code")) for e in errors if isinstance(e, dict)]


def _ask(image: ImageRef, url: str, creds, timeout: float) -> Answer:
    """One manifest request, answering a 401 challenge once (bearer token, or Basic)."""
    accept = {"Accept": ", ".join(MANIFEST_TYPES)}
    status, headers, _ = _request(url, timeout, accept, "HEAD")
    if status == 401:
        scheme, challenge = parse_challenge(headers.get("WWW-Authenticate", ""))
        if scheme == "bearer":
            token, token_status = _token(challenge, image, creds, timeout)
            if token is None:
                if token_status in (401, 403):
                    return Answer(DENIED, f"the token service refused {'these credentials' if creds else 'an anonymous pull'}"
                                  f" (HTTP {token_status})")
                return Answer(UNKNOWN, f"no token from {urllib.parse.urlsplit(challenge.get('realm', '')).netloc or 'the registry'}"
                              f" (HTTP {token_status})")
            accept["Authorization"] = f"Bearer {token}"
        elif scheme == "basic" and creds:
            accept["Authorization"] = _basic(creds)
        else:
            return Answer(DENIED, "the registry asks for credentials")
        status, headers, _ = _request(url, timeout, accept, "HEAD")
    if status == 200:
        return Answer(EXISTS, "the manifest exists", headers.get("Docker-Content-Digest"))
    if status in (401, 403, 404):
        _, _, body = _request(url, timeout, accept)  # HEAD has no body: GET reads the error codes
        codes = _error_codes(body)
        if status == 404 or any(c in MISSING_CODES for c in codes):
            return Answer(MISSING, f"the registry has no such image (HTTP {status}{', ' + codes[0] if codes else ''})")
        return Answer(DENIED, f"the registry refused the pull (HTTP {status}{', ' + codes[0] if codes else ''})")
    return Answer(UNKNOWN, f"the registry answered HTTP {status}")


def manifest_state(ref: str, timeout: float = 20.0, env: dict | None = None) -> Answer:
    """Is `ref` pullable? Anonymously first (how the run pulls); when that is refused and
    credentials for the registry are at hand, again with them, to tell private from missing."""
    image = parse_reference(ref)
    scheme = "http" if _is_loopback(image.api_host) else "https"
    url = f"{scheme}://{image.api_host}/v2/{image.repository}/manifests/{image.reference}"
    try:
        answer = _ask(image, url, None, timeout)
        if answer.state == DENIED:
            creds = find_credentials(image.registry, env)
            if creds is not None:
                with_creds = _ask(image, url, creds, timeout)
                with_creds.credentials = creds[2]
                return with_creds
        return answer
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        return Answer(UNKNOWN, f"{image.api_host} did not answer ({type(exc).__name__}: {reason})")
