"""Solver observers (improving plans, stop): they never change what the solver decides,
every plan they see passes the checker, and a stop keeps the best plan so far."""

from __future__ import annotations

import threading

import pytest

from planner.checker import check_plan
from planner.domain import Plan
from planner.io import plan_to_json
from planner.service import SolveOptions, prepare, solve
from tests.conftest import ROOT


def test_observed_solve_decides_the_same() -> None:
    inst, cost = prepare(ROOT / "instances" / "tiny.json")
    plain = solve(inst, cost, SolveOptions(time_limit_s=20, workers=1, seed=0))
    seen: list[Plan] = []
    observed = solve(inst, cost, SolveOptions(time_limit_s=20, workers=1, seed=0,
                                              on_plan=seen.append, stop=threading.Event()))
    assert plain.solver.status == observed.solver.status
    # OPTIMAL only where the plan meets the instance's bound; CP-SAT's own status (of its
    # restricted model) is in the notes
    gap = plain.solver.gap
    assert gap is not None
    assert gap <= 1e-3 if plain.solver.status == "OPTIMAL" else gap > 1e-6
    assert "CP-SAT status of that model: OPTIMAL" in plain.solver.notes
    assert plain.schedule == observed.schedule
    assert plain.solver.objective == observed.solver.objective
    assert seen  # the best baseline at least, before CP-SAT's own solutions


def test_progress_plans_are_valid_and_improving() -> None:
    inst, cost = prepare(ROOT / "instances" / "swap.json")
    seen: list[Plan] = []
    final = solve(inst, cost, SolveOptions(time_limit_s=4, workers=1, on_plan=seen.append))
    assert seen
    objs = [p.solver.objective for p in seen]
    assert all(o is not None for o in objs)
    assert objs == sorted(objs, reverse=True)  # each one better than the one before
    assert seen[0].solver.notes.startswith("the best baseline")
    for p in seen:
        assert check_plan(inst, p.schedule, plan_to_json(p, inst)) == []
    assert final.solver.objective is not None and objs[-1] is not None
    assert final.solver.objective <= objs[-1] + 1e-9


def test_stop_keeps_the_best_plan_so_far() -> None:
    inst, cost = prepare(ROOT / "instances" / "mixed.json")
    stop = threading.Event()
    stop.set()  # stopped before CP-SAT starts: the best start plan is the answer
    plan = solve(inst, cost, SolveOptions(time_limit_s=60, workers=1, stop=stop))
    assert "best start plan" in plan.solver.status or "best baseline" in plan.solver.status
    assert check_plan(inst, plan.schedule, plan_to_json(plan, inst)) == []

    stop = threading.Event()
    seen: list[Plan] = []

    def on_plan(p: Plan) -> None:
        seen.append(p)
        if p.solver.notes.startswith("an improving CP-SAT"):
            stop.set()  # stop at CP-SAT's first improving solution

    backup = threading.Timer(15, stop.set)  # should CP-SAT not improve on the baseline
    backup.start()
    plan = solve(inst, cost, SolveOptions(time_limit_s=120, workers=1, on_plan=on_plan,
                                          stop=stop))
    backup.cancel()
    assert plan.solver.wall_s < 60  # it did not run to its 120 s limit
    assert "polish:" not in plan.solver.notes  # a stop writes the plan as it is, at once
    assert plan.solver.objective is not None and seen[-1].solver.objective is not None
    assert plan.solver.objective <= seen[-1].solver.objective + 1e-9
    assert check_plan(inst, plan.schedule, plan_to_json(plan, inst)) == []


def test_the_time_limit_covers_the_baselines(monkeypatch: pytest.MonkeyPatch) -> None:
    """`planner solve --time-limit T` ends near T: what the baselines took (seconds on
    1,000 requests) comes off CP-SAT's share, down to a floor."""
    import dataclasses

    import planner.service as service
    import planner.solver as solver_pkg

    inst, cost = prepare(ROOT / "instances" / "tiny.json")
    real = service.run_baselines

    def slow_baselines(*args: object, **kw: object) -> dict[str, service.BaselineResult]:
        return {k: dataclasses.replace(v, wall_s=1.5)  # three of them: 4.5 s in all
                for k, v in real(*args, **kw).items()}  # type: ignore[arg-type]

    limits: list[float] = []
    real_cpsat = solver_pkg.solve_cpsat

    def spy(instance, cost_, objective, opts, hints, **kw):  # type: ignore[no-untyped-def]
        limits.append(opts.time_limit_s)
        return real_cpsat(instance, cost_, objective, opts, hints, **kw)

    monkeypatch.setattr(service, "run_baselines", slow_baselines)
    monkeypatch.setattr(solver_pkg, "solve_cpsat", spy)
    plan = solve(inst, cost, SolveOptions(time_limit_s=6.5, workers=1))
    assert check_plan(inst, plan.schedule) == []
    solve(inst, cost, SolveOptions(time_limit_s=3, workers=1))
    assert limits == [pytest.approx(2.0), pytest.approx(0.2)]
