"""`sftlaunch generate` and `sftlaunch chat`: talk to a run's model (or any model dir/hub id).

In-process on purpose (torch is imported only when the command runs): tokens stream straight to
the terminal and `chat` reads the terminal's lines, with nothing in between.
"""

from __future__ import annotations

import click

from sftcore.errors import UserError


def model_ref(target: str) -> str:
    """A run id (or unique prefix) → its local model dir; anything else is a model path or hub id."""
    from launcher.commands.eval import find_run, run_model_dir

    record = find_run(target)
    return str(run_model_dir(record)) if record is not None else target


def _load(target: str, load_4bit: bool, revision: str | None):
    from jobs.generate import GenerateInputError, load

    try:
        return load(model_ref(target), load_4bit=load_4bit, revision=revision)
    except GenerateInputError as exc:
        raise UserError(str(exc)) from None


def _write(text: str) -> None:
    click.echo(text, nl=False)


def _note(text: str) -> None:
    """Notices (history dropped to fit the context) go to stderr, apart from the reply."""
    click.echo(text, nl=False, err=True)


def _common(f):
    f = click.option("--revision", default=None, help="Hub revision of MODEL.")(f)
    f = click.option("--temperature", type=click.FloatRange(min=0), default=0.0, help="0 = greedy.")(f)
    f = click.option("--load-4bit", is_flag=True, help="Load the base model in 4-bit NF4 (needs a GPU).")(f)
    f = click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)(f)
    f = click.option("--system", default=None, help="System message (templates that have one).")(f)
    return click.argument("target", metavar="MODEL_OR_RUN")(f)


@click.command("generate")
@_common
@click.option("--prompt", required=True, help="The user message.")
def generate(target, system, max_new_tokens, load_4bit, temperature, revision, prompt):
    """Stream one reply to --prompt, laid out with the template the model was trained with."""
    from jobs.generate import GenerateInputError, reply

    loaded = _load(target, load_4bit, revision)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    try:
        reply(loaded, messages, _write, note=_note, max_new_tokens=max_new_tokens, temperature=temperature)
    except GenerateInputError as exc:
        raise UserError(str(exc)) from None
    click.echo()


@click.command("chat")
@_common
def chat(target, system, max_new_tokens, load_4bit, temperature, revision):
    """Chat: each line you type gets a reply; the whole conversation is kept as context (the oldest
    exchanges are dropped, with a notice, when it outgrows the model's context). /reset, /exit."""
    import sys

    from jobs.generate import chat_loop

    loaded = _load(target, load_4bit, revision)
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo("chat with the model; /reset forgets, /exit or Ctrl-D ends", err=True)

    def lines():
        stdin = click.get_text_stream("stdin")
        while True:
            if interactive:
                click.echo("> ", nl=False, err=True)
            line = stdin.readline()
            if not line:
                return
            yield line

    chat_loop(loaded, lines(), _write, system=system, note=_note, max_new_tokens=max_new_tokens, temperature=temperature)
