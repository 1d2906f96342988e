"""Chat templates: one Jinja source per template, carried by the published tokenizer.

Why Jinja and whole-string tokenisation: a model is served through `apply_chat_template` (vLLM,
TGI, transformers pipelines), which renders the conversation to one string and tokenises it
once. Training must see exactly those ids, so training does the same: render the conversation
with the template the published tokenizer carries, tokenise the whole string once, and derive the
loss mask from the character offsets of the assistant spans (`return_offsets_mapping`). The spans
come from `{% generation %}` blocks (transformers' own marker for assistant text); the published
template is the same source with those markers removed, so both render the same characters.

Templates (each assistant turn is trained with its end-of-turn marker, so the model learns to stop):
- plain:        "{system} {user}\\n{assistant}</s>" per turn (sft-demos' "{instruction} {input}\\n{output}"),
                BOS in front when the tokenizer adds one by default
- llama2-chat:  the official Llama-2 chat template (meta-llama/Llama-2-7b-chat-hf tokenizer_config.json),
                which equals Meta's `chat_completion` in meta-llama/llama: contents stripped,
                "<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s>"
- mistral-inst: mistral_common's v1 instruct layout: "<s>[INST] {system}\\n\\n{user} [/INST] {assistant}</s>[INST] …"
- chatml:       OpenHermes-2.5's "<|im_start|>{role}\\n{content}<|im_end|>\\n"; <|im_end|> ends a turn
                and is the EOS (`prepare_tokenizer` adds the two markers when the tokenizer lacks them)
- tokenizer:    the base tokenizer's own chat_template, rendered as `apply_chat_template` renders it.
                Its own {% generation %} blocks are the spans when it has them; otherwise each answer's
                span is what rendering through it adds to the generation prompt before it, ending at its
                end-of-turn token: "{answer}<|im_end|>" (Qwen), "{answer}<end_of_turn>" (Gemma 2),
                "{answer}<|eot_id|>" (Llama 3), "{answer}</s>" (Mistral) — never the "\\n" after it,
                which the model never generates. Qwen3's empty "<think>\\n\\n</think>\\n\\n" is prompt
                (its generation prompt with enable_thinking=False), a real <think> block is trained.
                Qwen3 rewrites history (earlier answers lose their <think> blocks), so a multi-turn row
                trains each answer in the render of the conversation up to it (`render_turns`).
                A conversation the template refuses (raise_exception) is a bad row (BadConversation).
"""

from __future__ import annotations

import re

from sftcore import contract
from sftcore.errors import UserError

TEMPLATES = contract.TEMPLATES
ROLES = ("system", "user", "assistant")
IM_START, IM_END = "<|im_start|>", "<|im_end|>"

_ALTERNATE = ("{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
              "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}")
_SPLIT_SYSTEM = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
                 "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
                 "{% set system_message = false %}{% endif %}")

# Sources with {% generation %} around what is trained. Published = the same with the markers removed.
_SOURCES = {
    # The official template verbatim, plus the generation markers around the assistant's text.
    "llama2-chat": (
        _SPLIT_SYSTEM + "{% for message in loop_messages %}" + _ALTERNATE
        + "{% if loop.index0 == 0 and system_message != false %}"
        "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{% generation %}{{ ' '  + content.strip() + ' ' + eos_token }}"
        "{% endgeneration %}{% endif %}{% endfor %}"
    ),
    "mistral-inst": (
        _SPLIT_SYSTEM + "{{ bos_token }}{% for message in loop_messages %}" + _ALTERNATE
        + "{% if loop.index0 == 0 and system_message != false %}"
        "{% set content = system_message + '\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + content + ' [/INST]' }}"
        "{% else %}{% generation %}{{ ' ' + content + eos_token }}{% endgeneration %}{% endif %}{% endfor %}"
    ),
    "chatml": (
        "{% for message in messages %}{% if message['role'] == 'assistant' %}"
        "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
        "{{ '\\n' }}{% else %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "plain": (
        _SPLIT_SYSTEM + "{% for message in loop_messages %}" + _ALTERNATE
        + "{% if message['role'] == 'user' %}{% if loop.index0 == 0 and system_message %}"
        "{{ system_message + ' ' }}{% endif %}{{ message['content'] + '\\n' }}"
        "{% else %}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{% endif %}{% endfor %}"
    ),
}
_GENERATION_TAG = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


class BadConversation(UserError):
    """A conversation no template can train on; `reason` is the short key bad_rows counts by."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def drop_empty_system(messages: list[dict]) -> list[dict]:
    """`messages` without a leading system message that is empty or only whitespace, as dolphin rows
    with an empty instruction get none: the model's default system prompt then applies (Qwen2.5's
    "You are Qwen…", Mistral Small's) instead of an empty system turn it never saw in training."""
    if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
        content = messages[0].get("content")
        if isinstance(content, str) and not content.strip():
            return messages[1:]
    return messages


def validate(messages: list[dict], for_training: bool = True) -> None:
    """Roles alternate user/assistant after an optional leading system message; no empty turns.

    Training conversations end with the assistant's answer; a prompt for generation ends with the
    user's turn. Raises BadConversation naming the first problem (the official templates raise on
    wrong turn order too; here the row number can be reported and the row skipped if asked).
    """
    if not messages:
        raise BadConversation("no messages", "the conversation has no messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadConversation("unknown role", f"message {i}: role must be one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise BadConversation("content not a string", f"message {i} ({m['role']}): content must be a string")
    body = messages[1:] if messages[0]["role"] == "system" else messages
    for i, m in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            where = "a system message may only come first" if m["role"] == "system" else (
                f"turn {i + 1} is {m['role']}, expected {want}")
            raise BadConversation("roles do not alternate", f"roles must alternate user/assistant: {where}")
        if for_training and not m["content"].strip():  # a chat history may hold an empty reply
            key = "empty answer" if want == "assistant" else "empty user message"
            raise BadConversation(key, f"turn {i + 1} ({want}) is empty")
    if not body:
        raise BadConversation("no user turn", "the conversation has only a system message")
    if for_training and body[-1]["role"] != "assistant":
        raise BadConversation("no final answer", "the last turn is the user's; a trained conversation ends with "
                              "the assistant's answer")
    if not for_training and body[-1]["role"] != "user":
        raise BadConversation("no final question", "a prompt for generation ends with the user's turn")


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front by default (Llama does, the tiny one and GPT-2 don't)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def _source(template: str, tokenizer) -> str:
    if template == "tokenizer":
        src = getattr(tokenizer, "chat_template", None)
        if not src:
            name = getattr(tokenizer, "name_or_path", "") or "this tokenizer"
            raise UserError(f"data.template: tokenizer, but {name} has no chat_template; "
                            "use template: plain, chatml, llama2-chat or mistral-inst")
        return src
    if template not in _SOURCES:
        raise UserError(f"data.template: unknown template {template!r}; use one of {', '.join(TEMPLATES)}")
    src = _SOURCES[template]
    if template == "plain" and adds_bos(tokenizer):
        src = "{{ bos_token }}" + src
    return src


def chat_template(template: str, tokenizer) -> str:
    """The Jinja chat template the published tokenizer carries for `template` (None: `tokenizer`)."""
    return _GENERATION_TAG.sub("", _source(template, tokenizer))


def prepare_tokenizer(tokenizer, template: str) -> None:
    """Make `tokenizer` carry the recipe's template, so save_pretrained publishes it.

    chatml on a tokenizer without the markers: add <|im_start|>/<|im_end|> as special tokens and
    make <|im_end|> the EOS (as OpenHermes-2.5 and trl's setup_chat_format do); the caller resizes
    the embeddings (jobs.model does when len(tokenizer) exceeds them). Known limit: under LoRA/QLoRA
    the two new rows of the embeddings and head stay frozen at their mean initialisation (full
    fine-tuning trains them); prefer a base that already has the ChatML tokens for adapter methods.
    """
    if template == "tokenizer":
        _source(template, tokenizer)  # the same clear error as training would give
        return
    if template == "chatml" and tokenizer.eos_token != IM_END:
        tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
        tokenizer.eos_token = IM_END
    tokenizer.chat_template = chat_template(template, tokenizer)


def _render(messages: list[dict], src: str, tokenizer, generation_prompt: bool, **extra) -> tuple[str, list[tuple[int, int]]]:
    """(text, assistant character spans) from the {% generation %} blocks of `src`."""
    from jinja2 import TemplateError
    from transformers.utils.chat_template_utils import render_jinja_template

    kwargs = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    try:
        texts, indices = render_jinja_template(conversations=[messages], chat_template=src, add_generation_prompt=generation_prompt,
                                               return_assistant_tokens_mask=bool(_GENERATION_TAG.search(src)), **kwargs, **extra)
    except TemplateError as exc:
        raise BadConversation("template refused", f"the chat template refused the conversation: {exc}") from None
    return texts[0], [tuple(s) for s in (indices[0] if indices else [])]


def _end_of_turn_cut(text: str, start: int, stop: int, specials: tuple[str, ...]) -> int:
    """Where the trained span ends: after the turn's last special token when only whitespace follows
    it. A model stops at its end-of-turn token (<|im_end|>, <end_of_turn>, <|eot_id|>, </s>), so the
    "\\n" a template writes after it (ChatML, Gemma) is never generated and must not be trained."""
    body = text[start:stop].rstrip()
    if body and start + len(body) < stop and any(body.endswith(t) for t in specials):
        return start + len(body)
    return stop


def _special_strings(tokenizer) -> tuple[str, ...]:
    """Every atomic added token (special or not: some published tokenizers leave their end-of-turn
    token unflagged) and the special tokens, longest first."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    found = {t.content for t in added.values()} | set(getattr(tokenizer, "all_special_tokens", []) or [])
    return tuple(sorted((t for t in found if t and t.strip()), key=len, reverse=True))


def _answer_start(messages: list[dict], i: int, through: str, src: str, tokenizer) -> int | None:
    """Where answer i begins in `through` (messages[:i+1] rendered): after the longest generation
    prompt that `through` starts with. Two prompts are tried: the default one and the one with
    `enable_thinking=False` (Qwen3 puts the empty "<think>\\n\\n</think>\\n\\n" there, which is
    exactly what its template inserts before an answer without reasoning: prompt, not target)."""
    best = None
    for extra in ({}, {"enable_thinking": False}):
        before, _ = _render(messages[:i], src, tokenizer, True, **extra)
        if through.startswith(before) and (best is None or len(before) > best):
            best = len(before)
    return best


def _prefix_turns(messages: list[dict], tokenizer) -> list[tuple[str, list[tuple[int, int]]]]:
    """For a tokenizer's own template without generation markers: each answer's span is what
    rendering through it adds to the generation prompt before it, cut after its end-of-turn token.

    A template that rewrites history (Qwen3 drops earlier answers' <think> blocks and gives the last
    answer an empty one) renders turn i differently once later turns follow. Then every answer is
    trained in its own render of the conversation up to it — the exact string the model was served
    when it produced that answer — so one row becomes one sample per answer (each the official
    render, byte for byte). Training earlier answers as they appear in the rewritten history would
    teach the model to answer without its <think> block. Prefix-consistent templates (all others)
    give one sample whose spans are the same answers.
    """
    src = _source("tokenizer", tokenizer)
    specials = _special_strings(tokenizer)
    text, _ = _render(messages, src, tokenizer, False)
    turns: list[tuple[str, list[tuple[int, int]]]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        through, _ = _render(messages[: i + 1], src, tokenizer, False)
        start = _answer_start(messages, i, through, tokenizer=tokenizer, src=src)
        if start is None:
            raise BadConversation("template not prefix-consistent", "the tokenizer's chat_template renders the "
                                  f"answer in turn {i + 1} without the generation prompt before it, so its span "
                                  "cannot be found; use an explicit data.template")
        turns.append((through, [(start, _end_of_turn_cut(through, start, len(through), specials))]))
    if all(text.startswith(t) for t, _ in turns):
        return [(text, [s for _, spans in turns for s in spans])]
    return turns


def render_turns(messages: list[dict], template: str, tokenizer) -> list[tuple[str, list[tuple[int, int]]]]:
    """[(rendered text, character spans of the trained answers)]: one entry for every template that
    renders a conversation prefix-consistently, one per answer for one that rewrites history."""
    messages = drop_empty_system(messages)
    validate(messages)
    src = _source(template, tokenizer)
    if template == "tokenizer" and not _GENERATION_TAG.search(src):
        return _prefix_turns(messages, tokenizer)
    return [_render(messages, src, tokenizer, False)]


def render_spans(messages: list[dict], template: str, tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """(the whole conversation rendered, character spans of its trained answers): the last of
    `render_turns` (for a history-rewriting template only the last answer is trained in it)."""
    return render_turns(messages, template, tokenizer)[-1]


def _tokenise(text: str, spans: list[tuple[int, int]], tokenizer, loss: str) -> tuple[list[int], list[bool]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [loss == "all" or any(start < stop and b < end for b, stop in spans) for start, end in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def render_samples(messages: list[dict], template: str, tokenizer, loss: str = "completion_only") -> list[tuple[list[int], list[bool]]]:
    """[(input_ids, trained mask)] per sample of one conversation (see render_turns); each rendered
    string tokenised once; a token is trained when its characters overlap an answer's span (every
    token with loss="all", which needs only the whole conversation)."""
    turns = render_turns(messages, template, tokenizer)
    return [_tokenise(text, spans, tokenizer, loss) for text, spans in (turns[-1:] if loss == "all" else turns)]


def render(messages: list[dict], template: str, tokenizer, loss: str = "completion_only") -> tuple[list[int], list[bool]]:
    """(input_ids, trained mask) of the whole conversation: the last of `render_samples`."""
    return render_samples(messages, template, tokenizer, loss)[-1]


def labels(ids: list[int], mask: list[bool]) -> list[int]:
    return [t if m else -100 for t, m in zip(ids, mask, strict=True)]


def sample_labels(messages: list[dict], template: str, tokenizer, loss: str = "completion_only") -> list[tuple[list[int], list[int]]]:
    """[(input_ids, labels)] per sample of one conversation (see render_turns), -100 where no loss is taken."""
    return [(ids, labels(ids, mask)) for ids, mask in render_samples(messages, template, tokenizer, loss)]


def render_labels(messages: list[dict], template: str, tokenizer, loss: str = "completion_only") -> tuple[list[int], list[int]]:
    """(input_ids, labels) with -100 wherever no loss is taken."""
    ids, mask = render(messages, template, tokenizer, loss)
    return ids, labels(ids, mask)


def prompt_text(messages: list[dict], template: str, tokenizer, chat_kwargs: dict | None = None) -> str:
    """What the model sees before its next reply: `messages` end with a user turn. `chat_kwargs`:
    what the trained model's chat template is rendered with (`trained_chat_kwargs`, recorded in
    final/sftlaunch.json), so generation sees the prompt training did."""
    messages = drop_empty_system(messages)
    validate(messages, for_training=False)
    src = _source(template, tokenizer)
    return _render(messages, src, tokenizer, True, **(chat_kwargs or {}))[0]


def prompt_ids(messages: list[dict], template: str, tokenizer, chat_kwargs: dict | None = None) -> list[int]:
    """Token ids of `prompt_text`, tokenised once as a serving stack does."""
    text = prompt_text(messages, template, tokenizer, chat_kwargs)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


THINK_OPEN = "<think>"  # a reasoning block at the start of an answer (Qwen3 and its likes)


def has_reasoning(row: dict) -> bool:
    """Whether a row trains an answer that starts with its own reasoning block."""
    return any(m.get("role") == "assistant" and str(m.get("content") or "").lstrip().startswith(THINK_OPEN)
               for m in row.get("messages") or ())


def trained_chat_kwargs(template: str, tokenizer, reasoning_rows: int) -> dict:
    """What a trained model's chat template must be rendered with at generation to match training.

    A template with a thinking switch (Qwen3: `enable_thinking=False` puts the empty
    "<think>\n\n</think>\n\n" into the generation prompt) renders an answer without reasoning
    after that empty block, and training treats it as prompt (`_answer_start`). A model trained on
    such answers only is then served with the switch off; its default (thinking) prompt would ask
    for reasoning it never learned. With any reasoning answer in the data, the default stays."""
    if template != "tokenizer" or reasoning_rows:
        return {}
    src = _source(template, tokenizer)
    ask = [{"role": "user", "content": "?"}]
    default, _ = _render(ask, src, tokenizer, True)
    off, _ = _render(ask, src, tokenizer, True, enable_thinking=False)
    return {"enable_thinking": False} if off != default and off.startswith(default) else {}
