"""The note on gaps that may be mostly swaps (``service.swap_caveat``)."""

from __future__ import annotations

from planner.domain import Action, Engine, Schedule, SolverInfo
from planner.service import SolveOptions, prepare, solve, swap_caveat
from planner.solver.bound import SWAP_BOUND_NAME
from tests.conftest import ROOT


def _plan(loads: int) -> Schedule:
    """Model A loaded ``loads`` times on g0 (one engine per load), and B once on g1."""
    engines = [Engine(f"a{k}", "A", "g0", 10, 512, 1, 0) for k in range(loads)]
    engines.append(Engine("b", "B", "g1", 10, 512, 1, 0))
    acts = [Action("load", e.id, e.device, 10.0 * k, 10.0 * k + 1)
            for k, e in enumerate(engines)]
    return Schedule(tuple(engines), tuple(acts))


def test_a_note_only_where_the_plan_swaps_and_the_gap_is_large() -> None:
    info = SolverInfo("cp-sat", "FEASIBLE", 10.0, 5.0, 0.5, notes="bound: LP")
    noted = swap_caveat(_plan(3), info)
    assert "not the plan's 2 loads after those" in noted.notes
    assert swap_caveat(_plan(1), info) == info  # every load a first one
    small = SolverInfo("cp-sat", "FEASIBLE", 10.0, 9.0, 0.1, notes="bound: LP")
    assert swap_caveat(_plan(3), small) == small
    swaps = SolverInfo("cp-sat", "FEASIBLE", 10.0, 5.0, 0.5, notes=f"bound: {SWAP_BOUND_NAME}")
    assert swap_caveat(_plan(3), swaps) == swaps  # that bound charges swaps
    assert swap_caveat(_plan(3), SolverInfo("fcfs-lru", "FEASIBLE", 10.0)).notes == ""


def test_a_swapping_plan_on_several_gpus_carries_the_note() -> None:
    """mixed.json (four GPUs, six models that never fit one GPU together) in 5 s: its plan
    loads models again, and its gap is above 0.3 with the LP bound."""
    inst, cost = prepare(ROOT / "instances" / "mixed.json")
    plan = solve(inst, cost, SolveOptions(time_limit_s=5, workers=1))
    loads = sum(a.kind == "load" for a in plan.schedule.actions)
    pairs = len({(e.model, e.devices) for e in plan.schedule.engines})
    assert plan.solver.gap is not None and plan.solver.gap >= 0.3 and loads > pairs
    assert f"not the plan's {loads - pairs} loads after those" in plan.solver.notes
