"""`python -m jobs ...`: one mapping from every job error class to its exit code and stderr line."""

from __future__ import annotations

import pytest

from jobs import __main__ as jobs_main
from sftcore.errors import JobFailed, UserError, job_exit


def _classes():
    from jobs.dist import RendezvousTimeout
    from jobs.evaluate import DatasetUnavailable, EvalInputError
    from jobs.generate import GenerateInputError
    from jobs.publish import PublishInputError

    return [(EvalInputError, 2), (GenerateInputError, 2), (PublishInputError, 2),
            (DatasetUnavailable, 1), (RendezvousTimeout, 1)]


@pytest.mark.parametrize("index", range(5))
def test_every_job_error_maps_through_one_place(index, capsys):
    cls, code = _classes()[index]
    assert issubclass(cls, UserError if code == 2 else JobFailed)
    assert job_exit(cls("the reason")) == code
    assert capsys.readouterr().err == ("error" if code == 2 else "failed") + ": the reason\n"


def test_python_m_jobs_uses_the_mapping(monkeypatch, capsys):
    """An error a job's own main does not catch still leaves as one line with its exit code."""
    import jobs.sync

    def boom(_argv):
        from jobs.evaluate import DatasetUnavailable

        raise DatasetUnavailable("no dataset")

    monkeypatch.setattr(jobs.sync, "main", boom)
    assert jobs_main.main(["sync"]) == 1
    assert capsys.readouterr().err == "failed: no dataset\n"
    assert jobs_main.main(["nope"]) == 2


@pytest.mark.parametrize("error", ["oserror", "safetensors"])
def test_a_full_disk_in_a_job_is_one_line_not_a_traceback(error, monkeypatch, capsys, tmp_path):
    """a job that filled the disk printed a raw traceback (safetensors' own error type
    carries the OS message; its text below is what it printed on a full 2 MiB tmpfs)."""
    import errno
    import os

    import jobs.sync

    def full(_argv):
        if error == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x.bin"))
        from safetensors import SafetensorError

        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(jobs.sync, "main", full)
    monkeypatch.setenv("SFTLAUNCH_OUT", str(tmp_path))
    assert jobs_main.main(["sync"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("failed: sync: the disk is full writing under") and err.count("\n") == 1, err
    assert "df -h" in err and "resumes" in err

    def bug(_argv):
        raise ValueError("a bug keeps its traceback")

    monkeypatch.setattr(jobs.sync, "main", bug)
    with pytest.raises(ValueError):
        jobs_main.main(["sync"])
