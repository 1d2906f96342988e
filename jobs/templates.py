"""Prompt templates: chat messages -> token ids plus the mask of tokens that carry loss.

Why segment by segment: tokenising the whole rendered string and then searching for the answer
drifts by a token wherever BPE merges across the prompt/answer seam. Here each piece of markup and
each message is tokenised on its own (no special tokens added) and the pieces are concatenated,
so the trained mask is exact by construction and a prompt rendered for inference (`prompt_text`,
`jobs.generate.prompt_ids`) is token-for-token the prefix the model was trained on.

The cost: a SentencePiece tokenizer may tokenise a seam slightly differently from the whole
string (e.g. a leading-space marker). Both training and inference use this function, so they
agree with each other.

Templates (every assistant turn is trained, each followed by a trained EOS, so the model learns
to stop; with loss="all" everything is trained):
- plain:        "{system} {user}\\n{assistant}</s>" per turn (sft-demos' "{instruction} {input}\\n{output}")
- llama2-chat:  "<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s>"
- mistral-inst: "<s>[INST] {user} [/INST] {assistant}</s>" (system text prefixed to the first user turn)
- chatml:       "<|im_start|>{role}\\n{content}<|im_end|>\\n" (the assistant's <|im_end|> + EOS trained)
- tokenizer:    the tokenizer's own chat_template (assistant spans found by rendering prefixes)
"""

from __future__ import annotations

from launcher import contract
from launcher.errors import UserError

TEMPLATES = contract.TEMPLATES
ROLES = ("system", "user", "assistant")
Piece = tuple[str | int, bool]  # text (tokenised alone) or a special token id; trained?


def _check(messages: list[dict]) -> None:
    if not messages:
        raise UserError("a conversation has no messages; every row needs a user and an assistant message")
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            raise UserError(f"message {i}: role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise UserError(f"message {i} ({role}): content must be a string")
        if role == "system" and i != 0:
            raise UserError(f"message {i}: a system message may only come first")


def _turns(messages: list[dict]) -> tuple[str | None, list[tuple[str, str | None]]]:
    """(system, [(user, assistant|None), ...]); consecutive user messages are joined."""
    _check(messages)
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns: list[tuple[str, str | None]] = []
    user: list[str] = []
    for m in messages[1 if system is not None else 0:]:
        if m["role"] == "user":
            user.append(m["content"])
        else:
            turns.append(("\n".join(user), m["content"]))
            user = []
    if user:
        turns.append(("\n".join(user), None))
    return system, turns


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front by default (Llama does, the tiny one and GPT-2 don't)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def _eos(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise UserError("the tokenizer has no eos_token; set one (tokenizer_config.json eos_token) so the model learns to stop")
    return eos


def _bos(tokenizer) -> list[Piece]:
    return [(tokenizer.bos_token_id, False)] if adds_bos(tokenizer) else []


def pieces(messages: list[dict], template: str, tokenizer) -> list[Piece]:
    """The conversation as (text or special id, trained) pieces, before tokenisation."""
    if template == "tokenizer":
        return _tokenizer_pieces(messages, tokenizer)
    system, turns = _turns(messages)
    eos = _eos(tokenizer)
    out: list[Piece] = []
    if template == "plain":
        out += _bos(tokenizer)
        for i, (user, answer) in enumerate(turns):
            text = f"{system} {user}" if (i == 0 and system) else user
            out.append((text + "\n", False))
            if answer is not None:
                out += [(answer, True), (eos, True)]
    elif template == "llama2-chat":
        bos = tokenizer.bos_token_id
        for i, (user, answer) in enumerate(turns):
            if bos is not None:
                out.append((bos, False))
            sys_block = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if (i == 0 and system) else ""
            out.append((f"[INST] {sys_block}{user} [/INST]", False))
            if answer is not None:
                out += [(f" {answer} ", True), (eos, True)]
    elif template == "mistral-inst":
        out += [(tokenizer.bos_token_id, False)] if tokenizer.bos_token_id is not None else []
        for i, (user, answer) in enumerate(turns):
            text = f"{system}\n\n{user}" if (i == 0 and system) else user
            out.append((f"[INST] {text} [/INST]", False))
            if answer is not None:
                out += [(f" {answer}", True), (eos, True)]
    elif template == "chatml":
        im_end_is_eos = getattr(tokenizer, "eos_token", None) == "<|im_end|>"
        if system:
            out.append((f"<|im_start|>system\n{system}<|im_end|>\n", False))
        for user, answer in turns:
            out.append((f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n", False))
            if answer is not None:
                out += [(answer if im_end_is_eos else answer + "<|im_end|>", True), (eos, True), ("\n", False)]
    else:
        raise UserError(f"data.template: unknown template {template!r}; use one of {', '.join(TEMPLATES)}")
    return out


def _tokenizer_pieces(messages: list[dict], tokenizer) -> list[Piece]:
    _check(messages)
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or "this tokenizer"
        raise UserError(f"data.template: tokenizer, but {name} has no chat_template; "
                        "use template: plain, chatml, llama2-chat or mistral-inst")

    def text(msgs, gen):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen) if msgs else ""

    eos_text = getattr(tokenizer, "eos_token", None)
    out: list[Piece] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = text(messages[:i], True)
        through = text(messages[: i + 1], False)
        if not before.startswith(done) or not through.startswith(before):
            raise UserError("data.template: tokenizer — its chat_template does not render conversations "
                            "prefix-consistently, so the assistant spans cannot be masked; use an explicit template")
        out.append((before[len(done):], False))
        span = through[len(before):]
        out.append((span, True))
        if eos_text and eos_text not in span:
            out.append((_eos(tokenizer), True))
        done = through
    rest = text(messages, messages[-1]["role"] != "assistant")
    if rest[len(done):]:
        out.append((rest[len(done):], False))
    return out


def _encode(piece: str | int, tokenizer) -> list[int]:
    if isinstance(piece, int):
        return [piece]
    return tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []


def render(messages: list[dict], template: str, tokenizer, loss: str = "completion_only") -> tuple[list[int], list[bool]]:
    """(input_ids, trained mask). `labels(ids, mask)` turns them into -100-masked labels."""
    ids: list[int] = []
    mask: list[bool] = []
    for piece, trained in pieces(messages, template, tokenizer):
        toks = _encode(piece, tokenizer)
        ids += toks
        mask += [trained or loss == "all"] * len(toks)
    return ids, mask


def labels(ids: list[int], mask: list[bool]) -> list[int]:
    return [t if m else -100 for t, m in zip(ids, mask, strict=True)]


def render_labels(messages: list[dict], template: str, tokenizer, loss: str = "completion_only") -> tuple[list[int], list[int]]:
    """(input_ids, labels) with -100 wherever no loss is taken."""
    ids, mask = render(messages, template, tokenizer, loss)
    return ids, labels(ids, mask)


def _piece_text(piece: str | int, tokenizer) -> str:
    return piece if isinstance(piece, str) else tokenizer.convert_ids_to_tokens(piece)


def render_text(messages: list[dict], template: str, tokenizer) -> str:
    """The rendered conversation as text (special tokens by name), for previews and tests."""
    return "".join(_piece_text(p, tokenizer) for p, _ in pieces(messages, template, tokenizer))


def prompt_text(messages: list[dict], template: str, tokenizer) -> str:
    """What the model sees before its next reply, for inference: `messages` end with a user turn.

    Special tokens appear by name ("<s>"); tokenising it with add_special_tokens=False gives the
    training prefix for tokenizers that parse their special tokens in text (all HF fast ones do).
    """
    if template == "tokenizer":
        _tokenizer_pieces(messages, tokenizer)  # same checks and error
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    out = []
    for piece, trained in pieces([*messages, {"role": "assistant", "content": ""}], template, tokenizer):
        if trained:
            break
        out.append(_piece_text(piece, tokenizer))
    return "".join(out)
