"""A plan that reaches the instance's bound is optimal: the solve ends there instead of
searching (and polishing) until its time limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from planner.checker import check_plan
from planner.cli import cli
from planner.io import load_instance
from planner.metrics import compute_metrics, objective_value
from planner.service import as_executed
from planner.solver import solve_cpsat
from planner.solver.bound import meets_bound
from planner.solver.model import CPModel
from tests.test_solver import Opts, RoundCost, baselines, instance


def test_meets_bound_in_both_directions() -> None:
    assert meets_bound(5.0, 5.0, "mean_response")
    assert meets_bound(5.0, 5.0 * (1 + 1e-9), "mean_response")  # rounding above the plan
    assert not meets_bound(5.01, 5.0, "mean_response")
    assert meets_bound(0.9, 0.9, "slo_attainment")  # maximised: the bound is above
    assert not meets_bound(0.8, 0.9, "slo_attainment")


def test_a_start_plan_at_the_bound_is_written_without_a_search(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One request of A at 5 s; A loads in 2 s and runs it in 1 s (10 tokens at 0.1 s).
    fcfs-lru loads A when the request arrives (response 3 s on its simulator's grid), but
    as the executor dispatches it the load starts at once and the request runs on
    arrival: 1 s, the per-request bound. So no search: CP-SAT must not run."""
    inst = instance(16, [("a1", "A", 5.0, 10)])
    cost = RoundCost()

    def no_search(*_args: object, **_kw: object) -> None:
        raise AssertionError("CP-SAT ran although a start plan is optimal")

    monkeypatch.setattr(CPModel, "solve", no_search)
    sched, info = solve_cpsat(inst, cost, "mean_response", Opts(time_limit_s=30.0),
                              baselines(inst, cost))
    assert check_plan(inst, sched) == []
    assert info.status == "OPTIMAL"
    assert "no search" in info.notes
    # the objective as written: the executor's times, at the bound
    sched, info = as_executed(inst, cost, sched, info, "mean_response")
    assert info.objective == pytest.approx(1.0, abs=1e-6)
    assert info.bound == pytest.approx(1.0, abs=1e-6)
    assert info.gap == pytest.approx(0.0, abs=1e-6)
    m = compute_metrics(inst, sched.actions)
    assert objective_value(m, "mean_response") == pytest.approx(1.0, abs=1e-6)


def test_the_search_ends_when_its_plan_reaches_the_bound(tmp_path: Path) -> None:
    """A light generated workload on the two servers (12 requests over 600 s, far apart):
    the best start plan does not reach the bound, CP-SAT's first plan does. The solve
    then ends at once: status OPTIMAL, no split rounds after it, no polish; the plan
    passes the checker."""
    inst_path, plan_path = tmp_path / "light.json", tmp_path / "plan.json"
    runner = CliRunner()
    res = runner.invoke(cli, ["instance", "generate", "-o", str(inst_path), "--rate", "0.004",
                              "--seed", "2"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["solve", str(inst_path), "--time-limit", "40", "-o",
                              str(plan_path)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    solver = json.loads(plan_path.read_text())["solver"]
    assert solver["status"] == "OPTIMAL"
    assert solver["gap"] == pytest.approx(0.0, abs=1e-6)
    assert "the plan reaches the bound" in solver["notes"]
    assert "no search" not in solver["notes"]  # CP-SAT's plan, not a start plan
    assert "(0 rounds" in solver["notes"] and "polish:" not in solver["notes"]
    res = runner.invoke(cli, ["validate", str(plan_path), "--instance", str(inst_path)],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert load_instance(inst_path).requests  # the workload is not empty


def test_a_plan_the_polish_brings_to_the_bound_is_reported_optimal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound is checked again after the polish (against the bound as it then stands):
    a plan at it is OPTIMAL, not FEASIBLE beside a gap of 0. Here the checks before the
    polish are made to fail, so the search and the polish run on a plan already at the
    bound (one request of A: load 2 s, run 1 s)."""
    import planner.solver.solve as solve_mod

    real, real_polish = solve_mod.meets_bound, solve_mod.polish
    polished: list[bool] = []
    after: list[bool] = []

    def not_before_the_polish(obj: float, bound: float, objective: str) -> bool:
        if not polished:
            return False
        after.append(real(obj, bound, objective))
        return after[-1]

    def polish(*args, **kw):  # type: ignore[no-untyped-def]
        polished.append(True)
        return real_polish(*args, **kw)

    monkeypatch.setattr(solve_mod, "meets_bound", not_before_the_polish)
    monkeypatch.setattr(solve_mod, "polish", polish)
    inst = instance(16, [("a1", "A", 5.0, 10)])
    cost = RoundCost()
    sched, info = solve_cpsat(inst, cost, "mean_response", Opts(time_limit_s=4.0),
                              baselines(inst, cost))
    assert polished and after and all(after)
    assert info.status == "OPTIMAL", info.status
    assert "the polished plan reaches the bound" in info.notes
    assert check_plan(inst, sched) == []


def test_a_written_plan_at_the_reported_bound_is_optimal() -> None:
    """`planner solve` marks the plan it writes OPTIMAL where it reaches the bound written
    beside it (a baseline kept at the bound, a slot plan at the slot bound), and leaves
    every other status alone."""
    from dataclasses import replace

    from planner.domain import SolverInfo
    from planner.service import _proven

    kept = SolverInfo("cp-sat", "FEASIBLE (baseline static kept)", 5.0, 5.0 * (1 - 1e-9), 0.0)
    got = _proven(kept, "mean_response")
    assert got.status == "OPTIMAL (baseline static kept)"
    assert got.notes.endswith("the plan written reaches the bound: no plan can do better")
    assert _proven(SolverInfo("cp-sat", "FEASIBLE", 5.01, 5.0), "mean_response").status == \
        "FEASIBLE"
    unknown = SolverInfo("cp-sat", "UNKNOWN: no CP-SAT solution in time", 5.0, 5.0)
    assert _proven(unknown, "mean_response").status == \
        "OPTIMAL: no CP-SAT solution in time"
    assert _proven(replace(unknown, bound=4.0), "mean_response").status == unknown.status
    infeasible = SolverInfo("cp-sat", "INFEASIBLE restricted model", 5.0, 5.0)
    assert _proven(infeasible, "mean_response") == infeasible
    assert _proven(SolverInfo("cp-sat", "FEASIBLE", 0.9, 0.9), "slo_attainment").status == \
        "OPTIMAL"
    assert _proven(SolverInfo("cp-sat", "FEASIBLE", 0.9, 0.95), "slo_attainment").status == \
        "FEASIBLE"
