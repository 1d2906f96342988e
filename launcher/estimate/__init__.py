"""Memory, time and cost of a recipe on each GPU offer; the cheapest that fits is the plan.

Why our own estimator: SkyPilot picks the cheapest *offer* for an accelerator you name, but it
cannot tell whether a 70B QLoRA fits 24 GB or how long 25k rows take. This module answers both
from the model's shape and the recipe, transparently: every term is returned (and printed by
`plan --explain`) so a wrong assumption is visible, and the assumptions live in
launcher/data/*.yaml. It imports neither torch nor sky.

Three modules along the method's seams: memory.py (the model's shape and memory per GPU),
timing.py (tokens, FLOPs, hours), candidates.py (offers, the fit rule, refusals, the plan).
This package re-exports what callers use, so `from launcher.estimate import plan` keeps working;
patch a name in the submodule that uses it (e.g. candidates.eval_memory), not here.

Memory per GPU (each term and why) is in memory.py's docstring, time in timing.py's; a candidate
costs $/h × hours, and the plan is the cheapest candidate that fits (candidates.py).

The model's shape is looked up once per plan and handed down (`shape=`): a shape from a local or
cached config.json costs a file read and a parse, and a plan builds hundreds of candidates.
"""

from launcher.estimate.candidates import (
    CLOUD_LABELS,
    Candidate,
    Fit,
    Plan,
    fit_verdict,
    plan,
    refuse_unsold,
    refuse_unsupported,
    requested_gpu,
)
from launcher.estimate.memory import (
    DEFAULT_EXPERT_MODULES,
    GB,
    Memory,
    UnknownModel,
    _shape,
    attention_flops_per_token,
    eval_memory,
    logits_bytes,
    lora_params,
    memory,
    param_count,
    quantized_split,
    shape_notes,
)
from launcher.estimate.timing import Timing, data_tokens, eval_hours, eval_workload, timing

__all__ = [
    "CLOUD_LABELS", "DEFAULT_EXPERT_MODULES", "GB", "Candidate", "Fit", "Memory", "Plan", "Timing", "UnknownModel",
    "_shape", "attention_flops_per_token", "data_tokens", "eval_hours", "eval_memory", "eval_workload",
    "fit_verdict", "logits_bytes", "lora_params", "memory", "param_count", "plan", "quantized_split",
    "refuse_unsold", "refuse_unsupported", "requested_gpu", "shape_notes", "timing",
]
