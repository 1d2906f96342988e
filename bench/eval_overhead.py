"""Wall time of `python -m jobs eval` on the tiny tasks, and our wrapper's overhead against calling
lm_eval.simple_evaluate directly with the same model, tasks, limit and batch size.

    python bench/eval_overhead.py [--model DIR] [--limit 40] [--rounds 3] [--tasks tiny_mc,tiny_gen]
    python bench/eval_overhead.py --model DIR --preset leaderboard-v1 --limit 20 --device cuda   # needs the Hub

Both paths run in this process, alternating, so imports and caches are warm for both; the figure
printed is the median per path. Without --model it uses jobs.tiny's model when available, else a
throwaway random tiny Llama (tests/jobs/eval_fixtures.py). The leaderboard preset's datasets need
the Hub; where it is unreachable only the local tasks can be timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def direct(model: str, tasks: list[str], limit: int, batch: int, device: str, preset: str | None) -> float:
    """The harness alone: one simple_evaluate per shot count (as the preset needs), no wrapper."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from jobs.evaluate import PRESETS

    t0 = time.perf_counter()
    if preset:
        groups: dict[int, list[str]] = {}
        for p in PRESETS[preset]:
            groups.setdefault(p.shots, []).append(p.task)
        runs = [(names, shots) for shots, names in groups.items()]
        tm = TaskManager(include_path=[str(REPO / "jobs" / "tasks")])
    else:
        runs = [(tasks, None)]
        tm = TaskManager(include_path=[str(REPO / "jobs" / "tasks")], include_defaults=False)
    lm = HFLM(pretrained=model, batch_size=batch, device=device, dtype="float32" if device == "cpu" else "auto")
    for names, shots in runs:
        lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=shots, limit=limit, task_manager=tm,
                                log_samples=False)
    return time.perf_counter() - t0


def wrapper(model: str, tasks: list[str], limit: int, batch: int, out: Path, preset: str | None) -> float:
    from jobs import evaluate

    t0 = time.perf_counter()
    what = ["--preset", preset] if preset else ["--tasks", ",".join(tasks)]
    code = evaluate.main(["--model", model, *what, "--limit", str(limit), "--batch-size", str(batch), "--out", str(out)])
    assert code == 0, code
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--tasks", default="tiny_mc,tiny_gen")
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--preset", default=None, help="time the preset instead of --tasks (its datasets need the Hub)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sftl-bench-eval-"))
    if args.model is None:
        from tests.jobs.eval_fixtures import TINY_EVAL, tiny_model

        args.model = str(tiny_model(tmp))
        if not (TINY_EVAL.is_file() and TINY_EVAL.stat().st_size):
            import os

            class _Env:  # eval_rows_env expects pytest's monkeypatch
                def setenv(self, k, v):
                    os.environ[k] = v

            from tests.jobs.eval_fixtures import eval_rows_env

            eval_rows_env(_Env(), tmp)
    tasks = args.tasks.split(",")
    import logging

    logging.disable(logging.WARNING)
    wrapper(args.model, tasks, 2, args.batch_size, tmp / "warm", args.preset)  # warm imports and file caches
    times = {"direct": [], "wrapper": []}
    for r in range(args.rounds):
        times["direct"].append(direct(args.model, tasks, args.limit, args.batch_size, args.device, args.preset))
        times["wrapper"].append(wrapper(args.model, tasks, args.limit, args.batch_size, tmp / f"r{r}", args.preset))
    d, w = statistics.median(times["direct"]), statistics.median(times["wrapper"])
    print(f"model: {args.model}")
    print(f"tasks: {args.preset or args.tasks}  device: {args.device}  limit: {args.limit}  batch: {args.batch_size}  rounds: {args.rounds}")
    print(f"direct lm_eval.simple_evaluate: median {d:.2f} s  ({', '.join(f'{t:.2f}' for t in times['direct'])})")
    print(f"jobs.evaluate wrapper:          median {w:.2f} s  ({', '.join(f'{t:.2f}' for t in times['wrapper'])})")
    print(f"wrapper overhead: {w - d:+.2f} s ({(w - d) / d * 100:+.1f}%)")


if __name__ == "__main__":
    main()
