"""Solver depth: layer splits as a decision, bursty workloads, preemption where it pays,
the decomposition of large instances (the bounds: ``test_bounds.py``, ``test_swap_bound.py``).

Uses the round-number cost model of ``tests/test_solver.py`` (10 layers of 1 GiB,
0.1 s per token at 10 GPU layers and 0.1 * (1 + (10-g)/5) s at g, loads 2 s,
unloads 1 s, free prefill).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace

import pytest

from planner.baselines.policies import static
from planner.checker import check_plan
from planner.costmodel import AnalyticCostModel
from planner.domain import Cluster, Gpu, Host, Instance, Model, Request, Schedule, SolverInfo
from planner.generate import WorkloadSpec, generate_requests
from planner.metrics import compute_metrics
from planner.reference import reference_arch
from planner.solver import solve_cpsat
from tests.test_solver import Opts, RoundCost, baselines, instance

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
