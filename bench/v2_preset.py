"""Wall time of `python -m jobs eval --preset leaderboard-v2 --limit 2` on the tiny model, offline.

Why: the v2 preset runs lm-eval's own `leaderboard_*` task configs (prompts, few-shot, chat
template, IFEval's instruction checkers, MATH's answer verifier) through jobs.evaluate; this
measures that whole path on CPU. The six datasets live on the Hub, which this machine cannot
reach, so `datasets.load_dataset` is answered for exactly those six Hub ids with a few
hand-made rows in each dataset's published schema (fields as the task configs read them);
everything else is the code a real run executes. The tiny model scores ~0: only the time and the
table's shape mean anything. Prints figures; asserts nothing.

    python bench/v2_preset.py [--limit 2] [--family llama]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BBH = ("boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "formal_fallacies",
       "geometric_shapes", "hyperbaton", "logical_deduction_five_objects", "logical_deduction_seven_objects",
       "logical_deduction_three_objects", "movie_recommendation", "navigate", "object_counting",
       "penguins_in_a_table", "reasoning_about_colored_objects", "ruin_names",
       "salient_translation_error_detection", "snarks", "sports_understanding", "temporal_sequences",
       "tracking_shuffled_objects_five_objects", "tracking_shuffled_objects_seven_objects",
       "tracking_shuffled_objects_three_objects", "web_of_lies")


def _rows(hub_id: str, name: str | None) -> dict[str, list[dict]]:
    """A few rows per split in the schema of the Hub dataset the leaderboard task reads."""
    if hub_id == "TIGER-Lab/MMLU-Pro":
        row = {"question_id": 0, "question": "Which gas do plants absorb for photosynthesis?",
               "options": ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium", "Argon", "Neon", "Hydrogen", "Methane",
                           "Ozone", "Xenon"], "answer": "B", "answer_index": 1, "cot_content": "", "category": "biology",
               "src": "hand-made"}
        return {"test": [dict(row, question_id=i) for i in range(4)], "validation": [dict(row, question_id=i) for i in range(5)]}
    if hub_id == "SaylorTwift/bbh":  # the target is one of the subtask's choices, as in the real data
        import lm_eval
        import yaml

        cfg = Path(lm_eval.__file__).parent / "tasks" / "leaderboard" / "bbh_mc" / f"{name}.yaml"
        first = yaml.safe_load(cfg.read_text().split("fewshot_config")[0])["doc_to_choice"][0]
        return {"test": [{"input": "not ( True ) and ( True ) is", "target": first} for _ in range(4)]}
    if hub_id == "Idavidrein/gpqa":
        return {"train": [{"Question": "What is the SI unit of force?", "Correct Answer": "newton",
                           "Incorrect Answer 1": "joule", "Incorrect Answer 2": "watt", "Incorrect Answer 3": "pascal"}
                          for _ in range(4)]}
    if hub_id == "TAUR-Lab/MuSR":
        doc = {"narrative": "Ann put the key in the drawer, then left.", "question": "Where is the key?",
               "choices": "['drawer', 'table']", "answer_index": 0, "answer_choice": "drawer"}
        return {s: [doc] * 4 for s in ("murder_mysteries", "object_placements", "team_allocation")}
    if hub_id == "DigitalLearningGmbH/MATH-lighteval":
        doc = {"problem": "What is $2+3$?", "level": "Level 5", "type": name or "Algebra",
               "solution": "$2+3=\\boxed{5}$."}
        return {"train": [doc] * 4, "test": [doc] * 4}
    if hub_id == "wis-k/instruction-following-eval":
        return {"train": [{"key": i, "prompt": "Write one sentence about rivers, in lowercase letters only.",
                           "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]} for i in range(4)]}
    raise KeyError(hub_id)


def patch_hub_datasets() -> list[str]:
    import datasets

    real = datasets.load_dataset
    served: list[str] = []

    def load_dataset(path=None, name=None, *args, **kwargs):
        try:
            splits = _rows(path, name)
        except KeyError:
            return real(path, name, *args, **kwargs)
        served.append(f"{path}:{name}")
        return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})

    datasets.load_dataset = load_dataset
    return served


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=2)
    ap.add_argument("--family", default="llama", help="tiny family (jobs.tiny.FAMILIES), e.g. qwen2 for a ChatML template")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from jobs import evaluate
    from jobs.tiny import ensure_tiny

    model = ensure_tiny(family=args.family)
    served = patch_hub_datasets()
    out = Path(tempfile.mkdtemp(prefix="v2-bench-"))
    start = time.perf_counter()
    code = evaluate.main(["--model", str(model), "--preset", "leaderboard-v2", "--limit", str(args.limit),
                          "--batch-size", "4", "--out", str(out)])
    wall = time.perf_counter() - start
    print(f"exit {code}; wall {wall:.1f} s for --preset leaderboard-v2 --limit {args.limit} on tiny-{args.family} "
          f"(CPU, {os.cpu_count()} cores); {len(served)} dataset loads answered locally")
    if (out / "results.json").is_file():
        res = json.loads((out / "results.json").read_text())
        print(f"harness wall_s {res['wall_s']}; chat template {res['chat_template']}; "
              f"v2 average {res['normalized_average']:.2f}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
