"""The ``planner`` command line: assembles the verbs of ``planner/commands/`` into one group.

Errors: every library layer raises the types of :mod:`planner.errors`; this
module alone turns them into lines on stderr (``Error: ...`` and a ``hint:``)
and their exit code (2 for bad input). Anything else escaping a command is a
bug: the last-resort handler prints one line and a hint to rerun with
``planner --debug ...`` (which prints the traceback), exit code 70.
Ctrl-C ends with exit code 130.
"""

from __future__ import annotations

import sys
import traceback
from typing import IO, Any

import click

from planner.commands.demo import demo
from planner.commands.execute import execute
from planner.commands.export import export_cmd
from planner.commands.instance import instance
from planner.commands.profile import profile
from planner.commands.profile_check import profile_check
from planner.commands.serve import serve
from planner.commands.show import show
from planner.commands.solve import solve
from planner.commands.study import study
from planner.commands.validate import validate
from planner.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, PlannerError

MAX_LINES = 20  # fault lines printed; the rest are counted


class ReportedError(click.ClickException):
    """A :class:`PlannerError` (or a bug) as click prints it: its lines, then its hint."""

    def __init__(self, lines: list[str], hint: str | None, exit_code: int) -> None:
        super().__init__("\n".join(lines))
        self.lines, self.hint = lines, hint
        self.exit_code = exit_code  # type: ignore[misc]  # click's is a class default

    def show(self, file: IO[Any] | None = None) -> None:
        for line in self.lines[:MAX_LINES]:
            click.echo(f"Error: {line}", err=True)
        if len(self.lines) > MAX_LINES:
            click.echo(f"Error: ... and {len(self.lines) - MAX_LINES} more", err=True)
        if self.hint:
            click.echo(f"hint: {self.hint}", err=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _args() -> str:
    return " ".join(sys.argv[1:]) or "..."


class PlannerGroup(click.Group):
    """The root group: runs the chosen verb and turns what escapes it into lines."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except PlannerError as exc:
            if debug:
                traceback.print_exc()
            raise ReportedError(exc.lines or [type(exc).__name__], exc.hint,
                                exc.exit_code) from None
        except KeyboardInterrupt:
            if debug:
                traceback.print_exc()
            raise ReportedError(["interrupted"], None, EXIT_INTERRUPTED) from None
        except Exception as exc:
            if debug:
                raise
            raise ReportedError([f"internal error: {_one_line(exc)}"],
                                f"this is a bug; `planner --debug {_args()}` prints the "
                                "traceback", EXIT_INTERNAL) from None


@click.group(cls=PlannerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="planner")
@click.option("--debug", is_flag=True, envvar="PLANNER_DEBUG",
              help="Print the traceback of any error (also PLANNER_DEBUG=1).")
def cli(debug: bool) -> None:
    """Capacity planner for serving several LLMs with llama.cpp on shared GPUs.

    \b
    Typical flow:
      planner profile --quick                  # measure this machine (cached)
      planner instance show instances/mixed.json  # fits, speeds, busy share
      planner solve instances/mixed.json       # plan: placement, layers, schedule
      planner validate solutions/mixed.json --instance instances/mixed.json
    Errors print one line per fault and exit with code 2;
    `planner --debug COMMAND ...` shows the traceback of any error.
    """


cli.add_command(profile)
profile.add_command(profile_check)
cli.add_command(solve)
cli.add_command(validate)
cli.add_command(instance)
cli.add_command(execute)
cli.add_command(show)
cli.add_command(export_cmd)
cli.add_command(demo)
cli.add_command(study)
cli.add_command(serve)


def main() -> None:
    cli(standalone_mode=True)


if __name__ == "__main__":
    main()
