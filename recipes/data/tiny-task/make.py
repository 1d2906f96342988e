"""Generate the tiny recipe's synthetic task: reverse a short list of fruit words.

Why this task: a 4-layer, 128-wide Llama learns it on 2 CPU cores in about a minute (it needs
attention to find the word at the mirrored position, so the loss only drops if training really
works), every answer is checkable by exact match, and wrong orderings of the same words make
natural multiple-choice distractors.

Deterministic: `python recipes/data/tiny-task/make.py` rewrites train.jsonl and eval.jsonl
byte for byte. eval.jsonl rows never appear in train.jsonl.

train.jsonl uses the alpaca schema {instruction, input, output}; eval.jsonl holds
{prompt, answer, choices, label} where prompt is exactly what the `plain` template renders before
the answer ("{instruction} {input}\\n") and answer is the completion without EOS.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ["apple", "berry", "cherry", "grape", "lemon", "mango", "melon", "olive", "peach", "plum", "kiwi", "fig"]
INSTRUCTION = "Reverse the words."
MIN_WORDS, MAX_WORDS = 3, 5
N_TRAIN, N_EVAL = 3000, 100
SEED = 1234
HERE = Path(__file__).resolve().parent


def _sample(rng: random.Random) -> tuple[str, ...]:
    return tuple(rng.choice(WORDS) for _ in range(rng.randint(MIN_WORDS, MAX_WORDS)))


def _choices(words: tuple[str, ...], rng: random.Random) -> tuple[list[str], int]:
    """Four distinct orderings/variants, the reversed words among them.

    Repeated words can leave fewer than four distinct orderings (3 words, 2 equal: only 3), so
    after the rotations, distractors substitute one word of the reversed answer with another
    fruit; there are always more than enough of those, so this terminates.
    """
    answer = " ".join(reversed(words))
    candidates = [" ".join(words), " ".join(words[1:] + words[:1]), " ".join(reversed(words[1:] + words[:1]))]
    options = [answer]
    for c in candidates:
        if c not in options:
            options.append(c)
    rev = list(reversed(words))
    while len(options) < 4:
        i = rng.randrange(len(rev))
        c = " ".join(rev[:i] + [rng.choice([w for w in WORDS if w != rev[i]])] + rev[i + 1:])
        if c not in options:
            options.append(c)
    options = options[:4]
    rng.shuffle(options)
    return options, options.index(answer)


def main() -> None:
    rng = random.Random(SEED)
    eval_set: list[tuple[str, ...]] = []
    seen: set[tuple[str, ...]] = set()
    while len(eval_set) < N_EVAL:
        words = _sample(rng)
        if words not in seen:
            seen.add(words)
            eval_set.append(words)
    train: list[tuple[str, ...]] = []
    while len(train) < N_TRAIN:
        words = _sample(rng)
        if words not in seen:  # held-out sequences never leak into training
            train.append(words)
    with open(HERE / "train.jsonl", "w", encoding="utf-8") as f:
        for words in train:
            row = {"instruction": INSTRUCTION, "input": " ".join(words), "output": " ".join(reversed(words))}
            f.write(json.dumps(row) + "\n")
    with open(HERE / "eval.jsonl", "w", encoding="utf-8") as f:
        for words in eval_set:
            choices, label = _choices(words, rng)
            row = {
                "prompt": f"{INSTRUCTION} {' '.join(words)}\n",
                "answer": " ".join(reversed(words)),
                "choices": choices,
                "label": label,
            }
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
