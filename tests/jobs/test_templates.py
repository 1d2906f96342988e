"""Train/serve parity of every template, checked against references nobody here wrote.

For each template, with the tiny byte-level tokenizer and with a real SentencePiece tokenizer
(Mistral-7B v0.1's, built as the Hub's Llama-2/Mistral tokenizer.json files are), and for
multi-turn conversations with and without a system prompt, these ids are equal:
(a) the training path (jobs.templates.render), (b) `apply_chat_template` on the tokenizer saved
the way training saves it (the published directory), (c) the chat prompt builder
(jobs.generate.prompt_ids) for every prefix that ends with a user turn, which must be the training
ids up to that turn's answer.

References: Meta's `Llama.chat_completion` (meta-llama/llama, llama/generation.py), reimplemented
below from its published code; the official Llama-2 chat template (meta-llama/Llama-2-7b-chat-hf
tokenizer_config.json); mistral_common's InstructTokenizerV1 (mistral_common/tokens/tokenizers/
instruct.py); OpenHermes-2.5-Mistral-7B's ChatML template.
"""

from __future__ import annotations

import copy

import pytest

pytestmark = pytest.mark.requires("transformers")

from sftcore.errors import UserError  # noqa: E402

# meta-llama/Llama-2-7b-chat-hf, tokenizer_config.json "chat_template", verbatim.
OFFICIAL_LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
# teknium/OpenHermes-2.5-Mistral-7B, tokenizer_config.json "chat_template".
OPENHERMES_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' "
    "+ '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer briefly."}
TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Italy?\nOne word, please."},
    {"role": "assistant", "content": "Rome."},
    {"role": "user", "content": "Count: 1, 2, 3 (digits, 42) — ünïcode ok?"},
    {"role": "assistant", "content": "4, 5, 6. Yes: ünïcode is fine!"},
]
CONVERSATIONS = {
    "one turn": TURNS[:2],
    "one turn + system": [SYSTEM, *TURNS[:2]],
    "three turns": TURNS,
    "three turns + system": [SYSTEM, *TURNS],
    "padded contents": [{"role": "user", "content": "  Who are you?  "},
                        {"role": "assistant", "content": "   I am an assistant   "}],
}
NAMED = ("plain", "llama2-chat", "mistral-inst", "chatml")


def shipped_conversations() -> list[list[dict]]:
    """Every row of the shipped multi-turn and system-prompt sample files (recipes/data, in the real
    datasets' schemas), formatted as training formats them."""
    import json
    from pathlib import Path

    from sftcore.formats import FORMATTERS

    data = Path(__file__).resolve().parents[2] / "recipes" / "data"
    out = []
    for name, fmt in (("guanaco.jsonl", "guanaco"), ("slimorca.jsonl", "slimorca"), ("messages.jsonl", "messages"),
                      ("dolphin.jsonl", "dolphin")):
        out += [FORMATTERS[fmt](json.loads(line))["messages"] for line in (data / name).read_text().splitlines()]
    return out


@pytest.fixture(scope="module")
def tiny(shared_cache):
    from transformers import AutoTokenizer

    from jobs.tiny import ensure_tiny

    return AutoTokenizer.from_pretrained(ensure_tiny(shared_cache))


@pytest.fixture(scope="module")
def sp():
    from tests.jobs.sp_tokenizer import sp_tokenizer

    return sp_tokenizer()


def _published(base, template: str, tmp_path):
    """The tokenizer as training prepares and saves it, reloaded from disk like a published model."""
    from transformers import AutoTokenizer

    from jobs.templates import prepare_tokenizer

    tok = copy.deepcopy(base)
    if template == "tokenizer":
        tok.chat_template = OFFICIAL_LLAMA2 if not getattr(tok, "chat_template", None) else tok.chat_template
    prepare_tokenizer(tok, template)
    out = tmp_path / f"published-{template}"
    tok.save_pretrained(out)
    return tok, AutoTokenizer.from_pretrained(out)


def _apply(tok, messages, **kw) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _answer_starts(ids, mask) -> list[int]:
    return [i for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1])]


def check_parity(base, template, tmp_path, conversations=None) -> int:
    """(a) == (b) for every conversation, and (c) == (a)'s prefix for every user-ended prefix."""
    from jobs import generate
    from jobs.templates import render

    tok, published = _published(base, template, tmp_path)
    loaded = generate.Loaded(None, published, template, "cpu")
    checked = 0
    for name, conv in (conversations or CONVERSATIONS).items():
        ids, mask = render(conv, template, tok)
        assert ids == _apply(published, conv), f"{template}/{name}: training ids != apply_chat_template"
        starts = _answer_starts(ids, mask)
        user_ends = [i + 1 for i, m in enumerate(conv) if m["role"] == "user"]
        assert len(starts) == len(user_ends)
        for start, end in zip(starts, user_ends, strict=True):
            prompt = generate.prompt_ids(loaded, conv[:end])
            assert prompt == _apply(published, conv[:end], add_generation_prompt=True)
            assert prompt == ids[:start], f"{template}/{name}: chat prompt is not the training prefix"
        checked += 1
    return checked


@pytest.mark.parametrize("template", NAMED)
def test_parity_with_the_tiny_tokenizer(tiny, template, tmp_path):
    assert check_parity(tiny, template, tmp_path) == len(CONVERSATIONS)


@pytest.mark.parametrize("template", [*NAMED, "tokenizer"])
def test_parity_with_a_real_sentencepiece_tokenizer(sp, template, tmp_path):
    assert check_parity(sp, template, tmp_path) == len(CONVERSATIONS)


def test_tokenizer_template_parity_with_the_tiny_tokenizers_own_template(tiny, tmp_path):
    assert check_parity(tiny, "tokenizer", tmp_path) == len(CONVERSATIONS)


@pytest.mark.parametrize("template", [*NAMED, "tokenizer"])
def test_parity_on_every_shipped_sample_conversation(tiny, sp, template, tmp_path):
    convs = {f"row {i}": c for i, c in enumerate(shipped_conversations())}
    assert len(convs) == 240 and any(len(c) > 3 for c in convs.values())  # guanaco's multi-turn rows
    for base in (tiny, sp):
        assert check_parity(base, template, tmp_path, convs) == len(convs)


def test_shipped_conversations_equal_the_reference_encoders(sp):
    from jobs import templates

    def encode(text):
        return sp(text, add_special_tokens=False)["input_ids"]

    bos, eos = sp.bos_token_id, sp.eos_token_id
    for conv in shipped_conversations():
        assert templates.render(conv, "llama2-chat", sp)[0] == meta_chat_completion(conv, encode, bos, eos)
        assert templates.render(conv, "mistral-inst", sp)[0] == mistral_v1(conv, encode, bos, eos)


def meta_chat_completion(dialog: list[dict], encode, bos: int, eos: int) -> list[int]:
    """Meta's Llama.chat_completion prompt tokens (meta-llama/llama, llama/generation.py), reimplemented:
    the system message is folded into the first user message between B_SYS/E_SYS; every
    (prompt, answer) pair is encode(f"{B_INST} {prompt.strip()} {E_INST} {answer.strip()} ", bos, eos)
    and a final user message encode(f"{B_INST} {prompt.strip()} {E_INST}", bos, no eos). Each call
    is a separate SentencePiece encode (dummy prefix "▁" in front of each)."""
    b_inst, e_inst = "[INST]", "[/INST]"
    b_sys, e_sys = "<<SYS>>\n", "\n<</SYS>>\n\n"
    if dialog[0]["role"] == "system":
        dialog = [{"role": dialog[1]["role"], "content": b_sys + dialog[0]["content"] + e_sys + dialog[1]["content"]},
                  *dialog[2:]]
    assert all(m["role"] == "user" for m in dialog[::2]) and all(m["role"] == "assistant" for m in dialog[1::2])
    tokens: list[int] = []
    for prompt, answer in zip(dialog[::2], dialog[1::2], strict=False):
        tokens += [bos, *encode(f"{b_inst} {prompt['content'].strip()} {e_inst} {answer['content'].strip()} "), eos]
    if dialog[-1]["role"] == "user":
        tokens += [bos, *encode(f"{b_inst} {dialog[-1]['content'].strip()} {e_inst}")]
    return tokens


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_llama2_chat_equals_metas_reference_algorithm(sp, name):
    from jobs import templates

    conv = CONVERSATIONS[name]

    def encode(text):
        return sp(text, add_special_tokens=False)["input_ids"]

    ids, _ = templates.render(conv, "llama2-chat", sp)
    assert ids == meta_chat_completion(conv, encode, sp.bos_token_id, sp.eos_token_id)
    assert templates.prompt_ids(conv[:-1], "llama2-chat", sp) == meta_chat_completion(
        conv[:-1], encode, sp.bos_token_id, sp.eos_token_id)
    # Meta's "<s>▁[INST]" in every turn, and stripped answers: "[/INST] I am an assistant </s>".
    assert sp.convert_ids_to_tokens(ids[:2]) == ["<s>", "▁["]
    if name == "padded contents":
        assert sp.decode(ids).endswith("[/INST] I am an assistant </s>")


def test_llama2_chat_published_template_is_the_official_one(sp, tiny):
    from jobs.templates import chat_template

    assert chat_template("llama2-chat", sp) == OFFICIAL_LLAMA2
    assert chat_template("llama2-chat", tiny) == OFFICIAL_LLAMA2


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_tokenizer_template_with_the_official_llama2_template_equals_llama2_chat(sp, name):
    from jobs import templates

    tok = copy.deepcopy(sp)
    tok.chat_template = OFFICIAL_LLAMA2
    conv = CONVERSATIONS[name]
    assert templates.render(conv, "tokenizer", tok) == templates.render(conv, "llama2-chat", sp)


def mistral_v1(messages: list[dict], encode, bos: int, eos: int) -> list[int]:
    """mistral_common InstructTokenizerV1.encode_instruct: BOS, then per user message
    encode("[INST] {content} [/INST]") with the system prompt + "\\n\\n" in front of the first
    user message's content, per assistant message encode(content) + EOS; contents not stripped."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    body = messages[1:] if system is not None else messages
    tokens = [bos]
    for i, m in enumerate(body):
        if m["role"] == "user":
            content = system + "\n\n" + m["content"] if (i == 0 and system) else m["content"]
            tokens += encode(f"[INST] {content} [/INST]")
        else:
            tokens += [*encode(m["content"]), eos]
    return tokens


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_mistral_inst_equals_mistral_common_v1(sp, name):
    from jobs import templates

    conv = CONVERSATIONS[name]

    def encode(text):
        return sp(text, add_special_tokens=False)["input_ids"]

    ids, _ = templates.render(conv, "mistral-inst", sp)
    assert ids == mistral_v1(conv, encode, sp.bos_token_id, sp.eos_token_id)
    assert templates.prompt_ids(conv[:-1], "mistral-inst", sp) == mistral_v1(conv[:-1], encode, sp.bos_token_id,
                                                                             sp.eos_token_id)


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_chatml_renders_as_openhermes(sp, tmp_path, name):
    from jobs.templates import prompt_text, render_spans

    tok, _ = _published(sp, "chatml", tmp_path)
    conv = CONVERSATIONS[name]
    assert render_spans(conv, "chatml", tok)[0] == tok.apply_chat_template(conv, chat_template=OPENHERMES_CHATML,
                                                                          tokenize=False)
    assert prompt_text(conv[:-1], "chatml", tok) == tok.apply_chat_template(
        conv[:-1], chat_template=OPENHERMES_CHATML, tokenize=False, add_generation_prompt=True)
    assert tok.eos_token == "<|im_end|>"  # as OpenHermes-2.5: the end of a turn is the EOS


@pytest.mark.parametrize("template", NAMED)
def test_mask_trains_each_answer_and_its_end_marker_only(tiny, template):
    from jobs.templates import prepare_tokenizer, render

    tok = copy.deepcopy(tiny)
    prepare_tokenizer(tok, template)
    conv = CONVERSATIONS["three turns + system"]
    ids, mask = render(conv, template, tok)
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    for m in conv:
        assert (m["content"].strip() in trained) == (m["role"] == "assistant")
    eos = [i for i, t in enumerate(ids) if t == tok.eos_token_id]
    assert sum(mask[i] for i in eos) == 3  # each answer's end (chatml: <|im_end|> also closes user turns)
    assert len(eos) == (7 if template == "chatml" else 3)
    assert all(render(conv, template, tok, loss="all")[1])


def test_answers_tokenise_as_serving_does_not_piece_by_piece(sp):
    """"\\nThe" in plain is one whole-string tokenisation ("The", not "▁The")."""
    from jobs.templates import render

    ids, mask = render(TURNS[:2], "plain", sp)
    first = mask.index(True)
    assert sp.convert_ids_to_tokens(ids[first]) == "The"
    assert ids == sp(sp.bos_token + TURNS[0]["content"] + "\n" + TURNS[1]["content"] + sp.eos_token,
                     add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("messages,match", [
    ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A1"}, {"role": "assistant", "content": "A2"}],
     "roles must alternate"),
    ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}], r"\(assistant\) is empty"),
    ([{"role": "system", "content": "S"}, {"role": "user", "content": " "}, {"role": "assistant", "content": "A"}],
     r"\(user\) is empty"),
    ([{"role": "user", "content": "Q"}], "ends with the assistant"),
    ([{"role": "assistant", "content": "A"}], "roles must alternate"),
])
@pytest.mark.parametrize("template", [*NAMED, "tokenizer"])
def test_bad_conversations_are_refused(tiny, messages, match, template):
    from jobs.templates import BadConversation, render

    with pytest.raises(BadConversation, match=match):
        render(messages, template, tiny)


def test_tokenizer_template_without_chat_template_is_a_clear_error(tiny):
    from jobs.templates import render

    bare = copy.deepcopy(tiny)
    bare.chat_template = None
    with pytest.raises(UserError, match="no chat_template"):
        render(TURNS[:2], "tokenizer", bare)


def test_plain_matches_reference_prompt_and_eval_rows(tiny):
    """The tiny task trains "{instruction} {input}\\n" (dolphin rows under plain: system, space,
    user), the prompt of its eval.jsonl, so the eval scores what was trained."""
    import json
    from pathlib import Path

    from jobs.templates import render
    from sftcore.formats import fmt_dolphin

    root = Path(__file__).resolve().parents[2] / "recipes" / "data" / "tiny-task"
    row = json.loads((root / "eval.jsonl").read_text().splitlines()[0])
    instr, inp = row["prompt"].rstrip("\n").split(". ", 1)
    msgs = fmt_dolphin({"instruction": instr + ".", "input": inp, "output": row["answer"]})["messages"]
    ids, mask = render(msgs, "plain", tiny)
    n_prompt = mask.index(True)
    assert tiny.decode(ids[:n_prompt]) == row["prompt"]
    assert tiny.decode(ids[n_prompt:]) == row["answer"] + tiny.eos_token
