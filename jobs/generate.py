"""Inference on a trained model: `python -m jobs generate` and the `sftlaunch generate/chat` commands.

Why the template matters: a fine-tune only answers well when the prompt is laid out exactly as
in training, so the template comes from the model's sftlaunch.json (written by training), not
from a guess. The loading path mirrors the reference workflow's basic inference: the base model
(optionally 4-bit NF4 through bitsandbytes), then the PEFT adapter on top.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sftcore.errors import UserError, job_exit


class GenerateInputError(UserError):
    """Bad input: one line, exit 2."""


@dataclass
class Loaded:
    model: object
    tokenizer: object
    template: str | None  # sftlaunch template name, None = tokenizer chat template or raw text
    device: str
    chat_kwargs: dict | None = None  # what training rendered prompts with (final/sftlaunch.json)


def load(ref: str, load_4bit: bool = False, revision: str | None = None) -> Loaded:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jobs.eval_model import EvalInputError, hub_missing, resolve_model

    try:
        spec = resolve_model(ref, revision)
    except EvalInputError as exc:
        raise GenerateInputError(str(exc)) from None
    cuda = torch.cuda.is_available()
    kwargs: dict = {}
    if load_4bit:
        if not cuda:
            raise GenerateInputError("--load-4bit needs a CUDA GPU (bitsandbytes 4-bit); drop it on CPU")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = "auto"
    else:
        kwargs["dtype"] = torch.bfloat16 if cuda else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.pretrained, revision=spec.revision, **kwargs)
        if spec.peft:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, spec.peft)
    except OSError as exc:  # files of a hub model missing or unreachable
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GenerateInputError(hub_missing(ref) if spec.revision else f"model {ref}: cannot load it ({first})") from None
    device = "cuda" if cuda else "cpu"
    if not load_4bit:
        model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer)
    return Loaded(model, tokenizer, spec.meta.get("template"), device, spec.meta.get("chat_template_kwargs") or None)


def prompt_ids(loaded: Loaded, messages: list[dict]) -> list[int]:
    """Token ids of the whole conversation up to where the assistant's next reply starts: the
    template rendered to one string and tokenised once, exactly as training and a serving stack do."""
    from jobs import templates
    from sftcore.errors import UserError

    tok = loaded.tokenizer
    try:
        if loaded.template and loaded.template != "tokenizer":
            return templates.prompt_ids(messages, loaded.template, tok, loaded.chat_kwargs)
        if getattr(tok, "chat_template", None):
            return templates.prompt_ids(messages, "tokenizer", tok, loaded.chat_kwargs)
    except UserError as exc:
        raise GenerateInputError(str(exc)) from None
    text = "\n".join(m["content"] for m in messages) + "\n"
    return tok(text)["input_ids"]


def context_length(loaded: Loaded) -> int | None:
    """Tokens the model attends to: max_position_embeddings, else the tokenizer's model_max_length."""
    n = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    if not n:
        n = getattr(loaded.tokenizer, "model_max_length", None)
        n = n if n and n < 10**9 else None  # transformers' "no limit" sentinel is ~1e30
    return n


def fit_history(loaded: Loaded, messages: list[dict], max_new_tokens: int,
                note: Callable[[str], None] | None = None) -> list[dict]:
    """The conversation, with the oldest user/assistant exchanges dropped (said through `note`)
    until its prompt plus max_new_tokens fits the context. The system message and the last user
    turn are always kept; if they alone do not fit, that is a GenerateInputError."""
    limit = context_length(loaded)
    if limit is None:
        return messages
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    body = messages[len(system):]
    dropped = 0
    while len(prompt_ids(loaded, system + body)) + max_new_tokens > limit:
        if len(body) <= 1:
            raise GenerateInputError(f"the prompt and --max-new-tokens {max_new_tokens} do not fit the model's "
                                     f"context of {limit} tokens; shorten the message or lower --max-new-tokens")
        body = body[2:]  # one user + assistant exchange, oldest first
        dropped += 1
    if dropped and note is not None:
        note(f"[context full: dropped the oldest {dropped} exchange{'s' if dropped != 1 else ''} "
             f"to fit {limit} tokens]\n")
    return system + body


def stream(loaded: Loaded, messages: list[dict], max_new_tokens: int = 256,
           temperature: float = 0.0) -> Iterator[str]:
    """Yield the reply as text pieces while the model generates (TextIteratorStreamer)."""
    import torch
    from transformers import TextIteratorStreamer

    ids = torch.tensor([prompt_ids(loaded, messages)], device=loaded.device)
    streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
    gen = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "max_new_tokens": max_new_tokens,
           "streamer": streamer, "pad_token_id": loaded.tokenizer.pad_token_id or loaded.tokenizer.eos_token_id}
    if temperature > 0:
        gen.update(do_sample=True, temperature=temperature)
    else:
        gen.update(do_sample=False)
    errors: list[BaseException] = []

    def work():
        try:
            with torch.no_grad():
                loaded.model.generate(**gen)
        except BaseException as exc:  # surfaced in the caller's thread
            errors.append(exc)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]


def reply(loaded: Loaded, messages: list[dict], write: Callable[[str], None],
          note: Callable[[str], None] | None = None, **kw) -> str:
    """Stream the reply to `messages` through `write`; a dropped-history notice goes to `note`."""
    messages = fit_history(loaded, messages, kw.get("max_new_tokens", 256), note)
    parts = []
    for piece in stream(loaded, messages, **kw):
        parts.append(piece)
        write(piece)
    return "".join(parts)


def chat_loop(loaded: Loaded, lines, write: Callable[[str], None], system: str | None = None,
              note: Callable[[str], None] | None = None, **kw) -> list[dict]:
    """One reply per input line, with the whole conversation as context (the oldest exchanges
    dropped, saying so through `note`, when the context is full); ends at EOF or /exit."""
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = history[:1] if system else []
            continue
        history.append({"role": "user", "content": text})
        try:
            answer = reply(loaded, history, write, note=note, **kw)
        except GenerateInputError as exc:  # this message alone is too long: say so, keep chatting
            history.pop()
            (note or write)(f"error: {exc}\n")
            continue
        write("\n")
        history.append({"role": "assistant", "content": answer.strip()})
    return history


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs generate", description="Generate from a trained model.")
    p.add_argument("--model", required=True, help="model dir, adapter dir or hub id")
    p.add_argument("--prompt", default=None, help="the user message; omit with --chat")
    p.add_argument("--chat", action="store_true", help="interactive: one reply per stdin line")
    p.add_argument("--system", default=None)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--load-4bit", action="store_true")
    p.add_argument("--revision", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return 2 if exc.code else 0
    if not args.chat and args.prompt is None:
        print("error: give --prompt TEXT or --chat", file=sys.stderr)
        return 2
    try:
        loaded = load(args.model, args.load_4bit, args.revision)
    except GenerateInputError as exc:
        return job_exit(exc)

    def write(s: str) -> None:
        sys.stdout.write(s)
        sys.stdout.flush()

    def note(s: str) -> None:
        sys.stderr.write(s)

    kw = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    try:
        if args.chat:
            chat_loop(loaded, sys.stdin, write, system=args.system, note=note, **kw)
        else:
            messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
                {"role": "user", "content": args.prompt}]
            reply(loaded, messages, write, note=note, **kw)
            write("\n")
    except GenerateInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
