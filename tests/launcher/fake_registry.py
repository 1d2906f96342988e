"""A container registry on 127.0.0.1 that speaks the protocol docker pulls with, for preflight's
image check (launcher/registry.py).

What it mirrors, from the public specs:
- Token auth (https://distribution.github.io/distribution/spec/auth/token/): a request without a
  valid token gets `401` and `WWW-Authenticate: Bearer realm="<token url>",service="<service>",
  scope="repository:<name>:pull"` (the spec's example: `Bearer realm="https://auth.docker.io/
  token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push"`); the client
  GETs `<realm>?service=…&scope=…`, with Basic credentials if it has any, and receives
  `{"token": …, "access_token": …, "expires_in": …, "issued_at": …}`; wrong credentials are a
  401 there. As on Docker Hub, an anonymous client gets a token for a private repository, but a
  token without access, so the manifest answers 401 again.
- Manifests (OCI distribution-spec, "Pulling manifests"): `HEAD|GET /v2/<name>/manifests/<reference>`
  answers 200 with Content-Type and `Docker-Content-Digest`, or 404 with the JSON error body
  `{"errors": [{"code": "MANIFEST_UNKNOWN" | "NAME_UNKNOWN", "message": …, "detail": …}]}`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SERVICE = "fake-registry"


class FakeRegistry:
    """`images`: (repository, tag) -> manifest; `private`: repositories only `users` may pull."""

    def __init__(self):
        self.images: dict[tuple[str, str], bytes] = {}
        self.private: set[str] = set()
        self.users: dict[str, str] = {}
        self.tokens: dict[str, str | None] = {}  # token -> the user it was issued to (None: anonymous)
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def push(self, repository: str, tag: str) -> str:
        """A manifest list for `repository:tag`; returns its digest, as the registry computes it."""
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1234,
            "digest": "sha256:" + hashlib.sha256(f"{repository}:{tag}".encode()).hexdigest(),
            "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
        self.images[(repository, tag)] = body
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def start(self) -> FakeRegistry:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _may_pull(self, repository: str, authorization: str) -> bool:
        if not authorization.startswith("Bearer "):
            return False
        token = authorization[len("Bearer "):]
        if token not in self.tokens:
            return False
        return repository not in self.private or self.tokens[token] is not None

    def _handler(self):
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: pytest shows failures, not access logs
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, status: int, code: str, message: str, headers=None) -> None:
                body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
                self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

            def do_GET(self):
                registry.requests.append((self.command, self.path, dict(self.headers)))
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/token":
                    return self._token(urllib.parse.parse_qs(url.query))
                parts = url.path.split("/manifests/")
                if not url.path.startswith("/v2/") or len(parts) != 2:
                    return self._error(404, "NOT_FOUND", "not found")
                repository, reference = parts[0][len("/v2/"):], parts[1]
                if not registry._may_pull(repository, self.headers.get("Authorization", "")):
                    challenge = (f'Bearer realm="http://{registry.host}/token",service="{SERVICE}",'
                                 f'scope="repository:{repository}:pull"')
                    return self._error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": challenge})
                if not any(repo == repository for repo, _ in registry.images):
                    return self._error(404, "NAME_UNKNOWN", "repository name not known to registry")
                body = registry.images.get((repository, reference))
                if body is None:
                    return self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
                self._send(200, body, {"Content-Type": OCI_INDEX,
                                       "Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()})

            do_HEAD = do_GET

            def _token(self, query: dict[str, list[str]]):
                user = None
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    name, _, password = base64.b64decode(auth[len("Basic "):]).decode().partition(":")
                    if registry.users.get(name) != password:
                        return self._error(401, "UNAUTHORIZED", "incorrect username or password")
                    user = name
                if query.get("service") != [SERVICE]:
                    return self._error(400, "UNSUPPORTED", "unknown service")
                token = secrets.token_urlsafe(24)
                registry.tokens[token] = user
                body = json.dumps({"token": token, "access_token": token, "expires_in": 300,
                                   "issued_at": "2026-12-06T00:00:00Z"}).encode()
                self._send(200, body, {"Content-Type": "application/json"})

        return Handler
