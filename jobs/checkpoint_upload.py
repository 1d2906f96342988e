"""Background checkpoint uploads: each node's sha256 manifest and bucket copy of a step run on a
thread of the node's local rank 0, outside every collective.

Why: hashing and uploading an 8B full checkpoint (~130 GB) takes many minutes. Done between two
barriers, every other rank sat in the second barrier the whole time and NCCL's watchdog could
kill the job. Now the collective part of a save ends once every node has its step-N folder; a
thread then writes this node's manifest (the local checkpoint counts from then on), uploads the
node's files with the manifest last (a bucket step without it is incomplete and resume skips it)
and prunes. Ranks agree about uploads in flight through short polled collectives (`any_busy`,
`wait_all`), never by sitting in one long barrier. One upload at a time per node: the next save
is skipped (timer saves) or waits (the final save, a stop) while one is in flight, so a prune
never meets an older step still uploading.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from jobs import checkpoint as ckpt
from jobs.checkpoint_manifest import Topology, write_manifest
from jobs.collectives import gather, local_rank, log, rank
from sftcore import contract

POLL_S = 1.0  # how often ranks compare notes while waiting for uploads (each poll is one short gather)


class Uploader:
    """This process's share of the checkpoint uploads (work only on a node's local rank 0)."""

    def __init__(self, ckpt_root: Path, prefix: str | None, keep: int, topo: Topology) -> None:
        self.ckpt_root = ckpt_root
        self.prefix = prefix
        self.keep = keep
        self.topo = topo
        self.step: int | None = None  # the last step handed over
        self.failed: list[int] = []  # steps whose manifest or upload failed (warned about)
        self._thread: threading.Thread | None = None

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, step: int) -> None:
        """Seal step-N in the background: manifest, upload (manifest last), prune."""
        self.step = step
        if local_rank() != 0:
            return
        self.join()  # callers wait_all first; this only guards against a second thread
        self._thread = threading.Thread(target=self._seal, args=(step,), name=f"ckpt-upload-{step}", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def _seal(self, step: int) -> None:
        dest = self.ckpt_root / contract.step_dir(step)
        part = f" (node {self.topo.node} of {self.topo.nodes})" if self.topo.nodes > 1 else ""
        t0 = time.time()
        try:
            write_manifest(dest, step, self.topo)
        except Exception as exc:  # noqa: BLE001 - a local disk error loses this checkpoint, not the run
            self.failed.append(step)
            ckpt.warn(f"{dest}: cannot write its manifest ({exc}); this checkpoint stays incomplete")
            return
        if self.prefix:
            try:
                where = ckpt.upload(dest, self.prefix, self.topo)
                print(f"checkpoint step {step}{part} uploaded to {where} in {time.time() - t0:.1f} s", flush=True)
            except Exception as exc:  # noqa: BLE001 - any storage error: the bucket copy stays incomplete
                self.failed.append(step)
                from sftcore.errors import one_line

                ckpt.warn(f"checkpoint step {step}{part}: upload to {self.prefix} failed ({one_line(exc)}); "
                          "its bucket copy has no manifest, so resume ignores it")
        self._prune()

    def _prune(self) -> None:
        # The bucket side on one process only; a step other nodes still upload is newer than
        # every complete one, which prune never removes.
        try:
            ckpt.prune(self.ckpt_root, self.keep, self.prefix if rank() == 0 else None, self.topo)
        except Exception as exc:  # noqa: BLE001 - pruning is housekeeping
            ckpt.warn(f"pruning checkpoints failed ({exc})")

    # -- collectives: every rank calls these at the same point ----------------------------------
    def any_busy(self) -> bool:
        """Whether any node still seals a checkpoint (one short gather)."""
        return any(gather(self.busy()))

    def wait_all(self) -> None:
        """Until every node's upload is done, polled: each gather returns within POLL_S, so no rank
        waits inside a collective for a long upload (NCCL's watchdog)."""
        if not self.any_busy():
            return
        t0 = time.time()
        log(f"waiting for the upload of checkpoint step {self.step} to finish")
        while True:
            time.sleep(POLL_S)
            if not self.any_busy():
                break
        log(f"checkpoint step {self.step} sealed after {time.time() - t0:.1f} s more")

    def finish(self) -> None:
        """End of training: every upload done before the process group goes (collective). With
        several nodes the bucket prune runs once more, now that every node's part is there."""
        self.wait_all()
        if self.prefix and rank() == 0 and self.topo.nodes > 1:
            self._prune()
