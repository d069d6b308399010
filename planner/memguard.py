"""The executor's memory guard: refuse, before it starts, an action that would pass the budget.

A plan that passed the checker keeps every host within its memory on paper; on a
real machine the engines may hold more than their profiles said. Before a
``load`` or a ``kv_save`` starts, the guard adds what the action will hold (the
plan's ``host_bytes`` of the engine, or the saved state's ``bytes``) to what the
host holds *now*, and refuses the action when the sum passes the host's memory.

What a host holds now is, per engine worker, the larger of its measured resident
memory (above its idle footprint when no model is loaded) and, for a loaded
engine, the plan's ``host_bytes`` for it (an engine's memory grows while it runs:
compute buffers are touched by its first long prefill), plus the saved states held.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MiB = 2**20


class MemoryRefused(RuntimeError):
    """An action was refused because it would pass its host's memory budget."""


@dataclass(frozen=True)
class Holding:
    """What one engine worker holds now."""

    engine: str
    host: str
    measured_bytes: int  #: resident memory now (above idle when unloaded)
    planned_bytes: int  #: the plan's host_bytes when loaded, else 0

    @property
    def bytes(self) -> int:
        return max(self.measured_bytes, self.planned_bytes)


class MemoryGuard:
    """Admission check for actions that take host memory.

    Parameters
    ----------
    budgets:
        Host id -> bytes the instance allows there.
    holdings:
        Returns what every engine worker holds now (measured when called).
    states:
        Returns host id -> bytes of saved states held there now.
    """

    def __init__(self, budgets: dict[str, int], holdings: Callable[[], list[Holding]],
                 states: Callable[[], dict[str, int]]) -> None:
        self.budgets = budgets
        self.holdings = holdings
        self.states = states
        self.refusals: list[str] = []

    def in_use(self, host: str) -> int:
        return sum(h.bytes for h in self.holdings() if h.host == host) + \
            self.states().get(host, 0)

    def admit(self, host: str, need: int, what: str) -> None:
        """Raise :class:`MemoryRefused` if ``need`` more bytes would pass ``host``'s budget."""
        budget = self.budgets.get(host)
        if budget is None:
            return
        used = self.in_use(host)
        if used + need > budget:
            msg = (f"memory guard refused {what}: it needs {need / MiB:.0f} MiB while {host} "
                   f"holds {used / MiB:.0f} MiB, which would pass its budget of "
                   f"{budget / MiB:.0f} MiB by {(used + need - budget) / MiB:.0f} MiB")
            self.refusals.append(msg)
            raise MemoryRefused(msg)
