"""Shared Click options, as decorators, so every command spells them the same way."""

from __future__ import annotations

import click

CLOUD_CHOICES = ("runpod", "lambda", "gcp", "kubernetes")


def _merge_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    # `sftlaunch --json status` and `sftlaunch status --json` mean the same thing.
    root = ctx.find_root()
    return bool(value or (root.obj or {}).get("json"))


def json_option(f):
    return click.option(
        "--json", "as_json", is_flag=True, callback=_merge_json, expose_value=True,
        help="Print machine-readable JSON instead of a table.",
    )(f)


def cloud_option(f):
    return click.option(
        "--cloud", type=click.Choice(CLOUD_CHOICES, case_sensitive=False), default=None,
        help="Only consider this cloud (must be allowed by the recipe).",
    )(f)


class GpuType(click.ParamType):
    """`auto` or NAME[:COUNT] with a GPU the catalog knows, spelled as the catalog spells it.

    Checked here, at parse time, so every command taking --gpu refuses `H100:x`, `H100:0`, `:`
    or an unknown name with exit 2 before it plans or renders anything.
    """

    name = "GPU[:N]"

    def convert(self, value, param, ctx):
        if value is None or value == "auto":
            return value
        from launcher.catalog import canonical_gpu, unknown_gpu_message
        from sftcore.recipe import GPU_RE, gpu_count_problem

        text = str(value).strip()
        m = GPU_RE.match(text)
        problem = gpu_count_problem(m.group("count")) if m else None
        if problem:
            self.fail(f"{_short(value)}: {problem}", param, ctx)
        if not m:
            name, sep, count = text.partition(":")
            if sep and name and count.isdigit():
                why = f"the count must be 1 or more, got {count}"
            elif sep and name:
                why = f"the count must be a whole number, got {count!r}"
            else:
                why = "expected NAME[:COUNT]"
            self.fail(f'{_short(value)}: {why}; e.g. "H100:1", "A100-80GB:8", or auto', param, ctx)
        gpu = canonical_gpu(m.group("name"))
        if gpu is None:
            self.fail(unknown_gpu_message(m.group("name")), param, ctx)
        return f"{gpu}:{m.group('count')}" if m.group("count") else gpu


def _short(value) -> str:
    """A flag's value for a message: repr (a newline shows as \\n), cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


class RunIdType(click.ParamType):
    """A run id given on the command line, held to the shape `new_run_id` makes.

    Why: the id names a directory under the sftlaunch home, a cluster and a YAML value; `../../x`,
    an absolute path or a newline would write elsewhere or inject lines. Refused at parse time.
    """

    name = "RUN_ID"

    def convert(self, value, param, ctx):
        from launcher.runid import run_id_problem

        problem = run_id_problem(value)
        if problem:
            self.fail(f"{_short(value)}: {problem}", param, ctx)
        return value


def gpu_option(f):
    return click.option(
        "--gpu", type=GpuType(), default=None, metavar="GPU[:N]",
        help='Override resources.gpu, e.g. "H100:1" or "A100-80GB:8" (auto: the cheapest that fits).',
    )(f)


def fallbacks_option(f):
    return click.option(
        "--fallbacks", type=click.IntRange(1, 10), default=None, metavar="N",
        help="Render the first N fitting offers in plan order as SkyPilot's ordered resources "
             "(default: resources.fallbacks, 3); SkyPilot moves on when one has no capacity.",
    )(f)


def check_credentials_option(f):
    return click.option(
        "--check-credentials", is_flag=True,
        help="Ask SkyPilot's credential check (as `up --dry-run` does; a few seconds) and order the "
             "failover over the clouds it enables, exactly as `up` would launch.",
    )(f)


def yes_option(f):
    return click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")(f)


def dry_run_option(f):
    return click.option("--dry-run", is_flag=True, help="Show what would happen; change nothing.")(f)


def recipe_argument(f):
    return click.argument("recipe", type=click.Path(dir_okay=False, path_type=str))(f)
