"""What the command modules share: the console and number formatting."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from planner.metrics import fmt_value

console = Console(stderr=False)
err = Console(stderr=True)  # notes that must not mix with --json output


fmt = fmt_value  # a metric for a table: planner.metrics.fmt_value


class FiniteFloat(click.FloatRange):
    """A float option in [min, max] that refuses NaN and infinities (which FloatRange,
    comparing, lets through)."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


_F = TypeVar("_F", bound=Callable[..., Any])


def plan_instance_options(func: _F) -> _F:
    """``--instance`` and ``--force``: how a command that reads a plan finds its instance."""
    func = click.option("--force", is_flag=True,
                        help="Use the instance even if it changed since the plan was made "
                             "(sha256).")(func)
    return click.option("--instance", type=click.Path(dir_okay=False, path_type=Path),
                        help="The plan's instance [default: the path the plan records, then "
                             "<name>.json beside the plan, then instances/<name>.json].")(func)
