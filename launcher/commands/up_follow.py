"""What `up` on this machine (launcher/commands/up.py) and on a cloud (up_cloud.py) share once
the plan is shown: the confirmation, following the run's logs to its end (progress, the budget
guard, a Ctrl-C or SIGTERM that leaves the run going with the reattach and teardown commands), and
the end report. `logs --follow` raises the same Interrupted.

Why its own module: both launch paths and `logs` use these, and neither launch path imports the
other for them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from launcher.run_record import RunRecord
from sftcore import contract
from sftcore.errors import JobFailed, UserError
from sftcore.masking import mask

PROGRESS_EVERY_S = 10.0  # how often streaming writes progress/cost to the registry


class Interrupted(JobFailed):
    """Ctrl-C while following a run: the run goes on; exit 130 (the hints are already printed)."""

    exit_code = 130

    def __init__(self, message: str = "interrupted; the run keeps going"):
        cause = sys.exc_info()[1]  # SIGTERM / SIGHUP (launcher.signals.Terminated): exit 143 / 129
        if getattr(cause, "signum", None):
            self.exit_code = cause.exit_code
            message = f"{cause.name} received; the run keeps going"
        super().__init__(message)


def echo(text: str = "", err: bool = False) -> None:
    click.echo(mask(text), err=err)


def recipe_source(recipe) -> str:
    return str(recipe.source_path) if recipe.source_path else "recipe"


def confirm(yes: bool, question: str) -> None:
    if yes:
        return
    if not sys.stdin or not sys.stdin.isatty():
        raise UserError("no terminal to confirm on; rerun with --yes to launch without asking")
    if not click.confirm(question, default=False):
        raise click.Abort()


def reattach_hints(run_id: str, doing: str = "following the logs of") -> None:
    echo("", err=True)
    cause = sys.exc_info()[1]
    if getattr(cause, "signum", None):  # say what stopped us, and what we were doing
        echo(f"sftlaunch up got {cause.name} while {doing} {run_id}; it stops, the run does not.", err=True)
    echo(f"Detached from the logs; the run {run_id} keeps going.", err=True)
    echo(f"  reattach:  sftlaunch logs {run_id} --follow", err=True)
    echo(f"  status:    sftlaunch status {run_id}", err=True)
    echo(f"  stop it:   sftlaunch teardown {run_id}", err=True)


class Streamer:
    """Prints log lines (masked), turns metrics lines into a progress line, and keeps the
    registry's progress and the budget guard current while the run streams."""

    def __init__(self, registry, run_id: str, backend=None, show_progress: bool = True):
        self.registry, self.run_id, self.backend = registry, run_id, backend
        self.progress: tuple[int, int] | None = None
        self.show_progress = show_progress
        self._last_save = 0.0
        self._last_pct = -1

    def __call__(self, line: str) -> None:
        from launcher.run_outputs import parse_progress
        from sftcore.contract import STOPPED_LINE

        echo(line)
        if STOPPED_LINE in line:
            self._record_job_stop()
        p = parse_progress(line)
        if p and p != self.progress:
            self.progress = p
            pct = int(100 * p[0] / p[1]) if p[1] else 0
            if self.show_progress and pct != self._last_pct:  # one line per percent, not per log step
                self._last_pct = pct
                echo(f"progress: step {p[0]}/{p[1]} ({pct}%)", err=True)
            self._save()

    def _save(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_save < PROGRESS_EVERY_S:
            return
        self._last_save = now
        if self.progress:
            self.registry.update(self.run_id, progress_step=self.progress[0], progress_total=self.progress[1])
        if self.backend is not None:
            from launcher.lifecycle import guard_budget

            record = self.registry.get(self.run_id, history=False)
            if guard_budget(self.registry, self.backend, record) == "requested":
                echo(f"budget: cost passed max_usd; asked {self.run_id} to checkpoint and stop", err=True)

    def _record_job_stop(self) -> None:
        """The job's budget guard stopped training (the entrypoint said so): the run ends as
        `stopped`, not `succeeded`, although SkyPilot reports the job's exit 0 as SUCCEEDED."""
        if not self.registry.get(self.run_id, history=False).job_stopped:
            self.registry.update(self.run_id, job_stopped=True)

    def flush(self) -> None:
        self._save(force=True)


def report_end(record: RunRecord) -> None:
    avg = record.eval_average
    score = f", eval average {avg:.3f}" if isinstance(avg, (int, float)) else ""
    echo(f"{record.run_id}: {record.state}{score}, cost ${record.cost_usd:.2f}")
    if record.local_dir:
        report_local_outputs(Path(record.local_dir))
    if record.result_uri or record.local_dir:
        echo(f"results: {record.result_uri or record.local_dir}")
    echo(record.run_id)


def report_local_outputs(run_dir: Path) -> None:
    """The end of a local run: the results table again (the job printed it mid-log) and where the
    model, its card and the loss plot are, so nobody has to dig through run.log for them."""
    from sftcore.results import load_results, render_table

    layout = contract.RunLayout(run_dir)
    results = layout.eval_results()
    if results.is_file():
        try:
            echo("\n" + render_table([load_results(results)]))
        except UserError:
            pass  # an unreadable results.json was already reported by the eval step
    published = layout.publish
    for label, path in (("model", published if published.is_dir() else layout.final),
                        ("model card", published / "README.md"), ("loss plot", published / "training_loss.png"),
                        ("eval results", results)):
        if path.exists():
            echo(f"{label + ':':14}{path}")


def stream_until_end(registry, backend, run_id: str, streamer=None) -> int | None:
    """Follow the run's logs to the end, then record the outcome (and down an on-demand cluster).
    Ctrl-C leaves the run alone: print how to reattach and tear down, exit 130."""
    from launcher import lifecycle
    from launcher.backends.runner import runner_for
    from launcher.backends.sky import Unavailable

    record = registry.get(run_id, history=False)
    streamer = streamer or Streamer(registry, run_id, backend)
    try:
        code = runner_for(record, backend).logs(record, follow=True, on_line=streamer)
    except Unavailable as exc:  # the cluster or controller went away under the stream
        echo(f"note: the log stream ended: {exc}", err=True)
        code = None
    except KeyboardInterrupt:
        streamer.flush()
        reattach_hints(run_id)
        raise Interrupted() from None
    streamer.flush()
    lifecycle.refresh(registry, lambda: backend, [registry.get(run_id, history=False)], remote_progress=False)
    return code
