"""SkyServe through SkyPilot 0.14's client SDK (`sky.serve.up/status/tail_logs/down`).

Why an adapter of its own: like launcher.backends.sky, every call that starts, reads or deletes a
service goes through one class the tests replace with a fake (tests/launcher/fake_serve.py).
`sky` is imported inside methods only.

`down` is called only by launcher.backends.ownership.down_service_if_ours, after its proof.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.backends.sky import _LineWriter


@dataclass
class Service:
    name: str
    status: str  # SkyPilot's ServiceStatus name: CONTROLLER_INIT, REPLICA_INIT, READY, NO_REPLICA, ...
    endpoint: str | None = None
    user_hash: str | None = None
    replicas: int = 0
    ready_replicas: int = 0
    policy: str | None = None
    resources: str | None = None


def _svc(record) -> Service:
    get = record.get if isinstance(record, dict) else (lambda k, _r=record: getattr(_r, k, None))
    status = get("status")
    replicas = get("replica_info") or []
    ready = [r for r in replicas if str(getattr(r.get("status"), "name", r.get("status"))) == "READY"]
    return Service(get("name"), getattr(status, "name", str(status)), get("endpoint"), get("user_hash"),
                   len(replicas), len(ready), get("policy"), get("requested_resources_str"))


class SkyServeBackend:
    """Real SkyServe. `down` is called only by ownership.down_service_if_ours, after the proof."""

    def current_user(self) -> str:
        from launcher.backends.sky import SkyBackend

        return SkyBackend().current_user()

    def up(self, task_config: dict, name: str, secrets: dict[str, str] | None = None, on_line=None) -> str | None:
        """Start the service; returns its endpoint."""
        import sky

        from launcher.backends.sky import _task

        writer = _LineWriter(on_line or (lambda _line: None))
        try:
            _name, endpoint = sky.stream_and_get(sky.serve.up(_task(task_config, secrets), service_name=name),
                                                 output_stream=writer)
        finally:
            writer.close_out()
        return endpoint

    def status(self, names: list[str] | None = None) -> list[Service]:
        import sky
        from sky import exceptions

        try:
            records = sky.get(sky.serve.status(names))
        except exceptions.ClusterNotUpError:  # no serve controller: no services
            return []
        return [_svc(r) for r in records or []]

    def tail_logs(self, name: str, target: str, replica_id: int | None, follow: bool, on_line) -> None:
        import sky

        writer = _LineWriter(on_line)
        try:
            sky.serve.tail_logs(name, target=target, replica_id=replica_id, follow=follow, output_stream=writer)
        finally:
            writer.close_out()

    def down(self, name: str) -> None:
        import sky

        sky.get(sky.serve.down(name))


_factory = SkyServeBackend


def get_serve_backend():
    """The backend commands use; tests swap `_factory` for a fake."""
    return _factory()
