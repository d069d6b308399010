"""Lower bounds valid for the instance: the queueing bound (fluid WSPT, the interval-indexed
LP) against exhaustive search on random tiny instances, SLO and tardiness bounds, and the
bound for plans with slot engines.

Uses the round-number cost model of ``tests/test_solver.py`` (10 layers of 1 GiB,
0.1 s per token at 10 GPU layers and 0.1 * (1 + (10-g)/5) s at g, loads 2 s,
unloads 1 s, free prefill).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import replace

import pytest

from planner.checker import check_plan
from planner.domain import GIB, Cluster, Gpu, Host, Instance
from planner.metrics import compute_metrics
from planner.solver import solve_cpsat
from planner.solver.bound import fluid_wspt, lower_bound
from tests.test_solver import Opts, RoundCost, baselines, brute_force, instance

# --- the queueing bound ----------------------------------------------------------------

def test_fluid_wspt_by_hand() -> None:
    """Speed 1 from t=0. Job x (release 0, work 4, weight 1), y (release 1, work 1,
    weight 4): x runs [0,1], y [1,2] (ratio 4 > 1/4), x [2,5].
    sum w*M: y: 4 * 1.5 = 6; x: (0.5*1 + 3.5*3) / 4 = 2.75. Finish 5."""
    wm, finish = fluid_wspt([(0.0, 4.0, 1.0), (1.0, 1.0, 4.0)], [(0.0, 1.0)])
    assert wm == pytest.approx(6 + 2.75)
    assert finish == pytest.approx(5.0)


def test_fluid_wspt_waits_for_capacity() -> None:
    """No speed before t=2, then 2: one job of work 4 runs [2,4]; M = 3."""
    wm, finish = fluid_wspt([(0.0, 4.0, 1.0)], [(2.0, 2.0)])
    assert wm == pytest.approx(3.0)
    assert finish == pytest.approx(4.0)


def _random_instance(rng: random.Random, many: bool = False) -> Instance:
    """1 GPU, 2 models, 2-3 requests; ``many``: 1-3 GPUs on 1-2 hosts and 2-3 models of
    10 GiB each on GPUs of 10-15 GiB (no two fit together at their fastest split:
    swaps or slow co-resident splits), 2-4 requests."""
    n = rng.randint(2, 4 if many else 3)
    models = "ABC" if many else "AB"
    reqs = [(f"r{i}", rng.choice(models), round(rng.uniform(0, 4), 1),
             rng.choice([5, 10, 20, 30])) for i in range(n)]
    inst = instance(rng.choice([10, 15, 20]), reqs)
    if many:
        gpus = [Gpu(f"g{k}", "test-gpu", int(rng.choice([10, 12, 15]) * GIB), "h")
                for k in range(rng.randint(1, 3 if n < 4 else 2))]
        two_hosts = len(gpus) > 1 and rng.random() < 0.5
        hosts = (Host("h", "test-cpu", 8, 64 * GIB, tuple(gpus[:1])),
                 Host("h2", "test-cpu", 8, 64 * GIB,
                      tuple(replace(g, host="h2") for g in gpus[1:]))) if two_hosts \
            else (Host("h", "test-cpu", 8, 64 * GIB, tuple(gpus)),)
        inst = replace(inst, cluster=Cluster(hosts))
    weights = [rng.choice([1.0, 2.0, 5.0]) for _ in reqs]
    return replace(inst, requests=tuple(replace(r, weight=w)
                                        for r, w in zip(inst.requests, weights, strict=True)))


def test_bound_below_exhaustive_optimum_on_random_tiny_instances() -> None:
    """60 random instances (1 GPU, 2 models, 2-3 requests with random arrivals,
    lengths and weights) and 100 with swaps forced (2-3 models of 10 GiB on 1-3 GPUs of
    10-15 GiB, on one or two hosts, 2-4 requests): the reported bound never exceeds the
    exhaustive search's best plan (every candidate split and GPU per request, every
    order, LRU eviction per GPU)."""
    rng = random.Random(7)
    tight = 0
    names: set[str] = set()
    for k in range(160):
        inst = _random_instance(rng, many=k >= 60)
        cost = RoundCost()
        best = brute_force(inst, cost, {})
        bound, name = lower_bound(inst, cost, None, "mean_response")
        assert bound <= best + 1e-9, (inst, bound, best)
        tight += "pooled" in name or "LP" in name
        names.add(name.split(" (")[0])
    assert tight > 0  # the queueing terms are what binds on some of them
    assert len(names) > 1, names


def _with_slos(rng: random.Random, objective: str) -> Iterator[
        tuple[Instance, float, float, str]]:
    """120 random tiny instances (40 of one kind, 80 of the other, as above) with SLOs of
    0.5-12 s: each with the exhaustive search's best value and the bound (and its name)
    for ``objective``."""
    for k in range(120):
        inst = _random_instance(rng, many=k >= 40)
        inst = replace(inst, objective=objective, requests=tuple(
            replace(r, slo_s=round(rng.uniform(0.5, 12.0), 1)) for r in inst.requests))
        cost = RoundCost()
        yield (inst, brute_force(inst, cost, {}, objective),
               *lower_bound(inst, cost, None, objective))


def test_tardiness_bound_below_exhaustive_optimum_on_random_tiny_instances() -> None:
    """The tardiness bound (the mean-response LP with T_j >= C_j - a_j - slo_j) stays at
    or below the exhaustive search's least weighted tardiness on 120 random tiny instances
    (the same kinds as above, SLOs drawn so that some requests must queue past theirs);
    on some the LP is above the per-request bound (it sees queueing)."""
    lp_wins = late = 0
    for inst, best, bound, name in _with_slos(random.Random(13), "tardiness"):
        assert bound <= best + 1e-9, (inst, bound, best)
        late += best > 0
        lp_wins += "LP" in name and bound > 1e-6
    assert late > 30  # the SLOs bite
    assert lp_wins > 0


def test_slo_bound_above_exhaustive_best_on_random_tiny_instances() -> None:
    """The SLO-attainment bound (the pooled machine with due times) stays at or above the
    exhaustive search's best attainment on 120 random tiny instances with random SLOs."""
    for inst, best, bound, _name in _with_slos(random.Random(17), "slo_attainment"):
        assert bound >= best - 1e-9, (inst, bound, best)


def test_slo_bound_sees_a_queue_by_hand() -> None:
    """Five 20-token requests of one model at t=0, SLO 6.5 s, one GPU that holds it (2 s a
    request) and its host (6 s): each alone meets its SLO (load 2 s + run 2 s). On the
    pooled machine (speed 1 + 1/3 once the loads end at 2 s) the work due by 6.5 s is at
    most 4/3 * 4.5 = 6 s: three requests, 0.6 (the per-request bound said 1.0). The best
    plan meets two (GPU runs end at 4, 6, 8 s; the host's first at 8 s): 0.4."""
    inst = instance(20, [(f"r{i}", "A", 0.0, 20) for i in range(5)],
                    objective="slo_attainment", slo=6.5)
    cost = RoundCost()
    bound, name = lower_bound(inst, cost, None, "slo_attainment")
    assert bound == pytest.approx(0.6)
    assert "deadline" in name
    assert brute_force(inst, cost, {}, "slo_attainment") == pytest.approx(0.4)


def test_lp_grid_refinement_is_valid_and_tightens(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a coarse first grid (few variables, short slots allowed) the LP refines its
    grid while its time allows: on random tiny instances every LP value it reports stays
    at or below the exhaustive optimum, and on some the refined grid beats the first."""
    from planner.solver import bound as bound_mod
    from planner.solver import bound_lp

    monkeypatch.setattr(bound_lp, "VAR_BUDGET", 8)
    monkeypatch.setattr(bound_lp, "MIN_SLOT_S", 0.02)
    monkeypatch.setattr(bound_lp, "ROUNDED_WHEN", 0.0)  # both families on every instance
    values: list[float] = []
    grids: list[tuple[bool, float, float]] = []  # (rounded, slot length, value) of each
    real_lp, real_grid = bound_mod.lp_request_bound, bound_lp._grid_bound

    def lp_spy(*args: object, **kw: object) -> float:
        values.append(real_lp(*args, **kw))  # type: ignore[arg-type]
        return values[-1]

    def grid_spy(*args: object, **kw: object) -> float | None:
        out = real_grid(*args, **kw)  # type: ignore[arg-type]
        grids.append((bool(kw.get("rounded")), float(args[5]),  # type: ignore[arg-type]
                      out if out is not None else -1.0))
        return out

    monkeypatch.setattr(bound_mod, "lp_request_bound", lp_spy)
    monkeypatch.setattr(bound_lp, "_grid_bound", grid_spy)
    rng = random.Random(11)
    refined_better = 0
    for k in range(40):
        inst = _random_instance(rng, many=k >= 20)
        cost = RoundCost()
        best = brute_force(inst, cost, {})
        values.clear()
        grids.clear()
        lower_bound(inst, cost, None, "mean_response")
        wsum = sum(r.weight for r in inst.requests)
        arr = sum(r.weight * r.arrival_s for r in inst.requests)
        # each family of grids (releases on them, or inside slots): the first grid
        # relaxed, then whole; the grids with the releases refined at least once, the
        # regular ones only to grids finer than those
        assert len(values) == 1 and values[0] == pytest.approx(max(v for *_, v in grids))
        for rounded in (True, False):
            mine = [(dt, v) for r, dt, v in grids if r == rounded]
            assert len(mine) >= (2 if rounded else 3), grids
            for _, v in mine:
                assert (v - arr) / wsum <= best + 1e-9, (inst, rounded, v, best)
            assert mine[0][1] <= mine[1][1] + 1e-6  # the relaxation never beats the whole
            if rounded:
                finest = min(dt for r, dt, _ in grids[3:] if not r)  # whole ones
                assert all(dt < finest for dt, _ in mine[2:]), grids
            else:
                refined_better += max(v for _, v in mine[2:]) > mine[1][1] + 1e-9
    assert refined_better > 0


def test_lp_without_one_device_rows_is_valid_and_no_tighter(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """When the time left cannot take the whole LP, the relaxed one (no rows keeping a
    request on one device at a time) is what comes back: on random tiny instances with
    swaps forced (1-3 GPUs) it stays at or below the exhaustive optimum and never above
    the whole LP's value; on some of them (several GPUs) the dropped rows cost bound."""
    from planner.solver import bound as bound_mod
    from planner.solver import bound_lp

    monkeypatch.setattr(bound_lp, "MIN_SLOT_S", 0.02)
    calls: list[bool] = []  # one_device of each grid solved
    values: list[float] = []  # what lp_request_bound returned
    real_grid, real_lp = bound_lp._grid_bound, bound_mod.lp_request_bound

    def grid_spy(*args: object, **kw: object) -> float | None:
        calls.append(bool(kw.get("one_device", True)))
        return real_grid(*args, **kw)  # type: ignore[arg-type]

    def lp_spy(*args: object, **kw: object) -> float:
        values.append(real_lp(*args, **kw))  # type: ignore[arg-type]
        return values[-1]

    monkeypatch.setattr(bound_lp, "_grid_bound", grid_spy)
    monkeypatch.setattr(bound_mod, "lp_request_bound", lp_spy)
    rng = random.Random(13)
    weaker = 0
    for _ in range(30):
        inst = _random_instance(rng, many=True)
        cost = RoundCost()
        best = brute_force(inst, cost, {})
        wsum = sum(r.weight for r in inst.requests)
        arr = sum(r.weight * r.arrival_s for r in inst.requests)
        got = []
        for ratio in (1e12, 0.0):  # relaxed only, then relaxed and whole
            monkeypatch.setattr(bound_lp, "WHOLE_OVER_RELAXED", ratio)
            bound_mod._CACHE.clear()
            calls.clear()
            values.clear()
            lower_bound(inst, cost, None, "mean_response")
            assert calls[0] is False and (ratio == 0.0) == any(calls), calls
            got.append(values[0])
        relaxed, whole = got
        assert (relaxed - arr) / wsum <= best + 1e-9, (inst, relaxed, best)
        assert relaxed <= whole + 1e-6
        weaker += relaxed < whole - 1e-6
    assert weaker > 0


def test_lp_past_its_size_limit_is_not_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    """An LP with more variables than MAX_VARS is not built nor solved (the other bounds
    stand alone)."""
    from planner.solver import bound_lp

    calls: list[int] = []
    real = bound_lp.linprog

    def spy(*args: object, **kw: object) -> object:
        calls.append(1)
        return real(*args, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(bound_lp, "linprog", spy)
    jobs = [bound_lp.LPJob(1.0, 2.0, 2.0, (2.0,), (0.0,)),
            bound_lp.LPJob(1.0, 1.0, 1.5, (1.0,), (0.5,))]
    # one device: the best plan has sum w C = 4.5 (the short one preempts the long one)
    assert bound_lp.lp_bound(jobs, [1], [{0: 1}], 10.0) >= 4.0 and calls
    calls.clear()
    monkeypatch.setattr(bound_lp, "MAX_VARS", 5)
    assert bound_lp.lp_bound(jobs, [1], [{0: 1}], 10.0) == 0.0 and not calls


def test_bound_below_cpsat_plans_with_preemption_and_cpu_engines() -> None:
    """The bound holds for plans outside the exhaustive search's space as well."""
    rng = random.Random(11)
    for k in range(10):
        inst = _random_instance(rng, many=k >= 6)
        cost = RoundCost()
        sched, info = solve_cpsat(inst, cost, "mean_response",
                                  Opts(time_limit_s=2, cpu_engines=True), baselines(inst, cost))
        assert check_plan(inst, sched) == []
        assert info.bound is not None and info.objective is not None
        assert info.bound <= info.objective + 1e-9

# --- the bound for plans with slot engines ------------------------------------------------

class StepCost(RoundCost):
    """RoundCost with slot steps: a step of ``c`` sequences takes one decode step times
    ``1 + 0.3 (c - 1)`` (two sequences: 1.3x one, so 0.65x the device time per token)."""

    def step_s(self, cfg, active, depth, prompt_tokens=0):  # type: ignore[no-untyped-def]
        if active <= 0:
            return self.prefill_s(cfg, prompt_tokens)
        return self.decode_s_per_token(cfg, depth) * (1 + 0.3 * (active - 1))


def _slot_plans(inst: Instance, cost: StepCost) -> list[object]:
    """Plans with slot engines: the baselines with 2 and 4 slots, and CP-SAT's one-slot
    plan (also a plan with at most 4 slots) and its runs re-dispatched on slot engines."""
    from planner.baselines.policies import BASELINES
    from planner.baselines.sim import BaselineError
    from planner.slots import retime_slot_runs
    from planner.solver.batching import batch_slots

    plans = []
    for k in (2, 4):
        for fn in BASELINES.values():
            with contextlib.suppress(BaselineError):
                plans.append(retime_slot_runs(inst, cost, fn(inst, cost, slots=k)))
    one, _ = solve_cpsat(inst, cost, "mean_response", Opts(time_limit_s=1),
                         baselines(inst, cost))
    plans.append(one)
    got = batch_slots(inst, cost, one, (1, 2, 4), "mean_response")
    if got is not None:
        plans.append(got[0])
    return plans


def test_slot_bound_sees_the_queue_of_a_full_engine() -> None:
    """Eight requests of 20 tokens at t=0 for one model, engines of up to 2 slots. The
    per-request bound is the load and one request alone: 2 + 20 x 0.1 = 4 s. Run in
    pairs (a pair's step 0.13 s, 2.6 s per pair) they end at 4.6, 7.2, 9.8 and 12.4,
    mean 8.5 s (fcfs-lru with 2 slots: 8.65 s). The LP sees that the tokens need
    8 x 20 x 0.065 = 10.4 s of the GPU, so its bound lies well above 4 s, and below
    8.5 s."""
    from planner.solver.bound import slot_plan_bound

    inst = instance(10, [(f"r{i}", "A", 0.0, 20) for i in range(8)])
    cost = StepCost()
    bound, name = slot_plan_bound(inst, cost, "mean_response", 2)
    assert "LP bound for slot engines" in name
    assert 5.0 < bound <= 8.5 + 1e-6, bound
    for plan in _slot_plans(inst, cost):
        assert check_plan(inst, plan) == []  # type: ignore[arg-type]
        assert bound <= compute_metrics(
            inst, plan.actions).weighted_mean_response_s + 1e-6  # type: ignore[attr-defined]


def test_slot_bound_below_every_slot_plan_on_random_tiny_instances() -> None:
    """40 random instances (1 GPU of 10-20 GiB, models A and B of 10 GiB, 3-6 requests
    arriving within 3 s, random lengths and weights): the bound for plans of up to 4
    slots is below every plan made for them (baselines with 2 and 4 slots, CP-SAT with
    one, and that plan batched), and every such plan passes the checker."""
    from planner.solver.bound import slot_plan_bound

    rng = random.Random(29)
    for _ in range(40):
        reqs = [(f"r{i}", rng.choice("AB"), round(rng.uniform(0, 3), 1),
                 rng.choice([5, 10, 20, 30])) for i in range(rng.randint(3, 6))]
        inst = instance(rng.choice([10, 15, 20]), reqs)
        inst = replace(inst, requests=tuple(replace(r, weight=rng.choice([1.0, 2.0, 5.0]))
                                            for r in inst.requests))
        cost = StepCost()
        bound = slot_plan_bound(inst, cost, "mean_response", 4)[0]
        for plan in _slot_plans(inst, cost):
            assert check_plan(inst, plan) == []  # type: ignore[arg-type]
            obj = compute_metrics(inst, plan.actions).weighted_mean_response_s  # type: ignore[attr-defined]
            assert bound <= obj + 1e-6, (reqs, bound, obj)
