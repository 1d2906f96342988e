"""The project's one random-initialised model: a tiny Llama plus a BPE tokenizer, built locally.

Why it exists: the machines that run the tests have no GPU and no route to the model hub, yet
training, eval, publish and generate must all be exercised end to end on a real
`LlamaForCausalLM` with a real fast tokenizer. Building it here (seeded, a few seconds on CPU)
keeps every test offline and byte-for-byte reproducible.

The tokenizer is byte-level BPE (any text encodes, nothing maps to <unk>) trained on the tiny
task's training rows plus a fixed sample of chat-template markup, so the tiny task's words are
single tokens and sequences stay short. pad != eos, so the collator's padding never hides the
EOS label that teaches the model to stop.

`python -m jobs.tiny` builds (or finds) it and prints its directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

from launcher import contract
from launcher.contract import Env

TINY_MODEL_ID = contract.TINY_MODEL_ID
# Bump when anything below changes what gets built: a cached copy with another version is rebuilt.
BUILD_VERSION = 1
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


def is_tiny(model_id: str | None) -> bool:
    return model_id == TINY_MODEL_ID


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(Env.CACHE)
    return Path(env) if env else Path.home() / ".cache" / "sftlaunch"


def _corpus() -> list[str]:
    texts = []
    with open(TASK_TRAIN, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts.append(f"{row['instruction']} {row['input']}\n{row['output']}")
    return texts + _MARKUP * 50


def _build_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=MODEL_SHAPE["max_position_embeddings"], padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def _build_model(out: Path, tokenizer) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, **MODEL_SHAPE,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)


def _is_built(path: Path) -> bool:
    try:
        return json.loads((path / MARKER).read_text())["version"] == BUILD_VERSION
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


def ensure_tiny(cache_dir: str | Path | None = None) -> Path:
    """Directory of the tiny model + tokenizer, built once per cache.

    Built in a temporary sibling directory and renamed into place, under an exclusive file lock,
    so concurrent callers (parallel tests, train + eval) either wait or see a complete copy.
    """
    root = cache_root(cache_dir)
    final = root / "tiny-llama"
    if _is_built(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / "tiny-llama.lock"):
        if _is_built(final):
            return final
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=root))
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users of a shared cache
        try:
            tokenizer = _build_tokenizer(tmp)
            _build_model(tmp, tokenizer)
            (tmp / MARKER).write_text(json.dumps({"model_id": TINY_MODEL_ID, "version": BUILD_VERSION}) + "\n")
            if final.exists():  # an older build version
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


if __name__ == "__main__":
    print(ensure_tiny())
