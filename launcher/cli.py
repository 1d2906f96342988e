"""The `sftlaunch` command line.

Commands live in `launcher/commands/<name>.py` and are imported only when invoked: the table
below holds each command's one-line help, so `sftlaunch --help` imports nothing but click.
"""

from __future__ import annotations

import importlib
import io
import os
import sys

import click

from launcher import __version__
from sftcore.contract import Env

# name -> (module:attribute, short help). Kept as data so --help needs no imports.
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("launcher.commands.validate:validate", "Check recipes; report every error as file:line: field: message."),
    "plan": ("launcher.commands.plan:plan", "Estimate memory, time and cost; pick the cheapest GPU that fits."),
    "render": ("launcher.commands.render:render", "Print the SkyPilot task YAML for a recipe."),
    "data-preview": ("launcher.commands.data_preview:data_preview", "Token counts, padding, packing and rendered samples of a recipe's data."),
    "preflight": ("launcher.commands.preflight:preflight", "Check token, model access, Hub repo, bucket, data, image and cloud credentials before renting."),
    "up": ("launcher.commands.up:up", "Validate, plan, launch a run (cloud or --local) and print its run id."),
    "status": ("launcher.commands.status:status", "Show runs: where, state, progress, cost so far, eval average."),
    "logs": ("launcher.commands.logs:logs", "Show (or --follow) a run's logs."),
    "eval": ("launcher.commands.eval:eval_", "Score a run or model on the Open LLM Leaderboard v1 preset or custom tasks."),
    "generate": ("launcher.commands.generate:generate", "Generate text from a run's model or a model id/path."),
    "chat": ("launcher.commands.generate:chat", "Chat interactively with a run's model or a model id/path."),
    "serve": ("launcher.commands.serve:serve", "Serve a run's model behind an OpenAI-compatible API (SkyServe + vLLM, or --local)."),
    "teardown": ("launcher.commands.teardown:teardown", "Stop everything sftlaunch launched (only labelled resources)."),
    "image": ("launcher.commands.image:image", "Build or push the container image from docker/."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        target, _ = COMMANDS[name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                raise click.UsageError(f"`sftlaunch {name}` is not available in this version.") from None
            raise
        return getattr(module, attr)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        code = run(self, argv, prog_name or "sftlaunch")
        if standalone_mode:
            sys.exit(code)
        return code

    def format_commands(self, ctx, formatter):
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sftlaunch")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output where a command prints a table.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, as_json: bool) -> None:
    """sftlaunch: one recipe YAML → GPUs provisioned, model fine-tuned, evaluated, uploaded."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["json"] = as_json


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get(Env.DEBUG) == "1"


def _is_located(line: str) -> bool:
    # `file:line: field: message` lines are printed as they are.
    head = line.split(": ", 1)[0]
    parts = head.rsplit(":", 1)
    return len(parts) == 2 and parts[1].isdigit()


def run(group: click.Group, argv: list[str], prog_name: str = "sftlaunch") -> int:
    """Run the CLI and map exceptions to the exit codes (docs/architecture.md); never a traceback unless --debug.

    Every line printed here goes through `sftcore.masking.mask`: an error message may quote
    whatever the user typed (a flag value, a recipe value), and that may be a token.
    """
    from sftcore.errors import SftlaunchError

    debug = _debug_requested(argv)
    try:
        # With standalone_mode=False click returns ctx.exit(N)'s code instead of raising.
        rv = click.Group.main(group, args=argv, prog_name=prog_name, standalone_mode=False)
        if isinstance(rv, int) and not isinstance(rv, bool):
            return rv
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort as exc:
        cause = exc.__cause__ or exc.__context__  # click turns a KeyboardInterrupt into Abort
        if getattr(cause, "signum", None):  # launcher.signals.Terminated: SIGTERM 143, SIGHUP 129
            _say(f"Terminated by {cause.name}; `sftlaunch status` lists any run it had started.")
            return cause.exit_code
        _say("Aborted.")
        return 130
    except click.ClickException as exc:
        buf = io.StringIO()
        exc.show(file=buf)
        _say(buf.getvalue().rstrip("\n"))
        return 2 if exc.exit_code in (1, 2) else exc.exit_code
    except KeyboardInterrupt:
        _say("Interrupted.")
        return 130
    except SftlaunchError as exc:
        if debug:
            _full_tracebacks()
            raise
        for line in str(exc).splitlines() or [type(exc).__name__]:
            _say(line if _is_located(line) else f"error: {line}")
        return exc.exit_code
    except Exception as exc:  # a bug, not bad input: still one line unless --debug
        from sftcore.errors import disk_full, disk_full_message

        if disk_full(exc) and not debug:
            _say(f"error: {disk_full_message(exc, getattr(exc, 'filename', None))}")
            return 1
        if debug:
            _full_tracebacks()
            raise
        detail = " ".join(str(exc).split())
        _say(f"internal error: {type(exc).__name__}: {detail} (rerun with --debug for a traceback)")
        return 1
    return 0


def _say(text: str) -> None:
    """Every error line: secrets masked, and what the user typed (a flag, a run reference, a
    recipe value) with its control and bidi characters escaped, never sent to the terminal raw."""
    from sftcore.errors import printable
    from sftcore.masking import mask

    click.echo(printable(mask(text), keep_newlines=True), err=True)


def _full_tracebacks() -> None:
    """Undo `sys.tracebacklimit = 0`, which SkyPilot's ux_utils.print_exception_no_traceback
    leaves set when an exception escapes it; --debug promises a traceback."""
    if hasattr(sys, "tracebacklimit"):
        del sys.tracebacklimit


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(cli.main(args=list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
