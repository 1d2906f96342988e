"""The project's random-initialised models: a tiny Llama plus a BPE tokenizer, built locally, and
toy-sized models of today's other families (Qwen2, Gemma 2, Mistral, Qwen3-MoE) in the same way.

Why it exists: the machines that run the tests have no GPU and no route to the model hub, yet
training, eval, publish and generate must all be exercised end to end on a real
`LlamaForCausalLM` with a real fast tokenizer. Building it here (seeded, a few seconds on CPU)
keeps every test offline and byte-for-byte reproducible.

The tokenizer is byte-level BPE (any text encodes, nothing maps to <unk>) trained on the tiny
task's training rows plus a fixed sample of chat-template markup, so the tiny task's words are
single tokens and sequences stay short. pad != eos, so the collator's padding never hides the
EOS label that teaches the model to stop.

Families (`ensure_tiny(family=...)`): each is the family's real transformers architecture at a
toy size, with its special tokens and a chat template transcribed from the family's published
instruct tokenizer (tool-calling branches left out), so recipes that say `template: tokenizer` and
name the family's module names (q_proj, gate_proj, fused MoE experts...) are exercised on CPU.
Checked once by hand on 2026-12-03 (the Hub is unreachable here, so not in the test suite):
rendered beside the published templates (Gemma 2 and Qwen3 as vendored in llama.cpp's
models/templates, Qwen2.5-Instruct's tokenizer_config.json) for 24 conversations each (1-3 turns,
with and without a system message and a generation prompt, Qwen3 answers with <think> blocks):
identical strings; Mistral Small's against mistral_common 1.13.1's InstructTokenizerV7 over a
Tekken tokenizer, 6 conversations with a system message: identical (without one, ours supplies a
shortened default system prompt, on purpose).

`python -m jobs.tiny [FAMILY]` builds (or finds) one and prints its directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sftcore import contract
from sftcore.contract import JobEnv

TINY_MODEL_ID = contract.TINY_MODEL_ID
# Bump when anything below changes what gets built: a cached copy with another version is rebuilt.
BUILD_VERSION = 1
FAMILY_BUILD_VERSION = 1  # the same, for the other families (their builds change apart from the Llama's)
SEED = 0
VOCAB_SIZE = 512
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
MODEL_SHAPE = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
}
MARKER = "sftlaunch-tiny.json"
TASK_TRAIN = Path(__file__).resolve().parent.parent / "recipes" / "data" / "tiny-task" / "train.jsonl"
# A simple chat template so `template: tokenizer` and chat-style generation work on the tiny model.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# Markup of the supported templates, so their tags become few tokens rather than dozens of bytes.
_MARKUP = [
    "[INST] <<SYS>>\n", "\n<</SYS>>\n\n", " [/INST] ", "<|im_start|>system\n", "<|im_start|>user\n",
    "<|im_start|>assistant\n", "<|im_end|>\n", "<|user|>\n", "<|assistant|>\n", "<|system|>\n",
    "### Human: ", "### Assistant: ", "You are a helpful assistant.",
]

# Chat templates of the families' instruct models (tool branches left out).
QWEN2_TEMPLATE = (  # Qwen/Qwen2.5-*-Instruct tokenizer_config.json
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}{%- if (message.role == 'user') or (message.role == 'system' and not loop.first)"
    " or (message.role == 'assistant') %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
GEMMA2_TEMPLATE = (  # google/gemma-2-*-it tokenizer_config.json: no system role
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
MISTRAL_TEMPLATE = (  # mistralai/Mistral-Small-24B-Instruct-2501 (V7-Tekken); its long default system prompt shortened
    "{%- set default_system_message = 'You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI.' %}"
    "{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set system_message = default_system_message %}"
    "{%- set loop_messages = messages %}{%- endif %}{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}"
    "{%- for message in loop_messages %}{%- if message['role'] == 'user' %}{{- '[INST]' + message['content'] + '[/INST]' }}"
    "{%- elif message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + message['content'] + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'assistant' %}{{- message['content'] + eos_token }}"
    "{%- else %}{{- raise_exception('Only user, system and assistant roles are supported!') }}{%- endif %}{%- endfor %}"
)
QWEN3_TEMPLATE = (  # Qwen/Qwen3-30B-A3B: the last turn's answer gets a <think> block, earlier ones lose theirs
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if ns.multi_step_tool and message.role == 'user' %}{%- set ns.multi_step_tool = false %}"
    "{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{%- set content = message.content %}{%- set reasoning_content = '' %}"
    "{%- if '</think>' in content %}{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index %}{%- if loop.last or (not loop.last and reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)
_SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 16,
          # long enough for leaderboard-v2's generations (IFEval: up to 1,280 new tokens); RoPE has no weights
          "max_position_embeddings": 4096}


@dataclass(frozen=True)
class Family:
    """One architecture family at toy size: transformers classes, shape, tokens, chat template."""

    config: str  # transformers config class
    model: str  # transformers model class
    shape: dict
    specials: dict  # bos/eos/pad/unk token strings
    extra_specials: tuple[str, ...]
    chat_template: str


_CHATML = ("<|im_start|>", "<|im_end|>")
FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaConfig", "LlamaForCausalLM", {**MODEL_SHAPE, "tie_word_embeddings": True},
                    {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}, (), CHAT_TEMPLATE),
    # Qwen2.5: GQA, q/k/v biases (Qwen2 modules), untied head; EOS is <|im_end|> like the instruct model.
    "qwen2": Family("Qwen2Config", "Qwen2ForCausalLM", {**_SMALL, "tie_word_embeddings": False},
                    {"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"},
                    (*_CHATML, "<|endoftext|>"), QWEN2_TEMPLATE),
    # Gemma 2: sliding-window layers alternating with global ones, logit soft-capping, tied head.
    "gemma2": Family("Gemma2Config", "Gemma2ForCausalLM",
                     {**_SMALL, "sliding_window": 16, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
                      "query_pre_attn_scalar": 16, "tie_word_embeddings": True},
                     {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
                     ("<start_of_turn>", "<end_of_turn>"), GEMMA2_TEMPLATE),
    # Mistral Small 3: head_dim set apart from hidden/heads, untied head, [INST] markup.
    "mistral": Family("MistralConfig", "MistralForCausalLM", {**_SMALL, "tie_word_embeddings": False},
                      {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
                      ("[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"), MISTRAL_TEMPLATE),
    # Qwen3-MoE: 8 experts, 2 per token, fused expert tensors in transformers 5, q/k norms.
    "qwen3_moe": Family("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                        {**_SMALL, "moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2,
                         "tie_word_embeddings": False},
                        {"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"},
                        (*_CHATML, "<|endoftext|>", "<think>", "</think>"), QWEN3_TEMPLATE),
}


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    cache = JobEnv.from_env().cache
    return Path(cache) if cache else Path.home() / ".cache" / "sftlaunch"


def _corpus(family: str = "llama") -> list[str]:
    texts = []
    with open(TASK_TRAIN, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts.append(f"{row['instruction']} {row['input']}\n{row['output']}")
    extra = [] if family == "llama" else ["<start_of_turn>model\n", "\n<think>\n\n</think>\n\n", "system\n", "user\n",
                                          "assistant\n", "You are Qwen, created by Alibaba Cloud."]
    return texts + (_MARKUP + extra) * 50


def _build_tokenizer(out: Path, family: str = "llama"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    fam = FAMILIES[family]
    sp = fam.specials
    specials = SPECIAL_TOKENS if family == "llama" else list(dict.fromkeys(
        [sp["unk_token"], sp["bos_token"], sp["eos_token"], sp["pad_token"], *fam.extra_specials]))
    tok = Tokenizer(models.BPE(unk_token=sp["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(family), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, **sp, model_max_length=fam.shape["max_position_embeddings"], padding_side="right",
        **({"additional_special_tokens": list(fam.extra_specials)} if fam.extra_specials else {}),
    )
    fast.chat_template = fam.chat_template
    fast.save_pretrained(out)
    return fast


def _build_model(out: Path, tokenizer, family: str = "llama") -> None:
    import torch
    import transformers

    fam = FAMILIES[family]
    config = getattr(transformers, fam.config)(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **fam.shape,
    )
    torch.manual_seed(SEED)
    model = getattr(transformers, fam.model)(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)


def _version(family: str) -> int:
    return BUILD_VERSION if family == "llama" else FAMILY_BUILD_VERSION


def _is_built(path: Path, family: str = "llama") -> bool:
    try:
        return json.loads((path / MARKER).read_text())["version"] == _version(family)
    except (OSError, ValueError, KeyError):
        return False


@contextlib.contextmanager
def _locked(lock_path: Path):
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_tiny(cache_dir: str | Path | None = None, family: str = "llama") -> Path:
    """Directory of the tiny model + tokenizer of `family` (default: the tiny Llama), built once per cache.

    Built in a temporary sibling directory and renamed into place, under an exclusive file lock,
    so concurrent callers (parallel tests, train + eval) either wait or see a complete copy.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; one of {', '.join(FAMILIES)}")
    root = cache_root(cache_dir)
    name = "tiny-llama" if family == "llama" else f"tiny-{family.replace('_', '-')}"
    final = root / name
    if _is_built(final, family):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{name}.lock"):
        if _is_built(final, family):
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users of a shared cache
        try:
            tokenizer = _build_tokenizer(tmp, family)
            _build_model(tmp, tokenizer, family)
            model_id = TINY_MODEL_ID if family == "llama" else f"sftlaunch/{name}"
            (tmp / MARKER).write_text(json.dumps({"model_id": model_id, "version": _version(family)}) + "\n")
            if final.exists():  # an older build version
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


if __name__ == "__main__":
    import sys

    print(ensure_tiny(family=sys.argv[1] if len(sys.argv) > 1 else "llama"))
