"""The recipe: one YAML file that says what to train, on what data, where, and where results go.

Why a package rather than a pydantic model: users need *every* problem at once, each pointing at
the line they must edit (`file:line: field.path: message`), with a hint where one helps. So the
YAML is composed into nodes first (compose: bounded, syntax errors worded), turned into plain data
keeping line numbers and catching duplicate keys (loader), validated by pydantic (schema: shape
and types) and by the cross-field rules (rules: rules that span fields), and every error is
worded for a user (messages) and mapped back to the line of the offending key. input holds the
checks on what is read at all (file size and kind, control characters, numbers, data paths).

Callers import from here; the names below are the package's public surface.
Light imports only: this runs on `sftlaunch validate` and must not pull torch or sky.
"""

from sftcore.recipe.compose import MAX_ALIAS_VALUES, MAX_DEPTH, MAX_NODES, REWORD_BYTES
from sftcore.recipe.loader import load_recipe, recipe_from_dict
from sftcore.recipe.messages import MAX_MESSAGE, MAX_PROBLEMS
from sftcore.recipe.rules import MAX_SOURCES, looks_local
from sftcore.recipe.schema import (
    BUCKET_FORMS,
    CLOUD_BUCKET_RE,
    DEEPSPEED,
    EVAL_PRESETS,
    FORMATS,
    GPU_RE,
    MAX_GPUS_PER_NODE,
    METHODS,
    NAME_MAX,
    NAME_RE,
    OPTIMIZERS,
    RUN_ID_PREFIX,
    RUN_ID_SUFFIX_LEN,
    SCHEDULERS,
    SEED_MAX,
    TEMPLATES,
    WEEK_MINUTES,
    DataSource,
    DataSpec,
    EvalSpec,
    LoraSpec,
    ModelSpec,
    OutputSpec,
    QuantizationSpec,
    Recipe,
    ResourcesSpec,
    TrainSpec,
    gpu_count_problem,
)

__all__ = [
    "BUCKET_FORMS", "CLOUD_BUCKET_RE", "DEEPSPEED", "EVAL_PRESETS", "FORMATS", "GPU_RE", "MAX_ALIAS_VALUES",
    "MAX_DEPTH", "MAX_GPUS_PER_NODE", "MAX_MESSAGE", "MAX_NODES", "MAX_PROBLEMS", "MAX_SOURCES", "METHODS",
    "NAME_MAX", "NAME_RE", "OPTIMIZERS", "REWORD_BYTES", "RUN_ID_PREFIX", "RUN_ID_SUFFIX_LEN", "SCHEDULERS",
    "SEED_MAX", "TEMPLATES", "WEEK_MINUTES", "DataSource", "DataSpec", "EvalSpec", "LoraSpec", "ModelSpec",
    "OutputSpec", "QuantizationSpec", "Recipe", "ResourcesSpec", "TrainSpec", "gpu_count_problem",
    "load_recipe", "looks_local", "recipe_from_dict",
]
