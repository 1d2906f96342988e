"""What a plan is made of: a Candidate (one offer with its memory, time and cost) and the Plan
(every candidate, the chosen one, and why nothing fits when nothing does): what `plan --json`
prints, what render and up launch from.

Why apart from candidates.py: the planner (candidates.py), its refusals (refusals.py) and the
launch order (launcher/failover.py) all read these; none of them needs the others to do so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from launcher.estimate.memory import Memory
from launcher.estimate.timing import Timing


@dataclass
class Candidate:
    cloud: str
    region: str | None
    gpu: str
    gpus_per_node: int
    nodes: int
    spot: bool
    usd_per_hour: float
    mem_needed_gb: float  # training (or, for the eval workload, eval) memory per GPU
    mem_available_gb: float
    fits: bool
    borderline: bool
    eta_hours: float
    total_usd: float
    memory: Memory | None = None
    timing: Timing | None = None
    why_not: str | None = None
    eval_memory: Memory | None = None  # the post-training eval on this machine, per GPU
    borderline_why: str | None = None
    assumed: bool = False  # an explicit GPU on Kubernetes nobody declared: assumed to exist
    blocked_by_eval: bool = False  # training fits, the post-training eval does not
    usd_per_hour_max: float | None = None  # the same offer in its dearest region
    regions: int = 1  # how many regions sell it (render leaves the region free)
    # $/h of this candidate (all its GPUs) in every region that sells it, the pinned ones only
    # when resources.regions pins them; {} when unknown (Kubernetes). The job's budget guard
    # charges the price of the region it runs in (render's rate table, jobs/rate.py).
    region_usd_per_hour: dict[str, float] = field(default_factory=dict)
    gradient_checkpointing: bool = True  # what the job does here (the plan's choice for `auto`)
    checkpointing_why: str = ""  # why, in words, for `plan --explain`

    @property
    def accelerators(self) -> str:
        return f"{self.gpu}:{self.gpus_per_node}"

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def eval_mem_gb(self) -> float | None:
        return self.eval_memory.total if self.eval_memory else None

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("cloud", "region", "gpu", "gpus_per_node", "nodes", "spot", "usd_per_hour",
                                             "mem_needed_gb", "eval_mem_gb", "mem_available_gb", "fits", "borderline",
                                             "borderline_why", "eta_hours", "total_usd", "why_not", "assumed",
                                             "blocked_by_eval", "usd_per_hour_max", "regions",
                                             "region_usd_per_hour", "gradient_checkpointing", "checkpointing_why")}
        out["accelerators"] = self.accelerators
        if self.memory:
            out["memory"] = self.memory.as_dict()
        if self.eval_memory:
            out["eval_memory"] = self.eval_memory.as_dict()
        if self.timing:
            out["timing"] = {"tokens": self.timing.tokens, "flops": self.timing.flops, "train_hours": self.timing.train_hours,
                             "overhead_hours": self.timing.overhead_hours, "eval_hours": self.timing.eval_hours,
                             **self.timing.terms}
        return out


@dataclass
class Plan:
    candidates: list[Candidate]
    chosen: Candidate | None
    reason: str | None
    model: str
    workload: str = "train"
    notes: list[str] = field(default_factory=list)  # what the user should know (assumptions, missing inventory)
    reason_field: str = "resources.gpu"  # the recipe field `reason` is about

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "workload": self.workload,
                "chosen": self.chosen.as_dict() if self.chosen else None, "reason": self.reason,
                "notes": self.notes, "candidates": [c.as_dict() for c in self.candidates]}
