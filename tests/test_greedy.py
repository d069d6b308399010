"""The list schedules that start the CP-SAT planner (``planner/solver/greedy.py``).

The hand-made cost model of ``tests/test_solver.py`` (10 layers of 1 GiB, loads 2 s,
0.1 s per token with every layer on the GPU, 0.2 s with half of them), on the two
GPUs of ``tests/test_polish.py``: "fast" holds every layer, "slow" half.
"""

from __future__ import annotations

import pytest

from planner.checker import check_plan
from planner.domain import Schedule
from planner.metrics import compute_metrics
from planner.solver.greedy import smith_with_loads, start_plan
from tests.test_polish import two_gpus
from tests.test_solver import RoundCost, instance


def _runs(sched: Schedule) -> dict[str | None, tuple[str, float, float]]:
    return {a.request: (a.device, round(a.start_s, 6), round(a.end_s, 6))
            for a in sched.actions if a.kind == "run"}


def test_earliest_completion_leaves_a_request_to_the_device_that_finishes_it_sooner() -> None:
    """r0 (100 tokens) at 0 and r1 (100 tokens) at 1 s. Both GPUs are free at 0; the
    first to be asked ("fast" sorts first) takes r0: load [0,2], r0 [2,12]. At 0 "slow"
    has nothing ready; at 1 s it would load A and run r1 by 1 + 2 + 20 = 23 s, while
    "fast" (free at 12, A resident) finishes it at 22 s: with the filter it waits, and
    r1 runs on "fast" [12,22]; without, on "slow" [3,23]."""
    inst = two_gpus([("r0", 0.0, 100), ("r1", 1.0, 100)])
    cost = RoundCost()
    plain = smith_with_loads(inst, cost)
    ect = smith_with_loads(inst, cost, earliest_completion=True)
    assert check_plan(inst, plain) == [] and check_plan(inst, ect) == []
    assert _runs(plain)["r1"] == ("slow", 3.0, 23.0)
    assert _runs(ect) == {"r0": ("fast", 2.0, 12.0), "r1": ("fast", 12.0, 22.0)}
    best = start_plan(inst, cost, "mean_response")
    assert compute_metrics(inst, best.actions).weighted_mean_response_s == \
        pytest.approx((12 + 21) / 2)


def test_one_device_gives_the_same_plan_either_way() -> None:
    """With nothing elsewhere the filter never holds a request back."""
    inst = instance(10, [("a1", "A", 0.0, 20), ("b", "B", 0.0, 20), ("a2", "A", 0.5, 10)])
    cost = RoundCost()
    assert smith_with_loads(inst, cost, earliest_completion=True).actions == \
        smith_with_loads(inst, cost).actions


def test_a_start_plan_past_its_deadline_is_given_up() -> None:
    """The list schedule weighs every waiting request at each decision (minutes on an
    overloaded trace of thousands), so the solver gives it a deadline: past it, none is
    returned (RuntimeError, as when no device can serve), and before it the plan is the
    same as without one."""
    import time

    inst = two_gpus([("r0", 0.0, 100), ("r1", 1.0, 100)])
    cost = RoundCost()
    with pytest.raises(RuntimeError, match="no time left"):
        start_plan(inst, cost, "mean_response", deadline=time.perf_counter() - 1.0)
    with pytest.raises(RuntimeError, match="ran out of time"):
        smith_with_loads(inst, cost, deadline=time.perf_counter() - 1.0)
    assert start_plan(inst, cost, "mean_response", deadline=time.perf_counter() + 60.0) == \
        start_plan(inst, cost, "mean_response")
