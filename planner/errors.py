"""The project's exception types: the bottom module every layer raises from.

Each type carries the exit code and, where one helps, a hint that the CLI's
handler prints after the message. Library code raises these; only the CLI
(``planner.cli``) turns them into lines on stderr and an exit code, so the
solver, the checker, the executor and the I/O layer never import ``click``.

This module imports nothing from the package, so it can sit under every layer.
"""

from __future__ import annotations

from collections.abc import Iterable

EXIT_INPUT = 2  # bad input, an infeasible instance, a plan that cannot be replayed here
EXIT_INTERNAL = 70  # a bug: an exception no layer expected (sysexits EX_SOFTWARE)
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT)


class PlannerError(Exception):
    """A failure to report as clear lines (no traceback) with ``exit_code``.

    Parameters
    ----------
    lines
        One message, or several lines (one fault each, ``FILE: FIELD: what is wrong``).
    hint
        What to do about it; replaces the class's default hint.
    """

    exit_code: int = EXIT_INPUT
    hint: str | None = None

    def __init__(self, lines: str | Iterable[str] = "", *, hint: str | None = None) -> None:
        self.lines = [lines] if isinstance(lines, str) else [str(s) for s in lines]
        if hint is not None:
            self.hint = hint
        super().__init__("\n".join(self.lines))


class InputError(PlannerError):
    """One or more faults in an input file or option, each a line naming the file and field."""


class DomainError(PlannerError, ValueError):
    """A value that breaks the domain's rules; the message names the field."""


class GgufError(PlannerError, ValueError):
    """A GGUF file is missing, unreadable or lacks the metadata we need."""


class CostModelError(PlannerError, ValueError):
    """The cost model cannot answer for this configuration (unknown model or device)."""


class BaselineError(PlannerError):
    """A baseline policy cannot serve this instance (a model fits nowhere, say)."""


class SolveError(PlannerError):
    """The instance cannot be solved; the message says which model, device or request."""


class ExecuteError(PlannerError):
    """The plan cannot be replayed here (missing model file, unknown device...)."""


class Interrupted(PlannerError):
    """Ctrl-C or SIGTERM stopped a command; the message says what was kept."""

    exit_code = EXIT_INTERRUPTED
