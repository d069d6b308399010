"""A CP-SAT model with no solution at the end of its share goes on to its first one (the
grace period), rather than leave the plan to the start plans; rounds and phases that could
not reach a solution in the time left are not started. The slow presolve these tests need
is CP-SAT's probing, which the planner turns off (model.PROBING_LEVEL): they turn it on."""

from __future__ import annotations

import time

import pytest

import planner.solver.model as model_mod
import planner.solver.solve as solve_mod
from planner.checker import check_plan
from planner.service import SolveOptions, prepare, run_baselines, solve
from planner.solver.data import build_data
from planner.solver.model import CPModel, Frozen, SolveParams
from planner.solver.plan import hint_from_schedule
from planner.solver.solve import CANDIDATE_OPTIONS, PERIODS
from tests.conftest import ROOT


@pytest.fixture()
def slow_presolve(monkeypatch: pytest.MonkeyPatch) -> None:
    """CP-SAT's probing on (its default), as before PROBING_LEVEL: mixed.json's model then
    spends seconds in its presolve (2.45 s to its first solution on a 2-vCPU VM)."""
    monkeypatch.setattr(model_mod, "PROBING_LEVEL", 2)


def _mixed_model() -> CPModel:
    """mixed.json's monolithic model (220 requests, 1,704 options), hinted by its best
    baseline."""
    inst, cost = prepare(ROOT / "instances" / "mixed.json")
    base = {k: v.schedule for k, v in run_baselines(inst, cost, 1).items()
            if v.schedule is not None}
    data = build_data(inst, cost, base, CANDIDATE_OPTIONS, PERIODS, True, None)
    reqs = sorted(data.requests, key=lambda rd: (rd.arrival, rd.req.id))
    cp = CPModel(data, reqs, inst.objective, {e.key: PERIODS for e in data.engines},
                 Frozen(), 10**8)
    got = hint_from_schedule(data, base["static"])
    assert got is not None
    cp.add_hint(got[0])
    return cp


@pytest.mark.usefixtures("slow_presolve")
def test_a_model_without_a_solution_at_its_limit_stops_at_its_first_one() -> None:
    cp = _mixed_model()
    assert cp.solve(SolveParams(0.05, 1, 0, False)) is None  # no grace: nothing in 0.05 s
    t = time.perf_counter()
    sol = cp.solve(SolveParams(0.05, 1, 0, False, grace_s=300.0))
    wall = time.perf_counter() - t
    assert sol is not None and sol.status in ("FEASIBLE", "OPTIMAL")
    assert sol.first_s is not None and sol.first_s > 0.05
    # it stopped at that first solution, not at the end of its grace period
    assert wall < 150.0
    assert wall >= sol.first_s


@pytest.mark.usefixtures("slow_presolve")
def test_a_first_share_too_short_for_any_solution_still_gives_a_cp_sat_plan(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the grace period such a solve wrote 'UNKNOWN: no CP-SAT solution in time'
    and the polished start plan (292 requests on four GPUs at 15 s; here mixed.json with
    the first share cut to a hundredth of the search's time)."""
    monkeypatch.setattr(solve_mod, "FIRST_SHARE", 0.01)
    inst, cost = prepare(ROOT / "instances" / "mixed.json")
    plan = solve(inst, cost, SolveOptions(time_limit_s=20, workers=1))
    assert plan.solver.status == "FEASIBLE", plan.solver.status
    assert plan.solver.notes.startswith("monolithic CP-SAT model"), plan.solver.notes
    assert plan.solver.wall_s is not None and plan.solver.wall_s <= 20 + 2.0
    assert check_plan(inst, plan.schedule) == []
