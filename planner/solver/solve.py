"""``solve_cpsat``: data, hint, CP-SAT windows, plan, bound, and the baseline fallback.

Pipeline. Start plans: the baselines' and Smith's rule with model loads
(:mod:`planner.solver.greedy`, the better of it with and without an earliest-completion
filter); the best is the warm start and the fallback.
An instance whose request options (requests x candidate engine periods) stay
under ``MAX_OPTIONS`` is solved as one model (:mod:`planner.solver.model`): first
over a small working set of layer splits, then the split search of
:mod:`planner.solver.lns`. Larger instances are solved in parts, one per GPU,
then re-solved in pairs (:mod:`planner.solver.decompose`); a part still too large
is solved in two stages (engines from its start plan, then CP-SAT over loads,
routing and order), and an instance without a start plan as a rolling horizon
(windows in arrival order, each over what earlier windows committed).

Steps (the two-phase solve of a window, the swap bound in a thread, observers):
:mod:`planner.solver.steps`. Bound: :mod:`planner.solver.bound` (valid for the
instance, queueing-aware). The CP-SAT bound of the last monolithic model (which only
bounds that model: its candidate configurations and number of periods) is quoted in
``notes``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from planner.baselines.policies import BASELINES
from planner.baselines.sim import BaselineError
from planner.costmodel.base import CostModel
from planner.domain import EngineConfig, Instance, Schedule, SolverInfo
from planner.errors import SolveError
from planner.interrupt import stop_requested
from planner.metrics import (
    completions,
    compute_metrics,
    counted,
    objective_key,
    objective_value,
)
from planner.retime import retime
from planner.solver.bound import SWAP_BOUND_NAME, gap_of, lower_bound, meets_bound
from planner.solver.bound_child import RefinedBound
from planner.solver.bound_lp import TIME_LIMIT_S as LP_TIME_S
from planner.solver.candidates import polish_engines
from planner.solver.data import (
    TICKS_PER_S,
    InfeasibleInstance,
    ProblemData,
    RequestData,
    build_data,
    request_options,
    restrict,
    ticks_up,
)
from planner.solver.decompose import solve_by_parts
from planner.solver.greedy import start_plan
from planner.solver.lns import refine_splits
from planner.solver.model import (
    PROGRESS,
    CPModel,
    Hint,
    SolveParams,
    WindowSolution,
)
from planner.solver.plan import PlanBuilder, hint_from_schedule
from planner.solver.polish import polish
from planner.solver.steps import (
    SWAP_BOUND_MARGIN_S,
    SwapBound,
    base_info_of,
    cpsat_bound_seconds,
    hooks,
    slot_pairs,
    split_candidates,
    two_phases,
    without_slots,
)

MAX_OPTIONS = 6000  # request options one CP-SAT model holds before the horizon is rolled
CANDIDATE_OPTIONS = 6000  # option budget of the first working set (candidates.working_set)
FIRST_SHARE = 0.5  # monolithic model: share of the time before the split search (lns.py)
MIN_WINDOW = 20  # fewest requests per rolling-horizon window
PERIODS = 2  # optional load/unload periods per candidate engine (monolithic model)
WINDOW_PERIODS = 1  # new periods per candidate engine and window (rolling horizon)
SMITH = "smith-with-loads"  # the start plan of greedy.py, beside the baselines'
MAX_SPLITS = 12  # requests with preemption alternatives per CP-SAT model (where it pays most)
#: pairwise no-overlap constraints (a slot engine's runs against other engines' runs on a
#: device, constraints.py; counted by slot_pairs over both periods) above which slot
#: engines are left out: 128 requests on one H200 count 655,072 (CP-SAT's log showed
#: 458,612 no-overlap constraints), and CP-SAT's presolve alone outran a 10 s limit
MAX_SLOT_PAIRS = 30_000
#: the gap on the solver's grid below which a polished plan is re-timed to see whether it
#: reaches the bound as the executor dispatches it
NEAR_BOUND = 0.01
#: seconds a failed slot search must leave for the model without slots to be tried
SLOTLESS_MIN_S = 1.0
POLISH_SHARE = 0.3  # share of the time limit kept for local moves on the plan (polish/)
#: the most of the time limit the greedy start plans (greedy.py) may take: the filtered
#: one weighs every waiting request at each decision, minutes on an overloaded trace of
#: thousands (the plain one takes about a second per 10,000 requests)
START_PLAN_SHARE = 0.5
#: ... and the most they take with their eviction charges (greedy.EVICTION_CHARGES) after
#: the two plain rules
START_VARIANTS_SHARE = 0.15
#: ... on an instance with one GPU, where the swap-aware bound's MIP runs beside the polish
#: (its time is the polish's) and CP-SAT's plan stalls early (docs/solver.md, "Half the
#: limit on one GPU")
POLISH_SHARE_ONE_GPU = 0.5
#: when the polish ends with at least this much of the time limit left (and MORE_MIN_S),
#: the split search goes on from CP-SAT's solution and the polish runs again
MORE_SHARE = 0.1
MORE_MIN_S = 3.0
#: objectives whose bound is an LP's lower bound that more time refines (bound_child.py)
REFINED_OBJECTIVES = ("mean_response", "tardiness")


def _error(msg: str) -> Exception:
    return SolveError(msg)


def _planned(schedule: Schedule) -> Schedule:
    """``schedule`` with no load made on demand (``Action.on_demand``)."""
    if all(a.on_demand is None for a in schedule.actions):
        return schedule
    return replace(schedule, actions=tuple(replace(a, on_demand=None) if a.on_demand else a
                                           for a in schedule.actions))


# --- entry point -----------------------------------------------------------------------

def _windows(reqs: list[RequestData], per_request: float) -> list[list[RequestData]]:
    size = max(MIN_WINDOW, int(MAX_OPTIONS // max(1.0, per_request)))
    if len(reqs) <= size:
        return [reqs]
    n = -(-len(reqs) // size)
    size = -(-len(reqs) // n)
    return [reqs[i:i + size] for i in range(0, len(reqs), size)]


def solve_cpsat(instance: Instance, cost: CostModel, objective: str, opts: Any,
                baselines: dict[str, Schedule],
                n_ctx: dict[str, int] | None = None,
                cp_sat_starts: frozenset[str] = frozenset()) -> tuple[Schedule, SolverInfo]:
    """CP-SAT plan for ``instance``; falls back to the best baseline when that is better.

    ``n_ctx`` overrides the engines' context sizes (a part of a larger instance keeps
    the whole instance's, so that its baseline's engines stay candidates).
    ``cp_sat_starts``: the start plans among ``baselines`` that are CP-SAT's (the one-slot
    plan a slot search starts from, service.py): a search that finds nothing better than
    them still writes a CP-SAT plan.
    """
    t0 = time.perf_counter()
    full = float(getattr(opts, "time_limit_s", 60.0))
    # the search stops early enough to leave the polish its share (polish/)
    polishing = bool(getattr(opts, "polish", True))
    want_bound = bool(getattr(opts, "bound", True))
    # half on one GPU, where the swap-aware bound runs beside the polish; not in the
    # parts of a decomposition (they have no bound)
    one_gpu = sum(d.kind == "gpu" for d in instance.cluster.devices) == 1
    share = POLISH_SHARE_ONE_GPU if one_gpu and want_bound else POLISH_SHARE
    limit = full * (1.0 - share) if polishing else full
    search_end = t0 + limit - 0.3  # the search's models stop by then (the polish follows)
    workers = int(getattr(opts, "workers", 2))
    params = SolveParams(limit, workers, int(getattr(opts, "seed", 0)),
                         bool(getattr(opts, "log", False)))
    preempt = bool(getattr(opts, "preemption", True))  # off: whole runs only, polish too
    max_splits = MAX_SPLITS if preempt else 0
    # start plans: the baselines', and Smith's rule with model loads (greedy.py); the
    # baselines' loads wait for the request that makes Ollama or llama-swap load, a plan
    # of the planner's need not (it knows the arrivals)
    baseline_schedules = {k: _planned(s) for k, s in baselines.items()}
    cpu = bool(getattr(opts, "cpu_engines", True))
    with contextlib.suppress(RuntimeError, BaselineError):  # (none where out of time)
        baseline_schedules[SMITH] = start_plan(
            instance, cost, objective, deadline=t0 + START_PLAN_SHARE * full,
            variants_by=t0 + START_VARIANTS_SHARE * full, cpus=cpu)
    t_start = time.perf_counter() - t0
    try:
        slots = tuple(getattr(opts, "slots", (1,)) or (1,))
        data = build_data(instance, cost, baseline_schedules, CANDIDATE_OPTIONS, PERIODS,
                          cpu, n_ctx, max_splits=max_splits, slots=slots)
    except InfeasibleInstance as exc:
        raise _error(f"{instance.name}: {exc}") from None

    # the bound first, inside the time limit (its LP gets at most a sixth of it); later
    # calls with the same data are answered from the bound's cache. The parts of a
    # decomposition have none: only the whole instance's bound is reported.
    if want_bound:
        lower_bound(instance, cost, data, objective, lp_time_s=min(LP_TIME_S, full / 6))
    one_slot = max((e.slots for e in data.engines), default=1) == 1
    base_metrics = {k: compute_metrics(instance, s.actions) for k, s in baseline_schedules.items()}
    best_base = min(base_metrics, key=lambda k: objective_key(base_metrics[k], objective),
                    default=None)

    def optimal(plan: Schedule, against: float | None = None) -> bool:
        """Whether ``plan``, as the executor dispatches it (how it is reported), reaches the
        instance's bound, so that no plan can do better. Plans with slot engines are
        not held to the bound: it assumes one request at a time per device (theirs is
        the slot bound, computed apart and seldom tight), and their re-timing replays
        each engine's batching token by token (about a second on a thousand requests);
        they are optimal only at an objective's ideal (every SLO met, nothing late).
        ``against``: a bound found later (beside the polish) instead of the first one."""
        if not want_bound:
            return False
        if any(e.n_parallel > 1 for e in plan.engines):
            # only a value no plan can pass whatever the bound: every SLO met, or none
            # late (batched ends only move earlier, planner/slots.py)
            value = objective_value(compute_metrics(instance, plan.actions), objective)
            return (objective == "slo_attainment" and value >= 1.0) or \
                (objective == "tardiness" and value <= 0.0)
        value = objective_value(compute_metrics(instance, retime(instance, cost, plan).actions),
                                objective)
        return meets_bound(value, lower_bound(instance, cost, data, objective)[0]
                           if against is None else against, objective)

    # what the start plan kept is: a baseline (fcfs-lru, ...) or another start plan (the
    # one-slot CP-SAT plan a slot search starts from, the greedy start plan)
    kept = (f"baseline {best_base}" if best_base in BASELINES else
            f"start plan {best_base}")
    # the best start plan on its grid (re-timing them all would cost more than it finds)
    if best_base is not None and optimal(baseline_schedules[best_base]):
        # a start plan no plan can beat (light load: every request served as fast as it
        # can be alone): written at once, nothing left to search for
        bound, bound_name = lower_bound(instance, cost, data, objective)
        grid = objective_value(base_metrics[best_base], objective)  # as_executed's note
        return baseline_schedules[best_base], SolverInfo(
            "cp-sat", "OPTIMAL", grid, bound, gap_of(grid, bound, objective),
            time.perf_counter() - t0, **base_info_of(opts),
            notes=f"the {kept} meets the bound ({bound_name}) as the executor dispatches "
                  "it: no plan can do better, so no search")
    swaps: SwapBound | None = None  # the swap-aware bound's thread, once started
    if want_bound and one_slot and (os.cpu_count() or 1) > workers:
        # a core CP-SAT's workers leave free: the swap-aware bound from now on (with the
        # polish off too)
        swaps = SwapBound(instance, cost, objective, t0 + full - SWAP_BOUND_MARGIN_S)

    def options(d: ProblemData) -> float:
        return request_options(d) * PERIODS / max(1, len(d.requests))

    n_gpus = sum(len(h.gpus) for h in instance.cluster.hosts)
    if options(data) * len(data.requests) > MAX_OPTIONS and best_base is not None and \
            (len(instance.cluster.hosts) > 1 or n_gpus > 1) and \
            bool(getattr(opts, "decompose", True)):
        reported = min((k for k in base_metrics if k != SMITH),
                       key=lambda k: objective_key(base_metrics[k], objective), default=None)
        start_better = best_base == SMITH and reported is not None
        if slots != (1,):
            # the decomposition plans one slot per engine (docs/solver.md)
            data = without_slots(data)
            opts = copy.copy(opts)
            opts.slots = (1,)
        return solve_by_parts(solve_cpsat, instance, cost, objective, opts,
                              baseline_schedules[best_base], best_base, data, t0,
                              t_start if start_better else None)

    decomposition = ""
    if options(data) * len(data.requests) > MAX_OPTIONS and best_base is not None:
        # placement and layer split from the baselines (the best one's first), then
        # CP-SAT decides loads, unloads, routing and order over those engines
        keyed = {e.cfg: e.key for e in data.engines}
        keep: set[int] = set()
        names = [best_base] + [k for k in baseline_schedules if k != best_base]
        for name in names:
            more = keep | {keyed[e.config] for e in baseline_schedules[name].engines
                           if e.config in keyed}
            if keep and options(restrict(data, more)) * len(data.requests) > MAX_OPTIONS:
                break
            keep = more
            decomposition += ("" if not decomposition else ", ") + name
        kept_data = restrict(data, keep)
        uncovered = {rd.req.model for rd in kept_data.requests if not rd.run}
        if uncovered:  # a start plan's engine that is no candidate (a decomposition's part
            # re-solved on another GPU of its host): its model's candidates instead
            keep |= {e.key for e in data.engines if e.cfg.model in uncovered}
            kept_data = restrict(data, keep)
        data = kept_data
        decomposition = (f"two stages: engines (placement, n_gpu_layers) from the "
                         f"{decomposition} plan{'s' if ',' in decomposition else ''}, then "
                         f"CP-SAT over loads, unloads, routing and order")
    slot_note = ""
    if any(e.slots > 1 for e in data.engines) and \
            (pairs := slot_pairs(data, PERIODS)) > MAX_SLOT_PAIRS:
        # the slot model's compute lanes are pairwise (constraints.py): too many pairs and
        # CP-SAT does not get past its presolve; plan one slot per engine instead
        data = without_slots(data)
        slot_note = (f"; slots left out: their model would need {pairs:,} pairwise "
                     f"no-overlap constraints (limit {MAX_SLOT_PAIRS:,})")
    reqs = sorted(data.requests, key=lambda rd: (rd.arrival, rd.req.id))
    windows = _windows(reqs, options(data))
    if len(windows) > 1 and any(e.slots > 1 for e in data.engines):
        # slot engines are planned in one window (runs frozen from an earlier window
        # may overlap on them); a larger instance keeps one slot per engine
        data = without_slots(data)
        reqs = sorted(data.requests, key=lambda rd: (rd.arrival, rd.req.id))
        windows = _windows(reqs, options(data))
    params.hooks = hooks(opts, instance, cost, data, objective, len(windows) == 1, t0,
                         base_metrics.get(best_base) if best_base else None, base_info_of(opts))

    hint: Hint | None = None
    hint_end = 0
    if best_base is not None and len(windows) == 1:
        got = hint_from_schedule(data, baseline_schedules[best_base])
        if got is not None:
            hint, hint_end = got
    # horizon: past the hinted plan, or a serial schedule of everything after the last arrival
    serial = max(rd.arrival for rd in reqs) + sum(
        min(e.load for e in data.engines) + max(rd.run.values()) for rd in reqs)
    unloads = sum(e.unload for e in data.engines) * (PERIODS + 1)
    horizon = max(hint_end, serial) + unloads + 10 * TICKS_PER_S

    builder = PlanBuilder(data)
    more_rounds: Callable[[ProblemData, WindowSolution, float], tuple[
        ProblemData, WindowSolution, int, int]] | None = None
    statuses: list[str] = []
    mono: WindowSolution | None = None
    failed = None
    n_splits = 0
    for i, win in enumerate(windows):
        final = i == len(windows) - 1
        left = limit - (time.perf_counter() - t0)
        share = left / (len(windows) - i)
        if len(windows) == 1:
            n_periods = {e.key: PERIODS for e in data.engines}
            if hint is not None:
                for ek, ps in hint.periods.items():
                    n_periods[ek] = max(n_periods[ek], len(ps))
        else:
            models = {rd.req.model for rd in win}
            n_periods = {e.key: WINDOW_PERIODS for e in data.engines if e.cfg.model in models}
        tb = time.perf_counter()
        splits = split_candidates(win, max_splits)
        n_splits = max(n_splits, len(splits))
        pool_size = sum(len(c) for c in data.pool.values())
        search = len(windows) == 1 and not decomposition and pool_size > len(data.engines)
        if search:
            share *= FIRST_SHARE
        # one model for the whole instance: without a solution at its share it goes on (to
        # the end of the search's time) until its first one, rather than leave the plan to
        # the start plans (a slot model has its own fallback, the model without slots)
        grace = max(0.0, search_end - time.perf_counter() - share) \
            if len(windows) == 1 and all(e.slots == 1 for e in data.engines) else 0.0
        if len(windows) == 1 and splits:
            sol = two_phases(data, win, objective, n_periods, builder.frozen, horizon, splits,
                              hint, share, replace(params, grace_s=grace))
        else:
            cp = CPModel(data, win, objective, n_periods, builder.frozen, horizon, splits)
            if hint is not None:
                cp.add_hint(hint)
            build_s = time.perf_counter() - tb
            sol = cp.solve(SolveParams(max(0.5, share - build_s), workers, params.seed,
                                       params.log, params.hooks, grace_s=grace))
        if sol is None or sol.status == "INFEASIBLE":
            failed = "INFEASIBLE" if sol is not None else "no solution in time"
            failed += f" (window {i + 1}/{len(windows)})" if len(windows) > 1 else ""
            break
        if search:
            def build(cfgs: list[EngineConfig]) -> ProblemData:
                return build_data(instance, cost, baseline_schedules, CANDIDATE_OPTIONS, PERIODS,
                                  cpu, n_ctx, cfgs, max_splits, slots)

            def reached(d: ProblemData, s: WindowSolution) -> bool:
                b = PlanBuilder(d)
                b.commit(s, True)
                return optimal(b.schedule())

            def more_rounds(d: ProblemData, s: WindowSolution, until: float) -> tuple[
                    ProblemData, WindowSolution, int, int]:
                return refine_splits(d, s, objective, PERIODS, horizon, build,
                                     lambda dd: split_candidates(list(dd.requests), max_splits),
                                     params, until, reached)

            data, sol, rounds, better = more_rounds(data, sol, search_end)
            decomposition = (f"monolithic CP-SAT model with a search over layer splits "
                             f"({rounds} rounds, {better} improving)")
            builder = PlanBuilder(data)
        statuses.append(sol.status)
        if len(windows) == 1:
            mono = sol
        builder.commit(sol, final)

    bound, bound_name = (lower_bound(instance, cost, data, objective) if want_bound
                         else (0.0, "none (a part of a decomposition)"))
    wall = time.perf_counter() - t0
    base_info = base_info_of(opts)

    def keep_baseline(status: str, notes: str) -> tuple[Schedule, SolverInfo]:
        if best_base is None:
            raise _error(f"{instance.name}: {status}; no baseline plan either "
                         "(see the baselines' errors in `planner solve --solver fcfs-lru`)")
        obj = objective_value(base_metrics[best_base], objective)
        return baseline_schedules[best_base], SolverInfo(
            "cp-sat", status, obj, bound, gap_of(obj, bound, objective), wall, **base_info,
            notes=notes)

    bound_note = f"bound: {bound_name}"
    stop = getattr(opts, "stop", None)

    def stopped() -> bool:
        """a stop request came: a signal, or the caller's stop event"""
        return stop_requested(stop)

    if failed is not None and "INFEASIBLE" not in failed and not stopped() and \
            any(e.slots > 1 for e in data.engines) and \
            t0 + full - time.perf_counter() > SLOTLESS_MIN_S:
        # the slot model's pairwise lanes can keep CP-SAT from any plan (its presolve and
        # first-solution workers overrun their limits): the time left goes to the model
        # with one slot per engine, whose plan the caller may still batch (service.py)
        one = copy.copy(opts)
        one.slots, one.time_limit_s = (1,), t0 + full - time.perf_counter()
        slotless = {k: s for k, s in baseline_schedules.items()
                    if all(e.n_parallel == 1 for e in s.engines)}
        sched, info = solve_cpsat(instance, cost, objective, one, slotless, n_ctx)
        return sched, replace(info, wall_s=time.perf_counter() - t0, notes=(
            f"{info.notes}; slots left out: CP-SAT found no plan with them in "
            f"{wall:.1f} s"))

    if failed is not None:
        status = (f"INFEASIBLE restricted model ({failed}), best {kept} written"
                  if "INFEASIBLE" in failed else
                  # CP-SAT made a start plan (the one-slot plan a slot search starts
                  # from): this search found none better, the best start plan is written
                  f"FEASIBLE ({kept} written: no better CP-SAT solution in time)"
                  if cp_sat_starts & baseline_schedules.keys() else
                  f"UNKNOWN: no CP-SAT solution in time, best {kept} written")
        if polishing and best_base is not None and not stopped() and \
                t0 + full - time.perf_counter() > 0.5:
            # the time CP-SAT would have had goes to local moves on the start plan
            start = baseline_schedules[best_base]
            polished, n = polish(instance, cost, start, objective, t0 + full - 0.2,
                                 polish_engines(instance, cost, data.pool), pauses=preempt)
            if polished is not start:
                obj = objective_value(compute_metrics(instance, polished.actions), objective)
                runs = f"{counted(n, 'run')} moved"
                return polished, SolverInfo(
                    "cp-sat", status.replace(" written", f" polished ({runs})"),
                    obj, bound, gap_of(obj, bound, objective), time.perf_counter() - t0,
                    **base_info, notes=f"{bound_note}; polish: {runs} in the time left, on "
                    f"the {best_base} plan (local moves kept when the objective improves)")
        return keep_baseline(status, bound_note)

    sched = builder.schedule()
    moves: int | None = None  # runs the polish moved; None: no polish
    from_start = None  # the start plan polished instead of CP-SAT's (which was worse)
    own_obj = 0.0  # then CP-SAT's plan's objective
    refined: RefinedBound | None = None  # the bound again, beside the polish
    # a plan that reaches the bound is optimal: no polish, no more rounds, no wait for
    # the bounds still being computed
    at_bound = optimal(sched)

    if polishing and not stopped() and not at_bound:
        # (a stop request ends the search; the plan is written as it is, at once)
        if swaps is None and want_bound and one_slot:  # on the core the search had
            swaps = SwapBound(instance, cost, objective, t0 + full - SWAP_BOUND_MARGIN_S)
        if want_bound and one_slot and not one_gpu and objective in REFINED_OBJECTIVES \
                and (os.cpu_count() or 1) > 1:
            # the core the search had is idle beside the polish on several GPUs or none (on
            # one the swap MIP has it): the bound's LP again there, given the polish's time
            refined = RefinedBound(instance, cost, 1, objective,
                                   t0 + full - SWAP_BOUND_MARGIN_S)
        own = compute_metrics(instance, sched.actions)
        worse = best_base is not None and objective_key(base_metrics[best_base], objective) \
            < objective_key(own, objective)
        target = baseline_schedules[best_base] if worse and best_base else sched
        polished, moves = polish(instance, cost, target, objective, t0 + full - 0.2,
                                 polish_engines(instance, cost, data.pool), pauses=preempt)
        if not worse:
            sched = polished
        elif polished is not target:  # moves kept, or compacted
            sched, from_start = polished, best_base
            own_obj = objective_value(own, objective)
        left = t0 + full - time.perf_counter()
        if more_rounds is not None and mono is not None and from_start is None and \
                left >= max(MORE_MIN_S, MORE_SHARE * full) and not stopped():
            # the polish ended early (no move left): more split rounds from CP-SAT's
            # solution in the time it left, then the polish again on what they found
            data2, sol2, r2, b2 = more_rounds(
                data, mono, time.perf_counter() + left * (1.0 - POLISH_SHARE))
            later = f"; {r2} more rounds in the time the polish left ({b2} improving)"
            if b2:
                b = PlanBuilder(data2)
                b.commit(sol2, True)
                again, moves2 = polish(instance, cost, b.schedule(), objective,
                                       t0 + full - 0.2, polish_engines(instance, cost,
                                                                       data2.pool),
                                       pauses=preempt)
                if objective_key(compute_metrics(instance, again.actions), objective) < \
                        objective_key(compute_metrics(instance, sched.actions), objective):
                    sched, moves, data, mono = again, moves2, data2, sol2
                else:
                    later += ", the plan before them kept"
            decomposition += later
    if refined is not None:
        refreshed = refined.value(time.perf_counter() if stopped() or at_bound
                                  else t0 + full - 0.05)
        if refreshed is not None and refreshed[0] > bound:
            bound, bound_name = refreshed
            bound_note = f"bound: {bound_name} (refined beside the polish)"
    if swaps is not None:
        swap_value = swaps.value(time.perf_counter() if stopped() or at_bound
                                 else t0 + full - 0.05)
        if swap_value is not None and swap_value > bound:
            bound, bound_name = swap_value, SWAP_BOUND_NAME
            bound_note = f"bound: {bound_name}"
    # the polish (or a bound found beside it) may bring the plan to the bound; re-timed
    # (about a second on a thousand requests, past the limit) only where its objective on
    # the grid is that close already
    m = compute_metrics(instance, sched.actions)
    obj = objective_value(m, objective)
    near = moves is not None and not at_bound and gap_of(obj, bound, objective) <= NEAR_BOUND
    polished_to_bound = near and optimal(sched, bound)
    wall = time.perf_counter() - t0  # the search, the polish and any rounds after it
    bound_note += (f"; preemption: {n_splits} requests per CP-SAT model may be split (once or "
                   f"twice, where a heavier request arrives or at quarter points; kv_save/"
                   f"kv_restore, recompute or a same-engine pause), "
                   f"{m.hand_overs()}"
                   if n_splits else "; preemption off")
    if len(windows) == 1 and mono is not None:
        # OPTIMAL only where the plan meets the instance's bound (below): CP-SAT's own
        # status speaks of its restricted model (its candidates and periods), which the
        # polish may leave, and a plan reported OPTIMAL beside a gap of 0.2 misleads
        status = "FEASIBLE"
        notes = (f"{decomposition or 'monolithic CP-SAT model'}, "
                 f"{len(data.engines)} candidate engines, "
                 f"{len(reqs)} requests; {bound_note}; CP-SAT bound of the restricted "
                 f"model (its candidate configurations and periods only): "
                 f"{cpsat_bound_seconds(data, mono, objective)} (CP-SAT status of that "
                 f"model: {mono.status})")
        if hint is not None:
            notes += f"; warm start from {best_base}"
    else:
        status = "FEASIBLE"
        notes = (f"rolling horizon: {len(windows)} windows of about {len(windows[0])} "
                 f"requests by arrival, each a CP-SAT model over what earlier windows "
                 f"committed (window statuses: {', '.join(sorted(set(statuses)))}); "
                 f"{bound_note}")
    notes += slot_note
    if at_bound:
        status = "OPTIMAL"
        notes += "; the plan reaches the bound: no plan can do better (no polish)"
    elif polished_to_bound:
        status = "OPTIMAL"
        notes += "; the polished plan reaches the bound: no plan can do better"
    if moves is not None:
        notes += (f"; polish: {counted(moves, 'run')} moved after the search "
                  "(local moves kept when the objective improves)")
        if from_start is not None:
            notes += (f", starting from the {from_start} plan (CP-SAT's own plan was worse: "
                      f"{own_obj:.3f})")
    if best_base is not None and objective_key(base_metrics[best_base], objective) < \
            objective_key(m, objective):
        return keep_baseline(f"FEASIBLE ({kept} kept)",
                             notes + f"; CP-SAT plan's objective was {obj:.3f}")
    first = None
    reported = min((k for k in base_metrics if k != SMITH),
                   key=lambda k: objective_key(base_metrics[k], objective), default=None)
    if reported is not None and objective == "mean_response" and len(windows) == 1:
        done = completions(baseline_schedules[reported].actions)
        base_units = sum(rd.weight * ticks_up(done[rd.req.id]) for rd in data.requests)
        first = next((t - t0 for t, v in PROGRESS if t >= t0 and v < base_units - 0.5), None)
    return sched, SolverInfo("cp-sat", status, obj, bound, gap_of(obj, bound, objective),
                             wall, **base_info, notes=notes, first_improvement_s=first)
