"""Write the small sample files in recipes/data/, one per real dataset schema (no downloads).

Why generated: every loader path and formatter needs a file in the exact schema of the real
dataset (dolphin, airoboros, Open-Platypus, alpaca, openassistant-guanaco, SlimOrca, chat
messages, raw text), with enough rows (60) for mixing, max_samples and eval splits. The content
is built from small fact tables so answers are correct. Deterministic: rerunning rewrites the
files byte for byte (`python recipes/data/make_samples.py`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
N = 60
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Canada", "Ottawa"),
            ("Norway", "Oslo"), ("Egypt", "Cairo"), ("Chile", "Santiago"), ("India", "New Delhi"), ("Spain", "Madrid"),
            ("Ghana", "Accra"), ("Poland", "Warsaw"), ("Vietnam", "Hanoi"), ("Mexico", "Mexico City"), ("Greece", "Athens")]
SYNONYMS = [("happy", "cheerful"), ("big", "large"), ("fast", "quick"), ("smart", "clever"), ("tired", "weary"),
            ("angry", "furious"), ("begin", "commence"), ("small", "tiny"), ("brave", "courageous"), ("rich", "wealthy")]
SYSTEMS = ["You are an AI assistant. Provide a detailed answer so the user does not need to search elsewhere.",
           "You are a helpful assistant, who always provides explanation. Think like you are answering to a five year old.",
           "You are an AI assistant that follows instruction extremely well. Help as much as you can."]


def _task(i: int, rng: random.Random) -> tuple[str, str, str]:
    """(instruction, input, output) of one of four task kinds."""
    kind = i % 4
    if kind == 0:
        country, city = CAPITALS[i % len(CAPITALS)]
        return ("Answer the question.", f"What is the capital of {country}?",
                f"The capital of {country} is {city}.")
    if kind == 1:
        a, b = rng.randint(12, 99), rng.randint(12, 99)
        return ("Solve the arithmetic problem and show the result.", f"What is {a} + {b}?",
                f"{a} + {b} = {a + b}. Adding the tens gives {a // 10 * 10 + b // 10 * 10} and the ones give "
                f"{a % 10 + b % 10}, so the total is {a + b}.")
    if kind == 2:
        word, syn = SYNONYMS[i % len(SYNONYMS)]
        return ("Give a synonym for the word.", word, f"A synonym for \"{word}\" is \"{syn}\".")
    km = rng.randint(2, 40)
    return ("Convert the distance from kilometres to metres.", f"{km} km",
            f"{km} km is {km * 1000} metres, because one kilometre is 1000 metres.")


def _write_jsonl(name: str, rows: list[dict]) -> None:
    with open(HERE / name, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    rng = random.Random(7)
    tasks = [_task(i, rng) for i in range(N)]
    dolphin = [{"instruction": SYSTEMS[i % 3], "input": f"{ins} {inp}", "output": out}
               for i, (ins, inp, out) in enumerate(tasks)]
    _write_jsonl("dolphin.jsonl", dolphin)
    airoboros = [{"system": "A chat between a curious user and an assistant.", "instruction": f"{ins} {inp}",
                  "response": out, "skip_prompt_formatting": i % 10 == 9} for i, (ins, inp, out) in enumerate(tasks)]
    _write_jsonl("airoboros.jsonl", airoboros)
    alpaca = [{"instruction": ins, "input": inp if i % 3 else "", "output": out} if i % 3
              else {"instruction": f"{ins} {inp}", "input": "", "output": out} for i, (ins, inp, out) in enumerate(tasks)]
    _write_jsonl("alpaca.jsonl", alpaca)
    platypus = [{"instruction": f"{ins} {inp}", "input": "", "output": out, "data_source": "sftlaunch-sample"}
                for ins, inp, out in tasks]
    _write_jsonl("open-platypus.jsonl", platypus)
    guanaco = []
    for i in range(N):
        a, b = tasks[i], tasks[(i + 7) % N]
        text = f"### Human: {a[0]} {a[1]}### Assistant: {a[2]}"
        if i % 2:
            text += f"### Human: And this one: {b[0]} {b[1]}### Assistant: {b[2]}"
        guanaco.append({"text": text})
    _write_jsonl("guanaco.jsonl", guanaco)
    slimorca = [{"conversations": [{"from": "system", "value": SYSTEMS[i % 3], "weight": None},
                                   {"from": "human", "value": f"{ins} {inp}", "weight": 0.0},
                                   {"from": "gpt", "value": out, "weight": 1.0}]} for i, (ins, inp, out) in enumerate(tasks)]
    _write_jsonl("slimorca.jsonl", slimorca)
    messages = []
    for i, (ins, inp, out) in enumerate(tasks):
        msgs = [{"role": "user", "content": f"{ins} {inp}"}, {"role": "assistant", "content": out}]
        if i % 2:
            b = tasks[(i + 3) % N]
            msgs += [{"role": "user", "content": f"{b[0]} {b[1]}"}, {"role": "assistant", "content": b[2]}]
        if i % 3 == 0:
            msgs = [{"role": "system", "content": "You are a concise, accurate assistant."}] + msgs
        messages.append({"messages": msgs})
    _write_jsonl("messages.jsonl", messages)
    text = [{"text": f"{ins} {inp}\n{out}\nThis note is part of a small practice set used to check that raw text "
                     f"is trained on every token."} for ins, inp, out in tasks]
    _write_jsonl("text.jsonl", text)
    # Other containers of the same schemas, so the .json and .parquet readers and directories are exercised.
    with open(HERE / "alpaca.json", "w", encoding="utf-8") as f:
        json.dump(alpaca, f, indent=1, ensure_ascii=False)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(dolphin), HERE / "dolphin.parquet")
    mixed = HERE / "messages-dir"
    mixed.mkdir(exist_ok=True)
    _write_jsonl("messages-dir/part-0.jsonl", messages[:30])
    pq.write_table(pa.Table.from_pylist(messages[30:]), mixed / "part-1.parquet")


if __name__ == "__main__":
    main()
