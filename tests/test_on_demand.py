"""Loads made on demand (``Action.on_demand``, plan format 1.1): Ollama and llama-swap load a
model when a request for it arrives, never before, so their plans mark each load with that
request; the checker, the re-timing, the executor and the plan files keep to it, and the
planner's own plans (which know the arrivals) may load ahead."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from planner.baselines.policies import BASELINES
from planner.checker import check_plan
from planner.costmodel import cost_model_for
from planner.domain import Action, Plan, Schedule, SolverInfo
from planner.errors import DomainError, InputError
from planner.executor.deps import earliest_times
from planner.executor.replay import Replay
from planner.io import load_instance, parse_schedule, plan_to_json
from planner.metrics import compute_metrics
from planner.retime import retime
from planner.service import SolveOptions, prepare, solve
from tests.test_checker import E1, E2, check, instance, valid_actions
from tests.test_executor import FakeEngine

ROOT = Path(__file__).resolve().parents[1]


def on_demand(i: int, request: str) -> list[Action]:
    acts = valid_actions()
    acts[i] = dataclasses.replace(acts[i], on_demand=request)
    return acts


def test_checker_accepts_a_load_made_when_its_request_has_arrived() -> None:
    # e2's load at 7.2 for b (qwen14b, arrived at 1.0)
    assert check(on_demand(7, "b")) == []


@pytest.mark.parametrize(("req", "says"), [
    ("d", "before its request d arrives"),  # d arrives at 30, the load at 7.2
    ("zz", "unknown request"),
    ("a", "of model llama3-8b, not the engine's"),  # e2 is qwen14b
])
def test_checker_rejects_a_load_on_demand_that_breaks_rule_5(req: str, says: str) -> None:
    acts = on_demand(7, req)
    found = check(acts)
    assert any(v.startswith("rule 5") and says in v for v in found), found


def test_only_loads_are_made_on_demand() -> None:
    with pytest.raises(DomainError):
        Action("unload", "e1", "box-gpu0", 0, 1, on_demand="a")


def test_plan_files_keep_on_demand_in_format_1_1() -> None:
    inst = instance()
    sched = Schedule((E1, E2), tuple(on_demand(7, "b")))
    data = plan_to_json(Plan("tiny", "x", SolverInfo("fcfs-lru", "FEASIBLE", 0.0, None, None,
                                                     0.0), sched, {}, "mean_response"), inst)
    assert data["format"] == "planner.plan/1.1"
    assert data["actions"][7]["on_demand"] == "b"
    back = parse_schedule(json.loads(json.dumps(data)), "plan.json")
    assert back.actions[7].on_demand == "b" and back.actions[0].on_demand is None
    plain = plan_to_json(Plan("tiny", "x", SolverInfo("cp-sat", "FEASIBLE", 0.0, None, None,
                                                      0.0), Schedule((E1, E2),
                                                                     tuple(valid_actions())),
                              {}, "mean_response"), inst)
    assert plain["format"] == "planner.plan/1"  # no load on demand: readable by version 1
    data["actions"][8]["on_demand"] = "b"  # a run
    with pytest.raises(InputError):
        parse_schedule(data, "plan.json")


def _d_alone() -> tuple[object, Schedule, Schedule]:
    """Request d (qwen14b, arrives at 30 s) alone, served by e2: a plan that loads e2 at
    0, and the same load made on demand."""
    inst = dataclasses.replace(instance(), requests=tuple(
        q for q in instance().requests if q.id == "d"))
    acts = (Action("load", "e2", "box-gpu0", 0, 5),
            Action("run", "e2", "box-gpu0", 30, 31, request="d", tokens_from=0, tokens_to=16))
    ahead = Schedule((E2,), acts)
    demand = Schedule((E2,), (dataclasses.replace(acts[0], start_s=30, end_s=35),
                              dataclasses.replace(acts[1], start_s=35, end_s=36)))
    demand = dataclasses.replace(demand, actions=(
        dataclasses.replace(demand.actions[0], on_demand="d"), demand.actions[1]))
    return inst, ahead, demand


def test_retime_and_earliest_times_wait_for_the_request_of_a_load_on_demand() -> None:
    inst, ahead, demand = _d_alone()
    assert check_plan(inst, ahead) == [] and check_plan(inst, demand) == []  # type: ignore[arg-type]
    cost = cost_model_for(inst, "analytic")  # type: ignore[arg-type]
    # a plan that loads ahead is dispatched at once: d runs on arrival
    run = next(a for a in retime(inst, cost, ahead).actions if a.kind == "run")  # type: ignore[arg-type]
    assert run.start_s == pytest.approx(30.0)
    # loaded on demand: the load waits for d, d waits for the load
    timed = retime(inst, cost, demand)  # type: ignore[arg-type]
    load = next(a for a in timed.actions if a.kind == "load")
    run = next(a for a in timed.actions if a.kind == "run")
    assert load.start_s == pytest.approx(30.0) and load.on_demand == "d"
    assert run.start_s == pytest.approx(load.end_s) and run.start_s > 30.0
    start, _end = earliest_times(list(demand.actions), {"d": 30.0})
    assert start[0] == 30.0 and start[1] == 35.0


def test_replay_dispatches_a_load_on_demand_when_its_request_arrives(tmp_path: Path) -> None:
    """Request c arrives at 2 s; e1's load is made on demand for it (fake engines)."""
    inst = dataclasses.replace(instance(), requests=tuple(
        q for q in instance().requests if q.id == "c"))
    acts = (Action("load", "e1", "box-gpu0", 2.0, 2.01, on_demand="c"),
            Action("run", "e1", "box-gpu0", 2.01, 2.1, request="c", tokens_from=0,
                   tokens_to=128))
    FakeEngine.crash_on = set()
    r = Replay(inst, Schedule((E1,), acts), {"llama3-8b": Path("x")}, tmp_path / "r.json",
               engine_factory=FakeEngine)
    r.run()
    load = next(x for x in r.records if x.action.kind == "load")
    assert load.status == "done" and load.measured_start_s >= 2.0


@pytest.mark.parametrize("name", ["fcfs-lru", "grouped"])
def test_ollama_and_llama_swap_load_on_demand_and_static_ahead(name: str) -> None:
    inst = load_instance(ROOT / "instances" / "swap.json")
    cost = cost_model_for(inst, "analytic")
    arrival = {q.id: q.arrival_s for q in inst.requests}
    model = {q.id: q.model for q in inst.requests}
    sched = BASELINES[name](inst, cost)
    loads = [a for a in sched.actions if a.kind == "load"]
    assert loads and all(a.on_demand is not None for a in loads)
    engines = {e.id: e for e in sched.engines}
    for a in loads:
        assert model[a.on_demand] == engines[a.engine].model  # type: ignore[index]
    # as the executor dispatches them, too, no load starts before its request arrives
    timed = retime(inst, cost, sched)
    assert check_plan(inst, timed) == []
    for a in timed.actions:
        if a.kind == "load":
            assert a.start_s >= arrival[a.on_demand] - 1e-6  # type: ignore[index]
    static = BASELINES["static"](inst, cost)
    assert all(a.on_demand is None for a in static.actions)  # deployed ahead


def test_the_planner_loads_ahead_of_arrivals_where_ollama_cannot(tmp_path: Path) -> None:
    """Request d alone: Ollama loads qwen14b when d arrives at 30 s and d waits for the load;
    the planner's plan (which starts from that one) loads it before, and d runs on arrival."""
    data = json.loads((ROOT / "instances" / "tiny.json").read_text())
    data["requests"] = [q for q in data["requests"] if q["id"] == "d"]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data))
    inst, cost = prepare(path)
    plan = solve(inst, cost, SolveOptions(time_limit_s=10.0))
    mine = compute_metrics(inst, plan.schedule.actions)
    ollama = plan.baselines["fcfs-lru"]["metrics"]
    assert check_plan(inst, plan.schedule) == []
    assert all(a.on_demand is None for a in plan.schedule.actions)
    assert mine.mean_response_s < ollama["mean_response_s"] - 1.0  # the load's seconds
    run = next(a for a in plan.schedule.actions if a.kind == "run")
    assert run.start_s == pytest.approx(30.0)
