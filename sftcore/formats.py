"""Dataset formats: one row of a dataset author's schema -> chat messages, checked.

Why in sftcore: the formats are the recipe's vocabulary (`data.sources[].format` is validated
against FORMATTERS) and where the dataset authors' conventions live (docs/recipes.md's "Data
formats" section is generated from the docstrings below, by launcher.docgen); jobs.rows reads the
rows and jobs.data tokenises and packs whatever these return.

Each row becomes {"messages": [{role, content}, ...]} (system?, user, assistant, possibly several
turns), except `text` ({"text"}: trained on every token) and airoboros' pre-formatted rows
({"prompt", "completion"}). An empty leading system message is dropped (as dolphin's empty
instruction gives none), so the model's default system prompt applies. Every conversation is validated (jobs.templates.validate: roles
alternate after an optional system message, it ends with the assistant's answer, no empty turns);
a problem is a RowError whose `reason` is the key `data.bad_rows: skip` counts it under.

Dataset authors' own conventions: alpaca/Open-Platypus put the input in its own block after the
instruction (Stanford Alpaca's prompt: "### Instruction:\\n…\\n\\n### Input:\\n…"), so the user
turn is "{instruction}\\n\\n{input}". airoboros rows with `skip_prompt_formatting` already hold
their own "USER: … ASSISTANT:" text; they are kept as they are (the instruction stripped plus a
newline, as airoboros' own trainer does, then the response + EOS trained), never wrapped in the
chat template.
"""

from __future__ import annotations

import re
from collections.abc import Callable


class RowError(ValueError):
    """A row's problem; the loader adds where (file, row) before it reaches the user.
    `reason` is the short key `bad_rows: skip` counts it under."""

    def __init__(self, message: str, reason: str = "malformed row"):
        super().__init__(message)
        self.reason = reason


def _str(row: dict, field: str, required: bool = True, fix: str = "") -> str:
    if field not in row or row[field] is None:
        if required:
            raise RowError(f"field {field!r} is missing{fix or '; every row of this format needs it'}")
        return ""
    value = row[field]
    if not isinstance(value, str):
        raise RowError(f"field {field!r} is a {type(value).__name__}, expected a string")
    return value


def _msgs(system: str, user: str, assistant: str) -> dict:
    messages = [{"role": "system", "content": system}] if system.strip() else []
    return {"messages": messages + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def fmt_dolphin(row: dict) -> dict:
    """{instruction, input, output}: `instruction` is the system prompt (dolphin's convention), `input`
    the user turn, `output` the answer; an empty `input` is a bad row (it would train an empty user turn)."""
    return _msgs(_str(row, "instruction", False), _str(row, "input"), _str(row, "output"))


def fmt_alpaca(row: dict) -> dict:
    """{instruction, input?, output}: the user turn is the instruction, then the input in its own block
    ("{instruction}\\n\\n{input}", as Stanford Alpaca's prompt keeps them apart); `output` is the answer."""
    instruction, inp = _str(row, "instruction"), _str(row, "input", False)
    user = f"{instruction}\n\n{inp}" if inp.strip() else instruction
    return _msgs("", user, _str(row, "output"))


def fmt_airoboros(row: dict) -> dict:
    """{system?, instruction, response, skip_prompt_formatting?}: system, user and assistant turns; a row
    with `skip_prompt_formatting` already holds its own "USER: … ASSISTANT:" text and is kept as it is
    (the instruction stripped plus a newline, as airoboros' trainer does, then the response + EOS
    trained), never wrapped in the chat template."""
    if row.get("skip_prompt_formatting"):
        response = _str(row, "response")
        if not response.strip():
            raise RowError("field 'response' is empty; there is nothing to train on", "empty answer")
        return {"prompt": _str(row, "instruction").strip() + "\n", "completion": response}
    return _msgs(_str(row, "system", False), _str(row, "instruction"), _str(row, "response"))


_GUANACO = re.compile(r"###\s*(Human|Assistant)\s*:")


def fmt_guanaco(row: dict) -> dict:
    """{text: "### Human: … ### Assistant: …"} (openassistant-guanaco): one user/assistant turn per
    marker, several turns kept as a multi-turn conversation."""
    text = _str(row, "text")
    parts = _GUANACO.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise RowError("field 'text' must start with '### Human:' and contain '### Assistant:' turns")
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        role = "user" if speaker == "Human" else "assistant"
        if messages and messages[-1]["role"] == role:
            raise RowError(f"field 'text' has two '### {speaker}:' turns in a row; turns must alternate",
                           "roles do not alternate")
        messages.append({"role": role, "content": content.strip()})
    if messages[0]["role"] != "user" or messages[-1]["role"] != "assistant":
        raise RowError("field 'text' must start with '### Human:' and end with an '### Assistant:' turn")
    return {"messages": messages}


_ORCA_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


def fmt_slimorca(row: dict) -> dict:
    """{conversations: [{from: system|human|gpt, value}]} (SlimOrca, ShareGPT style), turn by turn."""
    conv = row.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise RowError("field 'conversations' is missing or empty; expected a list of {from, value}")
    messages = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or turn.get("from") not in _ORCA_ROLES or not isinstance(turn.get("value"), str):
            raise RowError(f"field 'conversations[{i}]' must be {{from: system|human|gpt, value: string}}, got {turn!r:.80}")
        messages.append({"role": _ORCA_ROLES[turn["from"]], "content": turn["value"]})
    return {"messages": messages}


def fmt_messages(row: dict) -> dict:
    """{messages: [{role: system|user|assistant, content}]} (OpenAI style), as they are."""
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RowError("field 'messages' is missing or empty; expected a list of {role, content}")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise RowError(f"field 'messages[{i}]' must be {{role: system|user|assistant, content: string}}, got {m!r:.80}")
        out.append({"role": m["role"], "content": m["content"]})
    return {"messages": out}


def fmt_text(row: dict) -> dict:
    """{text}: raw text, no template, trained on every token (continued pretraining style)."""
    text = _str(row, "text")
    if not text.strip():
        raise RowError("field 'text' is empty")
    return {"text": text}


FORMATTERS: dict[str, Callable[[dict], dict]] = {
    "dolphin": fmt_dolphin,
    "airoboros": fmt_airoboros,
    "platypus": fmt_alpaca,
    "alpaca": fmt_alpaca,
    "guanaco": fmt_guanaco,
    "slimorca": fmt_slimorca,
    "messages": fmt_messages,
    "text": fmt_text,
}
