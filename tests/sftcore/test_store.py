"""sftcore.store: every bucket copy of the job, and every read of the launcher, goes through one module, which applies the S3 endpoint
override. The publish and eval copies run here against a moto S3 server that is reachable only
through the override (the SDK's own AWS_ENDPOINT_URL points at a closed port), so a copy that
opened the bucket with a bare fsspec call would fail."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from sftcore import store

REPO = Path(__file__).resolve().parents[2]
RUN_ID = "sftl-store-0001"


def _fsspec_uses(path: Path) -> list[int]:
    """Lines of `import fsspec`, `from fsspec... import`, or a call through a name `fsspec`."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "fsspec" for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "fsspec":
            lines.append(node.lineno)
        elif isinstance(node, ast.Name) and node.id == "fsspec":
            lines.append(node.lineno)
    return lines


def test_only_the_store_opens_buckets():
    """Job and launcher alike: every bucket is opened through sftcore.store."""
    found = [f"{p.relative_to(REPO)}:{line}" for pkg in ("jobs", "launcher", "sftcore")
             for p in sorted((REPO / pkg).rglob("*.py"))
             if p != REPO / "sftcore" / "store.py" for line in _fsspec_uses(p)]
    assert not found, "open buckets through sftcore.store:\n" + "\n".join(found)


def test_the_fsspec_scan_is_not_vacuous(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import fsspec\nfrom fsspec.core import url_to_fs\nx = fsspec.open('s3://b/k')\ny = 'fsspec'\n")
    assert _fsspec_uses(bad) == [1, 2, 3]


def test_storage_options_prefer_fsspecs_variable_and_only_for_s3(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws-sdk:1")
    assert store.storage_options("s3://b/x") == {"client_kwargs": {"endpoint_url": "http://aws-sdk:1"}}
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", "http://fsspec:2")
    assert store.storage_options("s3://b/x") == {"client_kwargs": {"endpoint_url": "http://fsspec:2"}}
    assert store.storage_options("gs://b/x") == {} and store.storage_options("/tmp/b") == {}


def test_local_paths_round_trip(tmp_path):
    uri = store.join(str(tmp_path / "bucket"), RUN_ID, "eval", "results.json")
    store.write_text(uri, "{}\n")
    assert store.exists(uri) and store.read_text(uri) == "{}\n"
    store.put_files([(Path(uri), "model/a/b.json")], str(tmp_path / "copy"))
    assert store.get_tree(str(tmp_path / "copy" / "model"), tmp_path / "got") == 1
    assert (tmp_path / "got" / "a" / "b.json").read_text() == "{}\n"
    with pytest.raises(FileNotFoundError):
        store.get_tree(str(tmp_path / "nothing"), tmp_path / "got2")


@pytest.fixture()
def s3_by_override(s3, monkeypatch):
    """The moto bucket `ckpts`, reachable only through FSSPEC_S3_ENDPOINT_URL; the SDK default
    (AWS_ENDPOINT_URL, which botocore reads itself) points at a closed port and fails fast."""
    import os

    import s3fs

    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    yield f"{s3}/runs"
    s3fs.S3FileSystem.clear_instance_cache()


def test_publish_and_eval_reach_the_bucket_through_the_endpoint_override(tmp_path, s3_by_override):
    from jobs import evaluate, publish
    from jobs.eval_model import fetch_from_bucket

    src = tmp_path / "publish"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "llama"}')
    (src / "results.json").write_text('{"average": 1}')
    (src / "README.md").write_text("# card\n")
    dest = publish.copy_to_bucket(src, s3_by_override, RUN_ID)
    assert dest == f"{s3_by_override}/{RUN_ID}"
    assert store.read_text(f"{dest}/model/config.json") == '{"model_type": "llama"}'
    assert store.read_text(f"{dest}/results.json") == '{"average": 1}'

    # A fresh eval disk brings the published model back, and the scores go to eval/ and eval-base/.
    target = tmp_path / "fresh" / "final"
    fetch_from_bucket(str(target), s3_by_override, RUN_ID)
    assert (target / "config.json").read_text() == '{"model_type": "llama"}'
    evaluate._write({"run_id": RUN_ID, "average": 0.5}, tmp_path / "eval", s3_by_override)
    evaluate._write({"run_id": None, "average": 0.25}, tmp_path / "eval-base", s3_by_override, base=True, run_id=RUN_ID)
    assert json.loads(store.read_text(f"{dest}/eval/results.json"))["average"] == 0.5
    assert json.loads(store.read_text(f"{dest}/eval-base/results.json"))["average"] == 0.25
