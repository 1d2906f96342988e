"""Models for the eval/publish/generate tests: the project's tiny model (jobs.tiny) when it is
there, else a throwaway random Llama with a word-level BPE tokenizer built here in ~1 s."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY_EVAL = REPO / "recipes" / "data" / "tiny-task" / "eval.jsonl"
WORDS = ["apple", "berry", "cherry", "grape", "lemon", "mango", "melon", "olive", "peach", "plum", "kiwi", "fig"]


def have_tiny() -> bool:
    try:
        import jobs.tiny  # noqa: F401
    except ImportError:
        return False
    return True


def throwaway_model(out: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [f"Reverse the words. {' '.join(WORDS[i:] + WORDS[:i])}\n" for i in range(len(WORDS))]
    tok.train_from_iterator(text * 5, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    cfg = LlamaConfig(vocab_size=len(t), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      bos_token_id=0, eos_token_id=1, pad_token_id=1)
    LlamaForCausalLM(cfg).save_pretrained(out)
    t.save_pretrained(out)
    return out


def tiny_model(tmp_dir: Path) -> Path:
    if have_tiny():
        from jobs.tiny import ensure_tiny

        return Path(ensure_tiny())
    return throwaway_model(tmp_dir / "throwaway-tiny")


def eval_rows_env(monkeypatch, tmp_dir: Path) -> None:
    """Point the tiny task at eval data: the shipped file when it has rows, else a small copy of
    the same task made here (the shipped file is written by another part of the project)."""
    if TINY_EVAL.is_file() and TINY_EVAL.stat().st_size > 0:
        monkeypatch.setenv("SFTLAUNCH_TINY_EVAL", str(TINY_EVAL))
        return
    import random

    rng = random.Random(0)
    rows = []
    for _ in range(40):
        ws = [rng.choice(WORDS) for _ in range(rng.randint(3, 5))]
        ans = " ".join(reversed(ws))
        choices = [ans, " ".join(ws), " ".join(ws[1:] + ws[:1]), " ".join(reversed(ws[1:] + ws[:1]))]
        rows.append({"prompt": f"Reverse the words. {' '.join(ws)}\n", "answer": ans, "choices": choices, "label": 0})
    path = tmp_dir / "tiny-eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("SFTLAUNCH_TINY_EVAL", str(path))


def quick_finetune(base: Path, out: Path, steps: int = 250, seed: int = 5) -> Path:
    """A minimal completion-only training loop on the tiny task (prompt → reversed words + EOS).
    Stand-in for `python -m jobs train` where that is not available, so the eval tasks' power to
    tell a trained model from an untrained one is still tested."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        ids, labels = [], []
        for _ in range(16):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 5))]
            prompt = tok(f"Reverse the words. {' '.join(words)}\n")["input_ids"]
            answer = tok(" ".join(reversed(words)))["input_ids"] + [tok.eos_token_id]
            ids.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        width = max(map(len, ids))
        x = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i in ids])
        y = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
        mask = (torch.arange(width)[None] < torch.tensor([len(i) for i in ids])[:, None]).long()
        model(input_ids=x, attention_mask=mask, labels=y).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
