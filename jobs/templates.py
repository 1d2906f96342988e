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
- tokenizer:    the base tokenizer's own chat_template (assistant spans found by rendering prefixes)
"""

from __future__ import annotations

import re

from launcher import contract
from launcher.errors import UserError

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


def _render(messages: list[dict], src: str, tokenizer, generation_prompt: bool) -> tuple[str, list[tuple[int, int]]]:
    """(text, assistant character spans) from the {% generation %} blocks of `src`."""
    from jinja2 import TemplateError
    from transformers.utils.chat_template_utils import render_jinja_template

    kwargs = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    try:
        texts, indices = render_jinja_template(conversations=[messages], chat_template=src, add_generation_prompt=generation_prompt,
                                               return_assistant_tokens_mask=bool(_GENERATION_TAG.search(src)), **kwargs)
    except TemplateError as exc:
        raise BadConversation("template refused", f"the chat template refused the conversation: {exc}") from None
    return texts[0], [tuple(s) for s in (indices[0] if indices else [])]


def _prefix_spans(messages: list[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """For a tokenizer's own template without generation markers: each assistant span is what
    rendering through that message adds to rendering the conversation before it (with the
    generation prompt)."""
    src = _source("tokenizer", tokenizer)
    text, _ = _render(messages, src, tokenizer, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, _ = _render(messages[:i], src, tokenizer, True)
        through, _ = _render(messages[: i + 1], src, tokenizer, False)
        if not through.startswith(before) or not text.startswith(through):
            raise UserError("data.template: tokenizer — its chat_template does not render conversations "
                            "prefix-consistently, so the assistant spans cannot be masked; use an explicit template")
        spans.append((len(before), len(through)))
    return text, spans


def render_spans(messages: list[dict], template: str, tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """(rendered conversation, character spans of the trained assistant text)."""
    validate(messages)
    src = _source(template, tokenizer)
    if template == "tokenizer" and not _GENERATION_TAG.search(src):
        return _prefix_spans(messages, tokenizer)
    return _render(messages, src, tokenizer, False)


def render(messages: list[dict], template: str, tokenizer, loss: str = "completion_only") -> tuple[list[int], list[bool]]:
    """(input_ids, trained mask): the whole rendered string tokenised once; a token is trained when
    its characters overlap an assistant span (every token with loss="all")."""
    text, spans = render_spans(messages, template, tokenizer)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [loss == "all" or any(start < stop and b < end for b, stop in spans) for start, end in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def labels(ids: list[int], mask: list[bool]) -> list[int]:
    return [t if m else -100 for t, m in zip(ids, mask, strict=True)]


def render_labels(messages: list[dict], template: str, tokenizer, loss: str = "completion_only") -> tuple[list[int], list[int]]:
    """(input_ids, labels) with -100 wherever no loss is taken."""
    ids, mask = render(messages, template, tokenizer, loss)
    return ids, labels(ids, mask)


def prompt_text(messages: list[dict], template: str, tokenizer) -> str:
    """What the model sees before its next reply: `messages` end with a user turn."""
    validate(messages, for_training=False)
    src = _source(template, tokenizer)
    return _render(messages, src, tokenizer, True)[0]


def prompt_ids(messages: list[dict], template: str, tokenizer) -> list[int]:
    """Token ids of `prompt_text`, tokenised once as a serving stack does."""
    return list(tokenizer(prompt_text(messages, template, tokenizer), add_special_tokens=False)["input_ids"])
