"""Dataset loader for the tiny synthetic task's lm-eval configs.

Why a function instead of `dataset_path: json` + `data_files`: `datasets` resolves relative
data_files against the current directory, so a YAML with a relative path only works when the
harness is started from the repo root. This loader finds eval.jsonl from this file's location
(repo checkout or editable install), or from $SFTLAUNCH_TINY_EVAL when the tasks are copied
somewhere else (e.g. mounted into a container without the recipes/ tree).
"""

from __future__ import annotations

from pathlib import Path

from sftcore.contract import Env, JobEnv

ENV = Env.TINY_EVAL
_DEFAULT = Path(__file__).resolve().parents[2] / "recipes" / "data" / "tiny-task" / "eval.jsonl"


def eval_file() -> Path:
    configured = JobEnv.from_env().tiny_eval
    path = Path(configured) if configured else _DEFAULT
    if not path.is_file():
        raise FileNotFoundError(
            f"tiny task eval data not found at {path}; set ${ENV} to recipes/data/tiny-task/eval.jsonl"
        )
    return path


def load_tiny_task(**_kwargs):
    """lm-eval `custom_dataset` hook: the eval rows as a DatasetDict with one `test` split."""
    import datasets

    return datasets.DatasetDict({"test": datasets.load_dataset("json", data_files=str(eval_file()), split="train")})
