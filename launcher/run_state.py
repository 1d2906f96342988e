"""The states a run moves through, and which of them are final, billing or active: decided here once.

Why one enum: the registry, the lifecycle (refresh, budget guard), the runners and teardown all
ask the same questions of a run's state (has it ended? are GPUs held? should it be refreshed?).
Each question is answered by one property below, so a state added or moved changes every reader.

Why a `str` enum: the run registry stores the state as its plain name (`runs.state`,
`states.state`) and `status --json` prints it; a member is equal to, hashes as, prints and
serialises as that string, so databases written by any version read back unchanged.
"""

from __future__ import annotations

import enum


class RunState(str, enum.Enum):
    PENDING = "pending"  # recorded, nothing started yet
    LAUNCHING = "launching"  # provisioning or starting: GPUs may already be billed
    RUNNING = "running"
    RECOVERING = "recovering"  # a managed spot job preempted, waiting for new capacity
    STOPPING = "stopping"  # asked to stop: the job runs on until its checkpoint is saved
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    STOPPED = "stopped"  # stopped early (budget) after a checkpoint, or the cluster stopped

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__  # f"{state}" and table padding print the plain name

    @property
    def is_final(self) -> bool:
        """The run has ended; a final state is never left (a late refresh cannot revive it)."""
        return self in _FINAL

    @property
    def is_billing(self) -> bool:
        """GPUs are (likely) held, so running time and cost accrue. `stopping` bills: the job
        runs on until its checkpoint is saved or the cluster is downed. `recovering` does not:
        the preempted machine is gone while SkyPilot looks for capacity (a managed job's own
        running time, `job_seconds`, covers what the state history misses)."""
        return self in _BILLING

    @property
    def is_active(self) -> bool:
        """Not ended: refreshed by `status`, watched by the budget guard, torn down by teardown."""
        return self not in _FINAL

    @property
    def is_starting(self) -> bool:
        """Recorded but not yet seen running: a missing process or cluster may still be coming."""
        return self in (RunState.PENDING, RunState.LAUNCHING)

    @classmethod
    def final(cls) -> frozenset[RunState]:
        return _FINAL

    @classmethod
    def billing(cls) -> frozenset[RunState]:
        return _BILLING

    @classmethod
    def active(cls) -> frozenset[RunState]:
        return frozenset(s for s in cls if s not in _FINAL)


_FINAL = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.STOPPED})
_BILLING = frozenset({RunState.LAUNCHING, RunState.RUNNING, RunState.STOPPING})
# A stored name to its member by a dict lookup: Enum's own call is slow over 1,000 rows.
BY_NAME = {s.value: s for s in RunState}
