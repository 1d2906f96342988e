"""A small HTTP server answering the Hugging Face Hub endpoints that huggingface_hub 1.x calls
for repo_exists / list_repo_refs / list_repo_files / create_repo / upload_folder (preupload, LFS
batch with single-part and multipart transfers, commit with added and deleted files). State
lives in memory so tests can inspect what arrived. `fail_part_once` makes the first PUT of each
multipart part 1 answer 500.

For preflight (launcher.preflight_hub) it also answers whoami-v2, model and dataset info and the
`auth-check` endpoints (read and write) the way huggingface.co does: tokens registered with
`add_token` carry a user, a role (read | write | fineGrained) and organisations; a gated repo
answers 401 GatedRepo without a token and 403 GatedRepo to an account that was not granted
access; a write check answers 403 to a read token or a namespace the account may not write.
Tokens that were never registered are refused by whoami and auth-check only: the upload
endpoints stay as permissive as before."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_THRESHOLD = 1024  # bytes: larger files go through LFS, as the Hub does for big files
CHUNK = 4096  # multipart chunk size for files larger than one chunk


class FakeHub:
    def __init__(self, fail_part_once: bool = True):
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "files": {path: bytes}, "commits": int}
        self.datasets: dict[str, dict] = {}  # same shape, for /api/datasets/...
        self.tokens: dict[str, dict] = {}  # token -> {"name", "role", "orgs": [{"name", "roleInOrg"}], ...}
        self.lfs: dict[str, bytes] = {}  # oid -> content
        self.parts: dict[tuple[str, int], bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.validated: list[dict] = []  # README front matter seen by /api/validate-yaml
        self.part_failures = 0
        self.fail_part_once = fail_part_once
        self._failed: set[str] = set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def add_repo(self, repo_id: str, files: dict[str, bytes] | None = None, *, gated: str | bool = False,
                 private: bool = False, granted: tuple[str, ...] = (), kind: str = "model") -> None:
        """A repo; `gated` is the Hub's value ("auto", "manual" or False), `granted` the users
        whose access request was accepted."""
        store = self.repos if kind == "model" else self.datasets
        store[repo_id] = {"private": private, "files": dict(files or {}), "commits": 1, "gated": gated,
                          "granted": set(granted)}

    def add_token(self, token: str, user: str, role: str = "write", orgs: dict[str, str] | None = None,
                  scoped: list[dict] | None = None) -> None:
        """A token of `user`; `orgs` maps organisation -> the user's role in it (admin, write,
        contributor, read); `scoped`: a fineGrained token's per-entity permissions."""
        self.tokens[token] = {"name": user, "role": role,
                              "orgs": [{"name": o, "roleInOrg": r} for o, r in (orgs or {}).items()],
                              "scoped": scoped or []}

    # -- what the Hub decides (used by the handler) -------------------------------------------
    def user_of(self, headers) -> dict | None:
        auth = headers.get("Authorization") or ""
        return self.tokens.get(auth[len("Bearer "):]) if auth.startswith("Bearer ") else None

    def can_read(self, repo: dict, repo_id: str, user: dict | None) -> bool:
        """Private repos are hidden from other accounts once any token is registered (the upload
        tests register none and read back the private repos they created)."""
        if not repo["private"] or not self.tokens:
            return True
        return user is not None and self.in_namespace(user, repo_id.split("/")[0])

    def in_namespace(self, user: dict, namespace: str) -> bool:
        return namespace == user["name"] or any(o["name"] == namespace for o in user["orgs"])

    def can_write(self, user: dict, namespace: str) -> bool:
        if user["role"] == "read":
            return False
        if user["role"] == "fineGrained":
            return any(s["entity"]["name"] == namespace and "repo.write" in s["permissions"] for s in user["scoped"])
        return namespace == user["name"] or any(
            o["name"] == namespace and o["roleInOrg"] in ("admin", "write", "contributor") for o in user["orgs"])

    def _handler(hub):  # noqa: N805 - the closure's `self` is the request handler
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _json(self, code: int, data, headers: dict | None = None):
                raw = json.dumps(data).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def _not_found(self):
                self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})

            def _error(self, code: int, message: str, error_code: str | None = None):
                headers = {"X-Error-Message": message, **({"X-Error-Code": error_code} if error_code else {})}
                self._json(code, {"error": message}, headers)

            def _whoami(self):
                user = hub.user_of(self.headers)
                if user is None:
                    return self._error(401, "Invalid credentials in Authorization header")
                token = {"displayName": "preflight", "role": user["role"]}
                if user["role"] == "fineGrained":
                    token["fineGrained"] = {"canReadGatedRepos": True, "global": [], "scoped": user["scoped"]}
                return self._json(200, {"type": "user", "name": user["name"], "orgs": user["orgs"],
                                        "auth": {"type": "access_token", "accessToken": token}})

            def _repo_api(self, kind: str, rest: str):
                """/api/{models,datasets}/ID[/auth-check[/write]] with the Hub's access rules; False when
                the request is a plain info request of a readable repo (the caller answers it)."""
                store = hub.repos if kind == "model" else hub.datasets
                parts = rest.split("/")
                repo_id, tail = "/".join(parts[:2]), parts[2:]
                user = hub.user_of(self.headers)
                if self.headers.get("Authorization") and user is None and tail[:1] == ["auth-check"]:
                    self._error(401, "Invalid credentials in Authorization header")
                    return True
                repo = store.get(repo_id)
                if repo is None or not hub.can_read(repo, repo_id, user):
                    self._not_found()
                    return True
                if tail == ["auth-check"]:
                    if repo.get("gated") and user is None:
                        self._error(401, f"Access to {kind} {repo_id} is restricted. You must have access "
                                         "to it and be authenticated to access it. Please log in.", "GatedRepo")
                        return True
                    if repo.get("gated") and user["name"] not in repo.get("granted", ()):
                        self._error(403, f"Access to {kind} {repo_id} is restricted and you are not in the "
                                         f"authorized list. Visit {hub.url}/{repo_id} to ask for access.", "GatedRepo")
                        return True
                    self._json(200, {})
                    return True
                if tail == ["auth-check", "write"]:
                    if user is None or not hub.can_write(user, repo_id.split("/")[0]):
                        self._error(403, f"You don't have write access to {repo_id}")
                        return True
                    self._json(200, {})
                    return True
                return False

            def do_GET(self):
                hub.requests.append(("GET", self.path))
                path = self.path.split("?")[0]
                if path == "/api/whoami-v2":
                    return self._whoami()
                if path.startswith("/api/datasets/"):
                    rest = path[len("/api/datasets/"):]
                    if not self._repo_api("dataset", rest):
                        repo_id = "/".join(rest.split("/")[:2])
                        repo = hub.datasets[repo_id]
                        self._json(200, {"id": repo_id, "sha": "0" * 40, "private": repo["private"],
                                         "gated": repo.get("gated", False)})
                    return None
                if path.startswith("/api/models/") and "/auth-check" in path:
                    return self._repo_api("model", path[len("/api/models/"):])
                if path.startswith("/api/models/"):
                    rest = path[len("/api/models/"):]
                    parts = rest.split("/")
                    repo_id = "/".join(parts[:2])
                    if repo_id not in hub.repos:
                        return self._not_found()
                    if len(parts) >= 4 and parts[2] == "tree":  # list_repo_files (recursive)
                        return self._json(200, [
                            {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                            for name, data in sorted(hub.repos[repo_id]["files"].items())])
                    if len(parts) == 3 and parts[2] == "refs":
                        return self._json(200, {"branches": [{"name": "main", "ref": "refs/heads/main",
                                                              "targetCommit": "0" * 40}],
                                                "converts": [], "tags": []})
                    repo = hub.repos[repo_id]
                    if not hub.can_read(repo, repo_id, hub.user_of(self.headers)):
                        return self._not_found()
                    return self._json(200, {"id": repo_id, "sha": "0" * 40, "private": repo["private"],
                                            "gated": repo.get("gated", False)})
                self._json(404, {"error": f"unknown GET {path}"})

            def do_PUT(self):
                hub.requests.append(("PUT", self.path))
                body = self._body()
                if self.path.startswith("/lfs-part/"):
                    _, _, oid, n = self.path.split("/")
                    key = f"{oid}/{n}"
                    if hub.fail_part_once and n == "1" and key not in hub._failed:
                        hub._failed.add(key)
                        hub.part_failures += 1
                        return self._json(500, {"error": "simulated part failure"})
                    hub.parts[(oid, int(n))] = body
                    self.send_response(200)
                    self.send_header("ETag", hashlib.md5(body).hexdigest())
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if self.path.startswith("/lfs-single/"):
                    hub.lfs[self.path.split("/")[2]] = body
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                self._json(404, {"error": f"unknown PUT {self.path}"})

            def do_POST(self):
                hub.requests.append(("POST", self.path))
                body = self._body()
                path = self.path.split("?")[0]
                if path == "/api/validate-yaml":
                    import yaml

                    content = json.loads(body)["content"]
                    try:
                        hub.validated.append(yaml.safe_load(content.split("---")[1]) if content.startswith("---") else {})
                    except yaml.YAMLError as exc:
                        return self._json(400, {"errors": [{"message": str(exc)}]})
                    return self._json(200, {"errors": [], "warnings": []})
                if path == "/api/repos/create":
                    data = json.loads(body)
                    repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
                    if repo_id in hub.repos:
                        return self._json(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
                    hub.repos[repo_id] = {"private": data.get("visibility") == "private" or bool(data.get("private")), "files": {}, "commits": 0}
                    return self._json(200, {"url": f"{hub.url}/{repo_id}"})
                if path.endswith(".git/info/lfs/objects/batch"):
                    data = json.loads(body)
                    objects = []
                    for obj in data["objects"]:
                        oid, size = obj["oid"], obj["size"]
                        if oid in hub.lfs:
                            objects.append({"oid": oid, "size": size})  # already there: no action
                        elif size > CHUNK:
                            n = -(-size // CHUNK)
                            header = {"chunk_size": str(CHUNK)}
                            header.update({f"{i:05d}": f"{hub.url}/lfs-part/{oid}/{i}" for i in range(1, n + 1)})
                            objects.append({"oid": oid, "size": size, "actions": {"upload": {
                                "href": f"{hub.url}/lfs-complete/{oid}", "header": header}}})
                        else:
                            objects.append({"oid": oid, "size": size, "actions": {"upload": {
                                "href": f"{hub.url}/lfs-single/{oid}"}}})
                    return self._json(200, {"transfer": "basic", "objects": objects})
                if path.startswith("/lfs-complete/"):
                    oid = path.split("/")[2]
                    data = json.loads(body)
                    content = b"".join(hub.parts[(oid, p["partNumber"])] for p in sorted(data["parts"], key=lambda p: p["partNumber"]))
                    if hashlib.sha256(content).hexdigest() != oid:
                        return self._json(400, {"error": "sha256 mismatch"})
                    hub.lfs[oid] = content
                    return self._json(200, {})
                if path.startswith("/api/models/"):
                    rest = path[len("/api/models/"):].split("/")
                    repo_id, action = "/".join(rest[:2]), rest[2]
                    if repo_id not in hub.repos:
                        return self._not_found()
                    if action == "preupload":
                        files = json.loads(body)["files"]
                        return self._json(200, {"files": [
                            {"path": f["path"], "uploadMode": "lfs" if f["size"] > LFS_THRESHOLD else "regular",
                             "shouldIgnore": False} for f in files]})
                    if action == "commit":
                        repo = hub.repos[repo_id]
                        for line in body.decode().splitlines():
                            item = json.loads(line)
                            if item["key"] == "file":
                                repo["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                            elif item["key"] == "lfsFile":
                                repo["files"][item["value"]["path"]] = hub.lfs[item["value"]["oid"]]
                            elif item["key"] == "deletedFile":
                                repo["files"].pop(item["value"]["path"], None)
                        repo["commits"] += 1
                        return self._json(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{'1' * 40}",
                                                "commitOid": "1" * 40, "pullRequestUrl": None})
                self._json(404, {"error": f"unknown POST {path}"})

        return Handler
