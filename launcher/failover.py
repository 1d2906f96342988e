"""The launch order: which planned offer a launch starts on, and the ones SkyPilot falls over to.

One function, `launch_order`, answers it for `plan` (the order it prints), `render` (SkyPilot's
ordered resources in the task) and `up` (what it launches), so the three cannot disagree. Its
inputs are all explicit: the plan, how many choices, the budget, and the clouds usable now.

Usable clouds are those SkyPilot's credential check enables for compute. `up` always asks it.
`plan` and `render` ask it only with `--check-credentials` (`credentialed` below: the same
server-free check `up --dry-run` makes, SkyPilot imported in a child process, a few seconds),
because they must stay fast and work before any credentials exist. Without the flag they pass
`usable=None`, show the order over every allowed cloud and say which clouds' credentials were
not checked: on a machine where all of them are set up that is the order `up` launches.
Nothing here imports SkyPilot or the planner.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sftcore.clouds import CLOUDS
from sftcore.errors import UserError, one_line

BORDERLINE_PREMIUM = 1.10  # a confident fit is preferred over a borderline one costing up to 10% less


def best_fit(fitting: Sequence[Any]) -> Any | None:
    """The one choice among fitting candidates (in plan order, cheapest first): the cheapest,
    unless it is borderline and a confident fit costs at most 10% more (the estimate is not
    precise enough to promise a borderline fit)."""
    if not fitting:
        return None
    chosen = fitting[0]
    if chosen.borderline:
        sure = [x for x in fitting if not x.borderline and x.total_usd <= chosen.total_usd * BORDERLINE_PREMIUM]
        chosen = sure[0] if sure else chosen
    return chosen


def launch_order(result: Any, n: int, max_usd: float | None = None,
                 usable: Collection[str] | None = None) -> list[Any]:
    """[first choice, *fallbacks]: at most `n` fitting candidates of `result` (a Plan) on
    `usable` clouds (None: every cloud, credentials not checked), in plan order.

    The first is the plan's choice when its cloud is usable, else the same rule (`best_fit`)
    over the usable clouds; the caller judges it against max_usd. Fallbacks share its spot and
    node count (one task has one of each) and are left out when estimated above `max_usd`, so
    the budget holds for whichever one SkyPilot launches. [] when nothing fitting is usable."""
    if result.chosen is None:
        return []
    ok = [c for c in result.candidates if c.fits and (usable is None or c.cloud in usable)]
    first = result.chosen if any(c is result.chosen for c in ok) else best_fit(ok)
    if first is None:
        return []
    rest = [c for c in ok if c is not first and c.spot == first.spot and c.nodes == first.nodes
            and (max_usd is None or c.total_usd <= max_usd)]
    return [first] + rest[:max(0, n - 1)]


def considered_clouds(recipe: Any, cloud: str | None) -> list[str]:
    """The SkyPilot clouds a launch may use: --cloud, or the recipe's allowed ones in its order."""
    return [c for c in ([cloud] if cloud else recipe.resources.clouds) if c in CLOUDS]


def credentialed(clouds: Sequence[str]) -> frozenset[str]:
    """The clouds of `clouds` that SkyPilot's credential check enables for compute, asked as
    `up --dry-run` asks it (no API server started). Its own failure is bad input here (exit 2):
    the user asked for the check and it gave no answer."""
    from launcher.backends.sky import get_backend

    try:
        enabled = get_backend().offline().enabled_clouds(list(clouds))
    except Exception as exc:  # noqa: BLE001 - SkyPilot missing, its check timed out or failed
        raise UserError(f"--check-credentials: SkyPilot's credential check failed: {one_line(exc)}; "
                        "run `sky check` to see why, or leave out --check-credentials") from None
    return frozenset(c for c, ok in enabled.items() if ok)


def unchecked_note(clouds: Sequence[str]) -> str:
    """What `plan` and `render` say when they did not ask for credentials."""
    return (f"credentials not checked for {', '.join(clouds)}; `up` skips clouds without them "
            "(--check-credentials checks here)")


def no_usable_cloud(clouds: Sequence[str], usable: Collection[str]) -> str:
    """Why the order is empty although the plan chose: no fitting offer on a cloud with credentials."""
    without = [c for c in clouds if c not in usable]
    return (f"nothing that fits is on a cloud with credentials (none for {', '.join(without) or 'any'}); "
            "set one up (`sky check` says how) or allow another cloud in resources.clouds")
