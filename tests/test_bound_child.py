"""The bound computed again in a child process beside the polish
(``planner/solver/bound_child.py``): the same bound as in the process, at least as high
given more time, below every plan, and given up at its deadline."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from planner.costmodel import cost_model_for
from planner.io import load_instance
from planner.metrics import compute_metrics, objective_value
from planner.service import run_baselines
from planner.solver import bound_child, highs_child
from planner.solver.bound import _lower_bound

ROOT = Path(__file__).resolve().parent.parent


def _small_mixed() -> tuple:
    """The study's two-server cluster (four GPUs, two host CPUs) with its first 24
    requests: an LP bound that ends in moments."""
    inst = load_instance(ROOT / "instances" / "mixed.json")
    inst = replace(inst, requests=inst.requests[:24])
    return inst, cost_model_for(inst, "analytic")


def test_the_child_gives_the_instances_bound_at_least_as_high_and_below_every_plan() -> None:
    inst, cost = _small_mixed()
    here, name = _lower_bound(inst, cost, 1, "mean_response", 2.0)
    child = bound_child.RefinedBound(inst, cost, 1, "mean_response", time.perf_counter() + 20)
    got = child.value(time.perf_counter() + 25)
    assert got is not None
    value, child_name = got
    assert value >= here - 1e-9  # more time: the same grids and finer ones, the best kept
    assert child_name == name or value > here
    plans = [objective_value(compute_metrics(inst, b.schedule.actions), "mean_response")
             for b in run_baselines(inst, cost).values() if b.schedule is not None]
    assert plans and value <= min(plans) + 1e-9  # a valid bound: below every plan


def test_the_child_is_given_up_at_its_deadline() -> None:
    inst, cost = _small_mixed()
    # too little time for a child at all
    assert bound_child.RefinedBound(inst, cost, 1, "mean_response",
                                    time.perf_counter() + 0.5).value(
        time.perf_counter() + 5) is None
    # asked at once: the child is killed, no bound (and no wait)
    child = bound_child.RefinedBound(inst, cost, 1, "mean_response", time.perf_counter() + 30)
    started = time.perf_counter()
    assert child.value(time.perf_counter()) is None
    assert time.perf_counter() - started < 5.0
    assert child._proc is not None and child._proc.poll() is not None
    assert not highs_child.RUNNING
