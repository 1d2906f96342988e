"""A fake of launcher.backends.serve.SkyServeBackend: SkyServe's services, in memory.

What it launches belongs to its `user` and keeps the task it was given (tests read the task back);
tests add look-alikes (another user's, never recorded). Every `down` of a service that is not
`user`'s is appended to `foreign_downs`, which the fixture asserts stays empty.
"""

from __future__ import annotations

import contextlib

from launcher.backends.serve import Service


class FakeServe:
    def __init__(self, user: str = "u-me"):
        self.user = user
        self.services: dict[str, Service] = {}
        self.tasks: dict[str, dict] = {}
        self.calls: list[tuple] = []
        self.foreign_downs: list[str] = []
        self.logs: dict[str, list[str]] = {}

    def current_user(self) -> str:
        return self.user

    def add(self, name: str, user_hash: str, status: str = "READY") -> Service:
        svc = Service(name, status, f"10.0.0.1:{30000 + len(self.services)}", user_hash, 1, 1)
        self.services[name] = svc
        return svc

    def up(self, task_config, name, secrets=None, on_line=None):
        self.calls.append(("up", name))
        self.tasks[name] = task_config
        svc = self.add(name, self.user, "CONTROLLER_INIT")
        if on_line:
            on_line(f"Service name: {name}")
        return svc.endpoint

    def status(self, names=None):
        self.calls.append(("status", tuple(names) if names else None))
        return [s for n, s in self.services.items() if names is None or n in names]

    def tail_logs(self, name, target, replica_id, follow, on_line):
        self.calls.append(("tail_logs", name, target, replica_id, follow))
        for line in self.logs.get(name, []):
            on_line(line)

    def down(self, name):
        self.calls.append(("down", name))
        svc = self.services.pop(name, None)
        if svc is not None and svc.user_hash != self.user:
            self.foreign_downs.append(name)


@contextlib.contextmanager
def installed(monkeypatch, fake: FakeServe | None = None):
    from launcher.backends import serve as serve_backend

    fake = fake if fake is not None else FakeServe()
    monkeypatch.setattr(serve_backend, "_factory", lambda: fake)
    yield fake
    assert fake.foreign_downs == [], f"took down what is not ours: {fake.foreign_downs}"
