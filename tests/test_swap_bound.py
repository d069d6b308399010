"""The swap-aware bound on one GPU (``planner/solver/bound_modes.py``): below the exhaustive
optimum on random tiny instances with swaps forced, by hand, and how the solve uses it.

Uses the round-number cost model of ``tests/test_solver.py``.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import ClassVar

import numpy as np
import pytest

from planner.checker import check_plan
from planner.costmodel.base import CostModel
from planner.domain import GIB, Cluster, Host, Instance
from planner.domain import EngineConfig as Config
from planner.solver import solve_cpsat
from planner.solver.bound import lower_bound
from tests.test_bounds import _random_instance
from tests.test_solver import NoPolish, Opts, RoundCost, baselines, brute_force, instance

# --- the swap-aware bound on one GPU ---------------------------------------------------

def _one_gpu_swaps(rng: random.Random) -> Instance:
    """``_random_instance(many=True)`` on one GPU of 10-15 GiB: 2-3 models of 10 GiB that
    never fit together at their fastest split, 2-4 requests."""
    inst = _random_instance(rng, many=True)
    gpu = replace(inst.cluster.hosts[0].gpus[0], host="h")
    return replace(inst, cluster=Cluster((Host("h", "test-cpu", 8, 64 * GIB, (gpu,)),)))


def _checked(rng: random.Random, n: int, make: Callable[[random.Random], Instance],
             cost: CostModel) -> Iterator[tuple[Instance, float]]:
    """``n`` random instances from ``make``, each with its swap bound (10 s of MIP),
    checked to be at or below the exhaustive search's best plan (every split and order,
    LRU eviction): (instance, bound)."""
    from planner.solver.bound import swap_bound

    for _ in range(n):
        inst = make(rng)
        best = brute_force(inst, cost, {})
        value = swap_bound(inst, cost, "mean_response", 10.0)
        assert value <= best + 1e-6, (inst, value, best)
        yield inst, value


def test_swap_bound_below_exhaustive_optimum_and_above_the_others_on_most() -> None:
    """80 random one-GPU instances with swaps forced: the swap-aware bound (a MIP over
    which memory groups run in each window) never exceeds the exhaustive search's best
    plan (every split and order, LRU eviction), and on most it is above every other
    bound (it charges the swaps they cannot)."""
    cost = RoundCost()
    above = applied = 0
    for inst, value in _checked(random.Random(17), 80, _one_gpu_swaps, cost):
        other, _name = lower_bound(inst, cost, None, "mean_response")
        applied += value > 0  # not where every request is of one model
        above += value > other + 1e-6
    assert applied > 60 and above > 40, (applied, above)


def test_swap_bound_with_narrow_windows_stays_below_the_optimum(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each request's window (its work after it counted at its end, without capacity)
    may end anywhere: with windows ending half a coarse slot after the relaxation's last
    work (most binding), the swap bound stays at or below the exhaustive optimum on 40
    random one-GPU instances with swaps forced, and the windows did end before the
    horizon on most of them."""
    from planner.solver import bound_modes as bm

    monkeypatch.setattr(bm, "WINDOW_SLOTS", 0.5)
    monkeypatch.setattr(bm, "WINDOW_CHANGES_AFTER", 0.0)
    real_solve = bm._solve
    narrowed: list[bool] = []

    def spy(setup: bm._Setup, ends: list[float], *args: object) -> object:
        if args[1]:  # the MIP, after the relaxation
            narrowed.append(min(ends) < setup.horizon - 1e-9)
        return real_solve(setup, ends, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(bm, "_solve", spy)
    for _ in _checked(random.Random(23), 40, _one_gpu_swaps, RoundCost()):
        pass
    assert sum(narrowed) > 20, narrowed


def test_swap_bound_slow_share_tangents_raise_it_and_stay_below_the_optimum(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The slow options' tangent rows (a share run at a slower split lengthens C - M:
    ``bound_modes`` docstring, "Slow options") on 40 random one-GPU instances with swaps
    forced: the bound with them never exceeds the exhaustive optimum, is never below the
    bound without them (the MIP solves these to optimality; more rows only raise it), and
    is above it on many (the partial splits are slower)."""
    from planner.solver import bound_modes as bm
    from planner.solver.bound import swap_bound

    rng = random.Random(31)
    raised = 0
    for _ in range(40):
        inst = _one_gpu_swaps(rng)
        cost = RoundCost()
        best = brute_force(inst, cost, {})
        monkeypatch.setattr(bm, "POINT_GAIN", 0.02)
        with_rows = swap_bound(inst, cost, "mean_response", 10.0)
        monkeypatch.setattr(bm, "POINT_GAIN", 0.0)
        without = swap_bound(inst, cost, "mean_response", 10.0)
        assert without - 1e-6 <= with_rows <= best + 1e-6, (inst, with_rows, without, best)
        raised += with_rows > without + 1e-6
    assert raised > 25, raised


def test_swap_bound_charges_the_swap_between_two_models_by_hand() -> None:
    """A (a1, a2) and B (b), 20 tokens each at 0 s, on a 10 GiB GPU that holds one model
    (10 GiB, loads 2 s, unloads 1 s, 2 s a request; the host holds none). The best plan:
    load A [0,2] a1 [2,4] a2 [4,6] unload [6,7] load B [7,9] b [9,11]: responses 4, 6
    and 11, mean 7. The other bounds run b beside A's requests, as if no swap were
    needed (pooled machine: 2, 4 and 6 s of work from 2 s, mean 6); the swap bound
    charges the change from A to B (at least 3 s with no A or B work): 6.875 here."""
    from planner.solver.bound import swap_bound

    inst = instance(10, [("a1", "A", 0.0, 20), ("b", "B", 0.0, 20), ("a2", "A", 0.0, 20)],
                    host_gib=1)
    cost = RoundCost()
    assert brute_force(inst, cost, {}) == pytest.approx(7.0)
    assert lower_bound(inst, cost, None, "mean_response")[0] == pytest.approx(6.0)
    value = swap_bound(inst, cost, "mean_response", 10.0)
    assert 6.5 < value <= 7.0


def test_swap_bound_grid_grows_with_the_time_given() -> None:
    """Given 17 s of MIP (a 30 % polish in a 60 s solve) the swap MIP's grid is VAR_BUDGET
    variables; given more (a longer limit, or half of it for the polish), the grid grows
    more slowly than the time."""
    from planner.solver import bound_modes as bm

    assert bm.grid_budget(17.0) == bm.VAR_BUDGET
    assert bm.grid_budget(bm.BUDGET_TIME_S) == bm.VAR_BUDGET
    sizes = [bm.grid_budget(t) for t in (40.0, 89.0, 300.0)]
    assert all(a < b for a, b in itertools.pairwise(sizes))
    assert all(n / bm.VAR_BUDGET < t / bm.BUDGET_TIME_S
               for n, t in zip(sizes, (40.0, 89.0, 300.0), strict=True))


def test_swap_bound_applies_to_one_gpu_and_mean_response_only() -> None:
    """No GPU big enough to matter, several GPUs, or another objective: 0 (not applied)."""
    from planner.solver.bound import swap_bound

    inst = instance(10, [("a1", "A", 0.0, 20), ("b", "B", 0.0, 20)], host_gib=1)
    cost = RoundCost()
    assert swap_bound(inst, cost, "mean_response", 10.0) > 0
    assert swap_bound(inst, cost, "makespan", 10.0) == 0.0
    roomy = instance(40, [("a1", "A", 0.0, 20), ("b", "B", 0.0, 20)], host_gib=1)
    assert swap_bound(roomy, cost, "mean_response", 10.0) == 0.0  # both fit together
    host = inst.cluster.hosts[0]
    two = replace(inst, cluster=Cluster((replace(host, gpus=(
        host.gpus[0], replace(host.gpus[0], id="g1"))),)))
    assert swap_bound(two, cost, "mean_response", 10.0) == 0.0


class SizedCost(RoundCost):
    """RoundCost with models of different sizes: A's layers 1 GiB, B's 0.7, C's 0.3."""

    SIZE: ClassVar[dict[str, float]] = {"A": 1.0, "B": 0.7, "C": 0.3}

    def gpu_bytes(self, cfg: Config) -> int:
        return int(cfg.n_gpu_layers * self.SIZE[cfg.model] * GIB)

    def host_bytes(self, cfg: Config) -> int:
        return int((self.LAYERS - cfg.n_gpu_layers) * self.SIZE[cfg.model] * GIB)


def _sized_instance(rng: random.Random) -> Instance:
    """One GPU of 10-13 GiB (the host holding the models or not), 2-4 requests of models
    A, B and C (10, 7 and 3 GiB with :class:`SizedCost`), random arrivals, lengths and
    weights."""
    n = rng.randint(2, 4)
    reqs = [(f"r{i}", rng.choice("ABC"), round(rng.uniform(0, 4), 1),
             rng.choice([5, 10, 20, 30])) for i in range(n)]
    inst = instance(rng.choice([10, 11, 12, 13]), reqs, host_gib=rng.choice([1, 64]))
    return replace(inst, requests=tuple(replace(r, weight=rng.choice([1.0, 2.0, 5.0]))
                                        for r in inst.requests))


def test_swap_bound_with_models_of_several_sizes_below_exhaustive_optimum() -> None:
    """60 random one-GPU instances with models of 10, 7 and 3 GiB on a GPU of 10-13 GiB
    (the host holding them or not), 2-4 requests: the swap bound, with a group system
    for each model whose fastest split holds more than half the GPU (several on some),
    never exceeds the exhaustive optimum and is above every other bound on some."""
    from planner.solver import bound_modes

    cost = SizedCost()
    above = several = 0
    for inst, value in _checked(random.Random(3), 60, _sized_instance, cost):
        other, _name = lower_bound(inst, cost, None, "mean_response")
        got = bound_modes.systems(inst, cost, "g0")
        several += got is not None and len(got[1]) > 1
        above += value > other + 1e-6
    assert several > 4 and above > 10, (several, above)


def test_swap_bound_with_lower_systems_below_exhaustive_optimum(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The second system per big level (``bound_modes.systems``: its big group from where
    the smallest model's fastest split no longer fits beside it) on 60 random one-GPU
    instances with models of 10, 7 and 3 GiB on a GPU of 10-13 GiB: the bound with it never
    exceeds the exhaustive optimum, the system is there on many, and the bound is higher
    with it than without on some (the big model's 8-9 layer splits, in ``mid`` with the
    small models before, now pay for a change to them)."""
    from planner.solver import bound_modes
    from planner.solver.bound import swap_bound

    cost = SizedCost()
    monkeypatch.setattr(bound_modes, "LOWER_SYSTEMS", True)
    lowered = higher = 0
    for inst, value in _checked(random.Random(41), 60, _sized_instance, cost):
        with_it = bound_modes.systems(inst, cost, "g0")
        monkeypatch.setattr(bound_modes, "LOWER_SYSTEMS", False)
        without = bound_modes.systems(inst, cost, "g0")
        if with_it is not None and len(with_it[1]) > len(without[1] if without else []):
            lowered += 1
            higher += value > swap_bound(inst, cost, "mean_response", 10.0) + 1e-6
        monkeypatch.setattr(bound_modes, "LOWER_SYSTEMS", True)
    assert lowered > 10 and higher > 5, (lowered, higher)


def test_solve_reports_the_swap_bound_where_it_is_the_largest() -> None:
    """The hand case above through ``solve_cpsat`` (3 s): the swap bound, computed while
    the polish runs, is the reported bound (named in the notes), below the plan."""
    inst = instance(10, [("a1", "A", 0.0, 20), ("b", "B", 0.0, 20), ("a2", "A", 0.0, 20)],
                    host_gib=1)
    cost = RoundCost()
    sched, info = solve_cpsat(inst, cost, "mean_response", Opts(time_limit_s=3, workers=1),
                              baselines(inst, cost))
    assert check_plan(inst, sched) == []
    assert "bound: swap-aware" in info.notes, info.notes
    assert info.bound is not None and info.objective is not None
    assert 6.5 < info.bound <= info.objective == pytest.approx(7.0)


def test_the_swap_bound_is_computed_without_the_polish_where_a_core_is_free(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the polish off (``--no-polish``) the swap bound runs from the search's start on
    a core CP-SAT's workers leave free, and is reported; without a free core it is not
    computed (the search keeps every core)."""
    import os

    inst = instance(10, [("a1", "A", 0.0, 20), ("b", "B", 0.0, 20), ("a2", "A", 0.0, 20)],
                    host_gib=1)
    cost = RoundCost()
    for cores, named in ((4, True), (1, False)):
        monkeypatch.setattr(os, "cpu_count", lambda n=cores: n)
        sched, info = solve_cpsat(inst, cost, "mean_response",
                                  NoPolish(time_limit_s=3, workers=1), baselines(inst, cost))
        assert check_plan(inst, sched) == []
        assert "polish:" not in info.notes, info.notes
        assert ("bound: swap-aware" in info.notes) is named, (cores, info.notes)
        assert info.bound is not None and info.bound <= info.objective + 1e-9


def test_highs_child_gives_the_mip_bound_and_is_stopped_at_its_deadline() -> None:
    """The swap MIP's solver in a child process: on a small knapsack (optimum known) it
    answers the MIP's value; on one it cannot finish it is given up at its deadline (not
    a cut round later) and no child is left running."""
    from scipy.sparse import csc_matrix

    from planner.solver import highs_child

    # max 5a + 4b + 3c, 2a + 3b + c <= 5, binaries: a and b (9); as a minimisation
    c = np.array([-5.0, -4.0, -3.0])
    a = csc_matrix(np.array([[2.0, 3.0, 1.0]]))
    got = highs_child.mip_dual_bound(c, a, np.array([-np.inf]), np.array([5.0]),
                                     np.zeros(3), np.ones(3), np.ones(3, dtype=bool), 20.0)
    assert got == pytest.approx(-9.0, abs=1e-6)
    # 80 random knapsack rows over 150 binaries: not solved in 12 s here
    rng = np.random.default_rng(5)
    n = 150
    big = csc_matrix(rng.integers(1, 20, size=(80, n)).astype(float))
    started = time.perf_counter()
    cost = -rng.integers(1, 50, size=n).astype(float)
    got = highs_child.mip_dual_bound(cost, big, np.full(80, -np.inf), np.full(80, 300.0),
                                     np.zeros(n), np.ones(n), np.ones(n, dtype=bool), 1.5)
    took = time.perf_counter() - started
    assert took < 1.5 + highs_child.GRACE_S + 0.5, took
    # the bound it had by then (its root's at least): finite, and below any 0/1 point's
    # value, e.g. the all-zero one (0) and no lower than the LP over the box (sum of costs)
    assert got is not None and cost.sum() <= got <= 0.0
    assert not highs_child.RUNNING
