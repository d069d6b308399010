"""Solver depth: layer splits as a decision, the queueing bound, bursty workloads.

Uses the round-number cost model of ``tests/test_solver.py`` (10 layers of 1 GiB,
0.1 s per token at 10 GPU layers and 0.1 * (1 + (10-g)/5) s at g, loads 2 s,
unloads 1 s, free prefill).
"""

from __future__ import annotations

import contextlib
import itertools
import random
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import ClassVar

import numpy as np
import pytest

from planner.baselines.policies import static
from planner.checker import check_plan
from planner.costmodel import AnalyticCostModel
from planner.domain import GIB, Cluster, Gpu, Host, Instance, Model, Request, Schedule, SolverInfo
from planner.domain import EngineConfig as Config
from planner.generate import WorkloadSpec, generate_requests
from planner.metrics import compute_metrics
from planner.reference import reference_arch
from planner.solver import solve_cpsat
from planner.solver.bound import fluid_wspt, lower_bound
from tests.test_solver import NoPolish, Opts, RoundCost, baselines, brute_force, instance

# A: four requests of 40 tokens, B: two of 10, interleaved, on a 16 GiB GPU.
INTERLEAVED = [("a1", "A", 0.0, 40), ("b1", "B", 0.5, 10), ("a2", "A", 1.0, 40),
               ("b2", "B", 1.5, 10), ("a3", "A", 2.0, 40), ("a4", "A", 3.0, 40)]


def _interleaved_optimum(time_limit_s: float) -> tuple[Schedule, SolverInfo]:
    """INTERLEAVED on a 16 GiB GPU solved as ``planner solve`` does (the baselines' plans
    given, preemption off); the plan passes the checker and is the optimum, 63.8 / 6 s
    (worked out below)."""
    inst = instance(16, INTERLEAVED)
    cost = RoundCost()
    sched, info = solve_cpsat(inst, cost, "mean_response",
                              Opts(time_limit_s=time_limit_s, preemption=False),
                              baselines(inst, cost))
    assert check_plan(inst, sched) == []
    assert info.objective == pytest.approx(63.8 / 6, abs=3e-3)
    return sched, info


def test_optimum_uses_an_intermediate_split() -> None:
    """A at 10 layers (4 s per request) beside B at 6 (1.8 s) fills the 16 GiB GPU.
    Load B [0,2], b1 [2,3.8], b2 [3.8,5.6]; load A [2,4]; a1..a4 [5.6,9.6,13.6,17.6,
    21.6]: responses 3.3, 4.1, 9.6, 12.6, 15.6, 18.6, mean 63.8/6 = 10.633.
    With only the old candidates (most that fit: 10; half the GPU: 8) the best is
    B at 10 first, then swap to A: 2.5, 2.5, 11, 14, 17, 20, mean 67/6 = 11.167
    (both at 8 co-resident is slower: 0.14 s per token). Preemption off: the case is
    about splits (preemption cannot beat 10.633 here, it only enlarges the model).
    As ``planner solve`` does, the baselines' plans are given: the static baseline's
    split search proposes A 10 + B 6 (in arrival order, 11.733); CP-SAT orders it."""
    sched, _info = _interleaved_optimum(8)
    layers = {e.model: e.n_gpu_layers for e in sched.engines}
    assert layers == {"A": 10, "B": 6}  # 6: neither the most that fit (10) nor half (8)


def test_time_the_polish_leaves_goes_to_more_split_rounds() -> None:
    """The polish ends at once on this small plan; the rest of the time limit goes to
    more rounds of the split search (with more load periods per engine once CP-SAT has
    solved its model and no configuration is left to add), and the plan stays optimal
    and valid."""
    import re

    _sched, info = _interleaved_optimum(15)
    got = re.search(r"(\d+) more rounds in the time the polish left", info.notes)
    assert got is not None, info.notes
    assert int(got.group(1)) >= 1


def test_old_candidates_only_are_worse(monkeypatch: pytest.MonkeyPatch) -> None:
    import planner.solver.data as data_mod

    orig = data_mod.curves

    def old(*a: object, **k: object) -> dict[tuple[str, str], list[object]]:
        return {p: [c for c in cs if c.n_gpu_layers in (10, 8)]
                for p, cs in orig(*a, **k).items()}  # type: ignore[arg-type]

    monkeypatch.setattr(data_mod, "curves", old)
    inst = instance(16, INTERLEAVED)
    _s, info = solve_cpsat(inst, RoundCost(), "mean_response",
                           Opts(time_limit_s=8, preemption=False), {})
    assert info.objective == pytest.approx(67 / 6, abs=3e-3)


def test_70b_beside_8b_on_one_rtx_4090_plans() -> None:
    """The issue's case: static used to fail; now static and CP-SAT both plan it."""
    gpu = Gpu("box-gpu0", "rtx-4090", 24 * 2**30, "box")
    host = Host("box", "desktop-dual-channel", 16, 64 * 2**30, (gpu,))
    models = (Model("big", reference_arch("llama2-70b-q4_k_m")),
              Model("small", reference_arch("llama3-8b-q4_k_m")))
    reqs = tuple(Request(f"r{i}", "big" if i % 2 else "small", 5.0 * i, 256, 64)
                 for i in range(6))
    inst = Instance("70b-8b", Cluster((host,)), models, reqs, "mean_response")
    cost = AnalyticCostModel.for_instance(inst)
    st = static(inst, cost)
    assert check_plan(inst, st) == []
    sched, info = solve_cpsat(inst, cost, "mean_response",
                              Opts(time_limit_s=5, workers=2, cpu_engines=True),
                              {"static": st})
    assert check_plan(inst, sched) == []
    assert info.objective is not None and info.bound is not None
    assert info.bound <= info.objective


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


# --- generator ----------------------------------------------------------------------------

def test_bursty_arrivals_make_a_few_models_hot_per_period() -> None:
    rates = {m: 0.1 for m in "ABCDEF"}
    spec = WorkloadSpec(rates=rates, duration_s=1200, arrivals="bursty", hot_models=2,
                        burst_period_s=100, seed=3)
    reqs = generate_requests(spec)
    assert abs(len(reqs) - 0.6 * 1200) < 0.2 * 0.6 * 1200  # the total rate is kept
    for k in range(12):
        period = [r["model"] for r in reqs if 100 * k <= r["arrival_s"] < 100 * (k + 1)]
        counts = sorted((period.count(m) for m in rates), reverse=True)
        assert sum(counts[:2]) > 0.6 * len(period)  # two hot models take most of it
    again = generate_requests(spec)
    assert again == reqs  # seeded


def test_pareto_lengths_have_a_heavier_tail() -> None:
    base = dict(rates={"A": 1.0}, duration_s=2000, max_output=100000, seed=1)
    logn = [r["output_tokens"] for r in generate_requests(WorkloadSpec(**base))]  # type: ignore[arg-type]
    par = [r["output_tokens"] for r in generate_requests(
        WorkloadSpec(**base, lengths="pareto", tail_alpha=1.2))]  # type: ignore[arg-type]
    med = sorted(par)[len(par) // 2]
    assert 150 < med < 250  # same median (192)
    assert max(par) > 3 * max(logn)


# --- preemption where it pays ---------------------------------------------------------

# One 10 GiB GPU, model A at 10 layers (0.1 s per token, prefill 0.02 s per prompt
# token: 1 s for the 50-token prompts), KV save and restore 0.5 s each; a 1 GiB host
# leaves only splits 9 and 10, so no second engine of A fits beside the first.
LONG_LIGHT = [("L", "A", 0.0, 1000, 1.0), ("S1", "A", 5.0, 10, 1.0),
              ("S2", "A", 45.0, 10, 1.0), ("S3", "A", 85.0, 10, 1.0)]


def test_preemption_pays_for_a_long_light_request_ahead_of_short_heavy_ones() -> None:
    """L (1000 tokens, 101 s) arrives first; S1-S3 (2 s each, 50x L's weight per second
    of service) arrive at 5, 45 and 85 s, while L would run.

    Without preemption (hand-worked): load A [0,2]; the best is L last: S1 [5,7],
    S2 [45,47], S3 [85,87], L [87,188]: (2+2+2+188)/4 = 48.5. (L first: 289/4;
    L after S1: 202/4; after S2: 217/4.)
    Preempting L three times at the S arrivals (20, 390, 760 tokens): L [2,5],
    kv_save [5,5.5], S1 [5.5,7.5], kv_restore [7.5,8], L [8,45], save, S2 [45.5,47.5],
    restore, L [48,85], save, S3 [85.5,87.5], restore, L [88,112]:
    (2.5+2.5+2.5+112)/4 = 29.875, 0.616 of 48.5 (KV copies, 1 s, beat recomputing
    the 70-410-token context, 1.4-15.2 s)."""
    from tests.test_solver import PreemptCost, weighted_instance

    inst = weighted_instance([10], 1, LONG_LIGHT)
    cost = PreemptCost()
    base = baselines(inst, cost)
    off, info_off = solve_cpsat(inst, cost, "mean_response",
                                Opts(time_limit_s=5, preemption=False), base)
    on, info_on = solve_cpsat(inst, cost, "mean_response", Opts(time_limit_s=10), base)
    assert check_plan(inst, off) == [] and check_plan(inst, on) == []
    assert info_off.objective == pytest.approx(48.5, abs=3e-3)
    assert info_on.objective is not None
    assert info_on.objective <= 0.7 * 48.5
    assert info_on.objective == pytest.approx(29.875, abs=0.05)
    saves = [a for a in on.actions if a.kind == "kv_save" and a.request == "L"]
    assert len(saves) == 3  # preempted three times
    runs = [a for a in on.actions if a.kind == "run" and a.request == "L"]
    assert len(runs) == 4


# --- decomposition ------------------------------------------------------------------------

def test_parts_decomposition_is_valid_and_no_worse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Too large for one model (forced): one part per GPU with host RAM budgets, solved
    apart from the best start plan, then re-solved in pairs; valid and no worse."""
    from planner.solver import solve as solve_mod
    from tests.test_solver import PreemptCost, weighted_instance

    monkeypatch.setattr(solve_mod, "MAX_OPTIONS", 10)
    reqs = [(f"r{i}", "AB"[i % 2], float(i), 10 + 5 * (i % 3), 1.0 + (i % 2))
            for i in range(10)]
    inst = weighted_instance([10, 10], 24, reqs)
    cost = PreemptCost()
    base = baselines(inst, cost)
    sched, info = solve_cpsat(inst, cost, "mean_response", Opts(time_limit_s=6), base)
    assert "decomposition" in info.notes and "2 parts" in info.notes
    assert check_plan(inst, sched) == []
    best = min(compute_metrics(inst, s.actions).weighted_mean_response_s for s in base.values())
    assert info.objective is not None and info.objective <= best + 1e-9
    assert info.bound is not None and info.bound <= info.objective


def test_decomposition_parts_compute_no_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the whole instance's bound is computed: the parts' (each an LP of seconds on
    large instances) would be read by nobody and come out of the time limit."""
    from planner.solver import solve as solve_mod
    from tests.test_solver import PreemptCost, weighted_instance

    monkeypatch.setattr(solve_mod, "MAX_OPTIONS", 10)
    seen: list[Instance] = []
    real = solve_mod.lower_bound

    def spy(instance: Instance, *args: object, **kw: object) -> tuple[float, str]:
        seen.append(instance)
        return real(instance, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(solve_mod, "lower_bound", spy)
    reqs = [(f"r{i}", "AB"[i % 2], float(i), 10 + 5 * (i % 3), 1.0 + (i % 2))
            for i in range(10)]
    inst = weighted_instance([10, 10], 24, reqs)
    cost = PreemptCost()
    _sched, info = solve_cpsat(inst, cost, "mean_response", Opts(time_limit_s=4),
                              baselines(inst, cost))
    assert "2 parts" in info.notes
    assert seen and all(x is inst for x in seen)



def test_short_limit_solves_the_costliest_parts_first_and_keeps_the_rest() -> None:
    """Each part's sub-solve takes its share plus a set-up no share covers (here a fake
    sub-solve sleeps 0.3 s beyond its share and returns the part's plan as it is). With
    1.2 s in all, one part fits: the costlier one (weighted response in the start plan),
    and the other keeps its start plan; the notes say so, and the plan stays valid."""
    import time

    from planner.solver.decompose import solve_by_parts
    from tests.test_solver import PreemptCost, weighted_instance

    reqs = [(f"r{i}", "AB"[i % 2], float(i), 10 + 5 * (i % 3), 1.0 + 4 * (i % 2))
            for i in range(10)]
    inst = weighted_instance([10, 10], 24, reqs)
    cost = PreemptCost()
    base = baselines(inst, cost)["fcfs-lru"]
    gpu_of = {a.request: a.device for a in base.actions if a.kind == "run"}
    done = {a.request: a.end_s for a in base.actions if a.kind == "run"}
    weighted: dict[str, float] = {}
    for r in inst.requests:
        weighted[gpu_of[r.id]] = weighted.get(gpu_of[r.id], 0.0) + \
            r.weight * (done[r.id] - r.arrival_s)
    assert len(weighted) == 2 and len(set(weighted.values())) == 2
    costliest = max(weighted, key=lambda d: weighted[d])
    calls: list[tuple[str, float]] = []

    def sub_solve(sub: Instance, cost: object, objective: str, opts: object,
                  starts: dict[str, Schedule], n_ctx: object = None
                  ) -> tuple[Schedule, SolverInfo]:
        limit = float(opts.time_limit_s)  # type: ignore[attr-defined]
        calls.append((sub.name, limit))
        time.sleep(limit + 0.3)
        return starts["current"], SolverInfo("cp-sat", "FEASIBLE", 0.0, None, None, limit)

    sched, info = solve_by_parts(sub_solve, inst, cost, "mean_response",
                                 Opts(time_limit_s=1.2), base, "fcfs-lru",
                                 None, time.perf_counter())  # type: ignore[arg-type]
    assert [name.split("@")[1] for name, _ in calls] == [costliest]
    assert "1 of them, the least costly, kept their start plans" in info.notes
    assert check_plan(inst, sched) == []
    assert info.objective == pytest.approx(
        compute_metrics(inst, base.actions).weighted_mean_response_s)


# --- the split curve ------------------------------------------------------------------------

def test_split_curve_every_layer_small_models_and_3pct_steps_large_ones() -> None:
    from planner.costmodel.splits import DECODE_STEP, split_curve

    gpu = Gpu("g", "rtx-4090", 24 * 2**30, "h")
    host = Host("h", "desktop-dual-channel", 16, 64 * 2**30, (gpu,))
    models = (Model("big", reference_arch("llama2-70b-q4_k_m")),
              Model("small", reference_arch("llama3-8b-q4_k_m")))
    inst = Instance("c", Cluster((host,)), models, (Request("a", "big", 0, 256, 64),),
                    "mean_response")
    cost = AnalyticCostModel.for_instance(inst)
    small = split_curve(cost, "small", "g", 512, True, 24 * 2**30, 64 * 2**30)
    # every split, the output layer on the GPU (33) included
    assert sorted(s.cfg.n_gpu_layers for s in small) == list(range(34))
    big = split_curve(cost, "big", "g", 512, True, 24 * 2**30, 64 * 2**30)
    layers = [s.cfg.n_gpu_layers for s in big]
    fits = [g for g in range(82) if cost.gpu_bytes(replace(big[0].cfg, n_gpu_layers=g))
            <= 24 * 2**30]
    assert 0 in layers and max(fits) in layers and len(layers) < len(fits)
    times = [s.decode_s for s in big]  # fastest first
    assert times == sorted(times)
    assert all(b <= a * (1 + DECODE_STEP) + 1e-12 or j == len(times) - 1
               for j, (a, b) in enumerate(itertools.pairwise(times), start=1))
    # a host with room for nothing but the GPU-resident layers leaves only large splits
    tight = split_curve(cost, "small", "g", 512, True, 24 * 2**30, 2**30)
    assert tight and min(s.cfg.n_gpu_layers for s in tight) > 20


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


# --- the swap-aware bound on one GPU ---------------------------------------------------

def _one_gpu_swaps(rng: random.Random) -> Instance:
    """``_random_instance(many=True)`` on one GPU of 10-15 GiB: 2-3 models of 10 GiB that
    never fit together at their fastest split, 2-4 requests."""
    inst = _random_instance(rng, many=True)
    gpu = replace(inst.cluster.hosts[0].gpus[0], host="h")
    return replace(inst, cluster=Cluster((Host("h", "test-cpu", 8, 64 * GIB, (gpu,)),)))


def test_swap_bound_below_exhaustive_optimum_and_above_the_others_on_most() -> None:
    """80 random one-GPU instances with swaps forced: the swap-aware bound (a MIP over
    which memory groups run in each window) never exceeds the exhaustive search's best
    plan (every split and order, LRU eviction), and on most it is above every other
    bound (it charges the swaps they cannot)."""
    from planner.solver.bound import swap_bound

    rng = random.Random(17)
    above = applied = 0
    for _ in range(80):
        inst = _one_gpu_swaps(rng)
        cost = RoundCost()
        best = brute_force(inst, cost, {})
        other, _name = lower_bound(inst, cost, None, "mean_response")
        value = swap_bound(inst, cost, "mean_response", 10.0)
        assert value <= best + 1e-6, (inst, value, best)
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
    from planner.solver.bound import swap_bound

    monkeypatch.setattr(bm, "WINDOW_SLOTS", 0.5)
    monkeypatch.setattr(bm, "WINDOW_CHANGES_AFTER", 0.0)
    real_solve = bm._solve
    narrowed: list[bool] = []

    def spy(setup: bm._Setup, ends: list[float], *args: object) -> object:
        if args[1]:  # the MIP, after the relaxation
            narrowed.append(min(ends) < setup.horizon - 1e-9)
        return real_solve(setup, ends, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(bm, "_solve", spy)
    rng = random.Random(23)
    for _ in range(40):
        inst = _one_gpu_swaps(rng)
        cost = RoundCost()
        best = brute_force(inst, cost, {})
        value = swap_bound(inst, cost, "mean_response", 10.0)
        assert value <= best + 1e-6, (inst, value, best)
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
    from planner.solver.bound import swap_bound

    rng = random.Random(3)
    above = several = 0
    for _ in range(60):
        inst = _sized_instance(rng)
        cost = SizedCost()
        best = brute_force(inst, cost, {})
        other, _name = lower_bound(inst, cost, None, "mean_response")
        value = swap_bound(inst, cost, "mean_response", 10.0)
        assert value <= best + 1e-6, (inst, value, best)
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

    rng = random.Random(41)
    lowered = higher = 0
    for _ in range(60):
        inst = _sized_instance(rng)
        cost = SizedCost()
        best = brute_force(inst, cost, {})
        monkeypatch.setattr(bound_modes, "LOWER_SYSTEMS", True)
        value = swap_bound(inst, cost, "mean_response", 10.0)
        assert value <= best + 1e-6, (inst, value, best)
        with_it = bound_modes.systems(inst, cost, "g0")
        monkeypatch.setattr(bound_modes, "LOWER_SYSTEMS", False)
        without = bound_modes.systems(inst, cost, "g0")
        if with_it is not None and len(with_it[1]) > len(without[1] if without else []):
            lowered += 1
            higher += value > swap_bound(inst, cost, "mean_response", 10.0) + 1e-6
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
    assert not highs_child._RUNNING
