"""What `--model` names, resolved before any weights load: a model directory, a PEFT adapter
directory (its base from adapter_config.json or sftlaunch.json), the tiny model id, or a Hub
model or adapter; plus the run's published model fetched from the bucket for an eval-only task,
and the weights' size (for choosing data or model parallel).

The `python -m jobs eval` entry is jobs/evaluate.py; callers import these names from here.

Why resolve first: a wrong id or a missing base is one line and exit 2 (EvalInputError), not a
loader traceback. Standard library only at import (huggingface_hub and fsspec load when used).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from sftcore import contract
from sftcore.errors import UserError


class EvalInputError(UserError):
    """Bad input: printed as one line, exit 2."""


@dataclass
class ModelSpec:
    pretrained: str  # what HFLM loads (local dir or hub id)
    revision: str | None
    peft: str | None  # adapter dir, if any
    tokenizer: str
    model_id: str  # what the results name the model as
    base_model: str | None
    meta: dict  # sftlaunch.json of a trained model, if any


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or os.sep != "/" and os.sep in ref


TINY_MODEL_ID = contract.TINY_MODEL_ID


def _tiny_dir() -> str:
    from jobs.tiny import ensure_tiny

    return str(ensure_tiny())


def _resolve_base(base: str, adapter_dir: Path) -> str:
    if base == TINY_MODEL_ID:
        return _tiny_dir()
    if _looks_like_path(base) or Path(base).expanduser().exists():
        path = Path(base).expanduser()
        if not path.is_absolute():
            path = (adapter_dir / path) if (adapter_dir / path).exists() else path
        if not (path / "config.json").is_file():
            raise EvalInputError(
                f"{adapter_dir / 'adapter_config.json'}: base_model_name_or_path {base!r} is not a model "
                "directory (no config.json); point it at the base model or pass the merged model"
            )
        return str(path)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(base, "config.json"), str):
            raise EvalInputError(
                f"{adapter_dir / 'adapter_config.json'}: base model {base!r} is not in the Hugging Face cache "
                "and HF_HUB_OFFLINE=1; download it first or unset HF_HUB_OFFLINE"
            )
    return base


def resolve_model(ref: str, revision: str | None = None) -> ModelSpec:
    """Model dir, adapter dir (base from adapter_config.json), the tiny id, or a hub id."""
    if ref == TINY_MODEL_ID:
        path = _tiny_dir()
        return ModelSpec(path, None, None, path, TINY_MODEL_ID, None, {})
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise EvalInputError(f"--model {ref}: not a directory; give a model or adapter directory or a hub id")
        meta = {}
        if (path / contract.RUN_META).is_file():
            meta = json.loads((path / contract.RUN_META).read_text())
        has_tok = (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file()
        if (path / "adapter_config.json").is_file():
            cfg = json.loads((path / "adapter_config.json").read_text())
            base = cfg.get("base_model_name_or_path")
            if not base:
                raise EvalInputError(f"{path / 'adapter_config.json'}: no base_model_name_or_path; cannot find the base model")
            try:
                base_path = _resolve_base(base, path)
            except EvalInputError:
                # Trained elsewhere: adapter_config.json holds the trainer's local path of the base;
                # sftlaunch.json names it portably (a hub id or the tiny id).
                if not meta.get("base_model") or meta["base_model"] == base:
                    raise
                base_path = _resolve_base(meta["base_model"], path)
            return ModelSpec(base_path, None, str(path), str(path) if has_tok else base_path,
                             meta.get("run_id") or str(path), base, meta)
        if not (path / "config.json").is_file():
            raise EvalInputError(f"--model {ref}: no config.json or adapter_config.json in it; not a model directory")
        return ModelSpec(str(path), None, None, str(path), meta.get("run_id") or str(path), meta.get("base_model"), meta)
    if _looks_like_path(ref):
        raise EvalInputError(f"--model {ref}: no such directory; give a model/adapter directory or a hub id (org/name)")
    return _resolve_hub(ref, revision)


def hub_missing(ref: str) -> str:
    return f"model {ref}: not found on the Hub or not reachable offline; check the id, revision and HF_TOKEN"


def _resolve_hub(ref: str, revision: str | None) -> ModelSpec:
    """A hub model, or a hub PEFT adapter (its base from adapter_config.json), checked before any
    weights load so a wrong id is one line, not a loader traceback."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    try:
        hf_hub_download(ref, "config.json", revision=revision)
        return ModelSpec(ref, revision or "main", None, ref, ref, None, {})
    except RemoteEntryNotFoundError:  # the repo exists without a config.json: an adapter?
        try:
            adapter_cfg = hf_hub_download(ref, "adapter_config.json", revision=revision)
        except Exception:  # noqa: BLE001 - any failure here means "not a usable model"
            adapter_cfg = None
    except LocalEntryNotFoundError:  # offline or unreachable: only the cache can answer
        cached = try_to_load_from_cache(ref, "adapter_config.json", revision=revision)
        adapter_cfg = cached if isinstance(cached, str) else None
    except Exception:  # noqa: BLE001 - unknown repo, gated without a token, bad revision, bad id
        adapter_cfg = None
    if adapter_cfg is None:
        raise EvalInputError(hub_missing(ref))
    base = json.loads(Path(adapter_cfg).read_text()).get("base_model_name_or_path")
    if not base:
        raise EvalInputError(f"model {ref}: its adapter_config.json names no base_model_name_or_path")
    base_path = _resolve_base(base, Path(adapter_cfg).parent)
    if base_path == base:  # a hub base: it must be there too
        base_path = _resolve_hub(base, None).pretrained
    return ModelSpec(base_path, None, ref, base_path, ref, base, {})


def fetch_from_bucket(model: str, bucket: str | None, run_id: str | None) -> None:
    """An eval-only cloud task starts on a fresh disk: bring the run's published model
    (`<bucket>/<run id>/model/`, the recipe's bucket) to the --model path the job was given."""
    if not bucket or not run_id or not _looks_like_path(model) or Path(model).exists():
        return
    from sftcore import store

    src = contract.RunLayout.in_bucket(bucket, run_id).model
    try:
        store.get_tree(src, Path(model))
    except FileNotFoundError:
        raise EvalInputError(f"--model {model}: not on this machine and not in {src}; "
                             "publish the run first (python -m jobs publish)") from None


_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
          "I8": 1, "U8": 1, "BOOL": 1}


def _weights_bytes_in_dir(path: Path) -> int | None:
    files = list(path.glob("*.safetensors")) or list(path.glob("pytorch_model*.bin"))
    return sum(f.stat().st_size for f in files) or None


def model_bytes(ref: str, revision: str | None = None) -> int | None:
    """Bytes of the model's weights as stored (an adapter: its base's), None when unknown.
    Reads only file sizes or the Hub's safetensors metadata, never the weights."""
    path = Path(ref).expanduser()
    if ref == TINY_MODEL_ID:
        return _weights_bytes_in_dir(Path(_tiny_dir()))
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            try:
                base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
            except ValueError:
                return None
            return model_bytes(base) if base else None
        return _weights_bytes_in_dir(path)
    try:
        from huggingface_hub import get_safetensors_metadata

        meta = get_safetensors_metadata(ref, revision=revision)
        return sum(n * _BYTES.get(dtype, 2) for dtype, n in meta.parameter_count.items())
    except Exception:  # noqa: BLE001 - offline, not safetensors, unknown: size unknown
        return None
