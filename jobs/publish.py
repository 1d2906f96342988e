"""`python -m jobs publish`: assemble the run's deliverable (model or adapter, results, model card,
loss plot), copy it to `<bucket>/<run id>/`, and upload it to the Hugging Face Hub.

Why the merge happens on a bf16 base: merging LoRA deltas into 4-bit NF4 weights would round them
away (and bitsandbytes cannot save a merged 4-bit model faithfully), so a QLoRA adapter is merged
into the full-precision base loaded fresh from its checkpoint — never into the quantized copy
used for training.

Why the Hub refuses an existing repo: a run re-published by mistake must not replace someone's
main branch; --force says that is intended, and then the repo ends up holding exactly this run's
files (files left from an earlier upload are deleted in the same commit). Uploads go through `upload_folder`: each LFS part is
retried by huggingface_hub's backoff, LFS objects already on the Hub are skipped on a retry (the
batch endpoint returns no upload action for them), and the whole commit is retried here. Folders
larger than LARGE_FOLDER_BYTES (merged 70B weights) go through `upload_large_folder`, which
records per-file progress in the folder and resumes after the job is killed and restarted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from sftcore import contract, store
from sftcore.contract import Env, JobEnv, RunLayout
from sftcore.errors import UserError, job_exit

HUB_ATTEMPTS = 3
CARD = "README.md"  # the model card, in the publish dir and beside the bucket copy
# Above this many bytes the upload goes through upload_large_folder: several commits, and its
# progress is kept in <folder>/.cache/huggingface so a killed job resumes where it stopped.
LARGE_FOLDER_BYTES = 8 * 2**30  # default; Env.LARGE_UPLOAD_BYTES (JobEnv.large_upload_bytes) overrides


class PublishInputError(UserError):
    """Bad input: one line, exit 2."""


def merge_adapter(adapter_dir: Path, out: Path, revision: str | None = None, trust_remote_code: bool = False) -> Path:
    """Adapter + bf16 base → a standalone model in `out`. `revision` and `trust_remote_code` are
    the recipe's model settings: the base must be the exact weights the adapter was trained on."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jobs.eval_model import EvalInputError, _resolve_base

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    meta_path = adapter_dir / contract.RUN_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    try:
        try:
            base = _resolve_base(cfg["base_model_name_or_path"], adapter_dir)
        except EvalInputError:
            # Trained on another machine: adapter_config.json names its local path of the base.
            if not meta.get("base_model") or meta["base_model"] == cfg["base_model_name_or_path"]:
                raise
            base = _resolve_base(meta["base_model"], adapter_dir)
    except EvalInputError as exc:
        raise PublishInputError(str(exc)) from None
    revision = revision or meta.get("base_revision")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16, revision=revision,  # never 4-bit
                                                 trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    own_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    AutoTokenizer.from_pretrained(str(adapter_dir) if own_tokenizer else base, revision=None if own_tokenizer else revision,
                                  trust_remote_code=trust_remote_code).save_pretrained(out)
    if meta:
        meta["merged_from_adapter"] = True
        (out / contract.RUN_META).write_text(json.dumps(meta, indent=2))
    return out


def write_chat_template(folder: Path, template: str) -> None:
    """Make the published tokenizer carry the template the model was trained with, so
    `apply_chat_template` (and any server that honours it) gives the training ids. Training's
    tokenizer already carries it (jobs.model.load_tokenizer); this covers a run trained before that."""
    if template == "tokenizer" or not (folder / "tokenizer_config.json").is_file():
        return
    from transformers import AutoTokenizer

    from jobs.templates import chat_template

    tok = AutoTokenizer.from_pretrained(str(folder))
    wanted = chat_template(template, tok)
    if tok.chat_template != wanted:
        tok.chat_template = wanted
        tok.save_pretrained(str(folder))


def _load_results(run_dir: Path) -> list[dict]:
    out = []
    for base in (True, False):  # the base model's row first
        p = RunLayout(run_dir).eval_results(base)
        if p.is_file():
            out.append(json.loads(p.read_text()))
    return out


def assemble(recipe, run_dir: Path, out: Path, license: str = "other") -> Path:
    """run_dir/publish/ laid out as the Hub repo: the model (weights or adapter) and tokenizer at
    the root, README.md (the card), results.json, training_loss.png."""
    from jobs.modelcard import LOSS_PLOT, plot_loss, read_metrics, render_card

    layout = RunLayout(run_dir)
    final = layout.final
    if not final.is_dir():
        raise PublishInputError(f"{final}: no trained model; run `python -m jobs train` first")
    if out.exists():
        shutil.rmtree(out)
    is_adapter = (final / "adapter_config.json").is_file()
    if is_adapter and recipe.output.merge_adapter:
        merge_adapter(final, out, revision=recipe.model.revision, trust_remote_code=recipe.model.trust_remote_code)
        is_adapter = False
    else:
        shutil.copytree(final, out, dirs_exist_ok=True)
    meta = json.loads(layout.final_meta.read_text()) if layout.final_meta.is_file() else {}
    write_chat_template(out, meta.get("template") or recipe.data.template)
    results = _load_results(run_dir)
    if results:
        RunLayout(out).results.write_text(json.dumps(results[-1], indent=2, sort_keys=True) + "\n")
    metrics = read_metrics(layout.metrics)
    has_plot = plot_loss(metrics, out / LOSS_PLOT) is not None
    job = JobEnv.from_env()
    usd = (meta.get("offer") or {}).get("usd_per_hour") or job.usd_per_hour
    card = render_card(
        recipe=recipe.resolved_dict(), meta=meta, results=results, metrics=metrics,
        repo_id=recipe.output.hub_repo or f"{recipe.name}", is_adapter=is_adapter,
        hardware=job.hardware or ("local CPU" if meta.get("device") == "cpu" else None),
        usd_per_hour=float(usd) if usd else None, has_plot=has_plot, license=license,
    )
    (out / CARD).write_text(card)
    return out


def copy_to_bucket(src: Path, bucket: str, run_id: str) -> str:
    """Copy the publish dir to `<bucket>/<run id>/model/`, with results.json and README.md also at
    `<bucket>/<run id>/` where status and eval look (s3://, gs://, a local path: sftcore.store)."""
    dest = RunLayout.in_bucket(bucket, run_id)
    uploads = [(p, f"{contract.MODEL_DIR}/{p.relative_to(src).as_posix()}") for p in sorted(src.rglob("*")) if p.is_file()]
    uploads += [(src / name, name) for name in (contract.RESULTS, CARD) if (src / name).is_file()]
    store.put_files(uploads, str(dest.root))
    return str(dest.root)


def hub_upload(folder: Path, repo_id: str, force: bool, private: bool = True,
               endpoint: str | None = None, attempts: int = HUB_ATTEMPTS, wait_s: float = 2.0) -> str:
    """Create the repo (private unless told otherwise) and commit `folder` to main."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        raise PublishInputError(f"output.hub_repo {repo_id}: HF_TOKEN is not set; export a write token or drop hub_repo")
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        exists = api.repo_exists(repo_id)
    except RepositoryNotFoundError:
        exists = False
    replace = False
    if exists:
        refs = api.list_repo_refs(repo_id)
        has_main = any(b.name == "main" for b in refs.branches)
        if has_main and not force:
            raise PublishInputError(
                f"output.hub_repo {repo_id}: the repo exists and has a main branch; "
                "publish to a new repo or pass --force to overwrite it")
        replace = has_main
    else:
        api.create_repo(repo_id, private=private, exist_ok=True)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    if size > (JobEnv.from_env().large_upload_bytes or LARGE_FOLDER_BYTES):
        api.upload_large_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision="main",
                                private=private, print_report=False)
        if replace:
            _delete_stale(api, repo_id, folder)
        return f"{api.endpoint}/{repo_id} (upload_large_folder, {size / 2**30:.1f} GiB)"
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            # --force on an existing repo: "*" deletes every remote file this commit does not
            # upload (huggingface_hub keeps .gitattributes), so no file of an earlier model stays.
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision="main",
                                     commit_message="sftlaunch publish", delete_patterns="*" if replace else None)
            return str(getattr(info, "commit_url", None) or info)
        except HfHubHTTPError as exc:
            last = exc
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                raise
            if attempt < attempts:
                print(f"hub upload attempt {attempt} failed ({exc.__class__.__name__}); retrying", file=sys.stderr)
                time.sleep(wait_s * attempt)
    assert last is not None
    raise last


def _delete_stale(api, repo_id: str, folder: Path) -> None:
    """After upload_large_folder (which cannot delete): remove the remote files not in `folder`."""
    from huggingface_hub import CommitOperationDelete

    local = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    stale = [f for f in api.list_repo_files(repo_id, revision="main") if f not in local and f != ".gitattributes"]
    if stale:
        api.create_commit(repo_id=repo_id, operations=[CommitOperationDelete(path_in_repo=f) for f in stale],
                          commit_message="sftlaunch publish: remove files of the previous upload", revision="main")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs publish", description="Model card, bucket copy and Hub upload of a run.")
    job = JobEnv.from_env()
    p.add_argument("--recipe", default=job.recipe, help="the run's recipe")
    p.add_argument("--run-dir", default=job.out, help="the train output dir")
    p.add_argument("--run-id", default=job.run_id)
    p.add_argument("--force", action="store_true", help="overwrite an existing Hub repo's main branch")
    p.add_argument("--public", action="store_true", help="create the Hub repo public (default private)")
    p.add_argument("--license", default="other", help="license in the card's metadata")
    p.add_argument("--no-hub", action="store_true", help="skip the Hub upload")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return 2 if exc.code else 0
    try:
        if not args.recipe or not args.run_dir:
            raise PublishInputError(f"give --recipe R and --run-dir DIR (or {Env.RECIPE}/{Env.OUT})")
        from sftcore.errors import RecipeError
        from sftcore.recipe import load_recipe

        try:
            recipe = load_recipe(args.recipe)
        except RecipeError as exc:
            raise PublishInputError(exc.problems[0]) from None
        run_dir = Path(args.run_dir)
        meta_path = RunLayout(run_dir).final_meta
        run_id = args.run_id or (json.loads(meta_path.read_text()).get("run_id") if meta_path.is_file() else None) or run_dir.name
        out = assemble(recipe, run_dir, RunLayout(run_dir).publish, license=args.license)
        print(f"publish dir: {out}")
        if bucket := recipe.output.bucket:
            print(f"bucket: {copy_to_bucket(out, bucket, run_id)}")
        if recipe.output.hub_repo and not args.no_hub:
            print(f"hub: {hub_upload(out, recipe.output.hub_repo, args.force, private=not args.public)}")
    except PublishInputError as exc:
        return job_exit(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
