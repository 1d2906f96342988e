"""Memory, time and cost of a recipe on each GPU offer; the cheapest that fits is the plan.

Why our own estimator: SkyPilot picks the cheapest *offer* for an accelerator you name, but it
cannot tell whether a 70B QLoRA fits 24 GB or how long 25k rows take. This module answers both
from the model's shape and the recipe, transparently: every term is returned (and printed by
`plan --explain`) so a wrong assumption is visible, and the assumptions live in
launcher/data/*.yaml. It imports neither torch nor sky.

Four modules along the method's seams: memory.py (the model's shape and memory per GPU),
timing.py (tokens, FLOPs, hours), candidates.py (offers, the fit rule, the plan), refusals.py
(what cannot be planned, worded), plan_data.py (Candidate and Plan).
Callers import from the module that defines a name (`from launcher.estimate.candidates import
plan`).

Memory per GPU (each term and why) is in memory.py's docstring, time in timing.py's; a candidate
costs $/h × hours, and the plan is the cheapest candidate that fits (candidates.py).

The model's shape is looked up once per plan and handed down (`shape=`): a shape from a local or
cached config.json costs a file read and a parse, and a plan builds hundreds of candidates.
"""
