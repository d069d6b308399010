"""Steps of :func:`planner.solver.solve.solve_cpsat`: one window's CP-SAT solve in two
phases (without preemption, then with it), the slot engines' no-overlap count, the
requests a model may preempt, the swap-aware bound in a thread, and the progress and
stop observers."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from planner.costmodel.base import CostModel
from planner.domain import Instance, SolverInfo
from planner.metrics import compute_metrics, objective_key, objective_value
from planner.solver.bound import gap_of, lower_bound, swap_bound
from planner.solver.data import (
    TICKS_PER_S,
    WEIGHT_SCALE,
    ProblemData,
    RequestData,
    co_resident,
    restrict,
)
from planner.solver.model import CPModel, Frozen, Hint, SolveHooks, SolveParams, WindowSolution
from planner.solver.plan import PlanBuilder, hint_from_solution

PHASE1_SHARE = 0.75  # monolithic model: share of the time solved without preemption first
PROGRESS_EVERY_S = 0.5  # least time between two plans passed to a progress observer


# --- bounds ----------------------------------------------------------------------------

#: the swap-aware bound's MIP is given until this long before the time limit (its HiGHS
#: child is killed GRACE_S after that), and waited for until the limit at most
SWAP_BOUND_MARGIN_S = 1.0


class SwapBound:
    """:func:`planner.solver.bound.swap_bound`, computed in a thread while the polish runs
    (the MIP in a child process, :mod:`planner.solver.highs_child`, on the core CP-SAT's
    workers had: the polish keeps Python's lock and its own core),
    or from the search's start where the machine has more cores than CP-SAT has workers.
    It applies to one-GPU instances under weighted mean response; elsewhere it returns at
    once."""

    def __init__(self, instance: Instance, cost: CostModel, objective: str,
                 deadline: float) -> None:
        self._out: list[float] = []

        def run() -> None:
            with contextlib.suppress(Exception):  # a bound that fails is only left out
                self._out.append(swap_bound(instance, cost, objective,
                                            deadline - time.perf_counter()))

        self._thread = threading.Thread(target=run, name="swap-bound", daemon=True)
        self._thread.start()

    def value(self, wait_until: float) -> float | None:
        """The bound, or None when it did not end by ``wait_until`` or does not apply."""
        self._thread.join(max(0.0, wait_until - time.perf_counter()))
        return self._out[0] if self._out and self._out[0] > 0 else None


def cpsat_bound_seconds(data: ProblemData, sol: WindowSolution, objective: str) -> str:
    """The monolithic model's own CP-SAT bound, in the objective's units, for the notes."""
    if objective == "mean_response":
        wsum = sum(rd.weight for rd in data.requests)
        arr = sum(rd.weight * rd.req.arrival_s for rd in data.requests)
        return f"{max(0.0, (sol.bound / TICKS_PER_S - arr) / wsum):.3f} s"
    if objective == "makespan":
        return f"{sol.bound / TICKS_PER_S:.3f} s"
    if objective == "tardiness":  # sum of scaled weights times ticks late
        return f"{sol.bound / (TICKS_PER_S * WEIGHT_SCALE):.3f} s of weighted tardiness"
    return f"{sol.bound:.0f} (internal units)"


def slot_pairs(data: ProblemData, periods: int) -> int:
    """How many pairwise no-overlap constraints the compute lanes of ``data`` need: each
    run option on a slot engine against every option of another engine on its devices
    that fits in memory beside it (:func:`co_resident`)."""
    devices = {e.key: e.devices for e in data.engines}
    engine = {e.key: e for e in data.engines}
    per: dict[str, dict[int, int]] = {}
    for rd in data.requests:
        for key in rd.run:
            for d in devices[key]:
                counts = per.setdefault(d, {})
                counts[key] = counts.get(key, 0) + periods
    slots = {e.key for e in data.engines if e.slots > 1}
    total = 0
    for counts in per.values():
        total += sum(c * n for k, c in counts.items() if k in slots
                     for k2, n in counts.items()
                     if k2 != k and co_resident(data, engine[k], engine[k2]))
    return total


def without_slots(data: ProblemData) -> ProblemData:
    """``data`` without its slot engines (one slot per engine)."""
    return restrict(data, {e.key for e in data.engines if e.slots == 1})


def split_candidates(win: list[RequestData], limit: int) -> frozenset[str]:
    """The requests a window's model may preempt: those given alternatives (build_data
    picks where preemption can pay most), at most ``limit``."""
    cands = [rd for rd in win if rd.splits][:limit]
    return frozenset(rd.req.id for rd in cands)


def two_phases(data: ProblemData, win: list[RequestData], objective: str,
                n_periods: dict[int, int], frozen: Frozen, horizon: int,
                splits: frozenset[str], hint: Hint | None, share: float,
                params: SolveParams) -> WindowSolution | None:
    """Without preemption for PHASE1_SHARE of the time, then with it, warm-started from
    the first solution; the better of the two (the second model contains the first).

    ``params.grace_s``: while the first model has no solution it may go on past ``share``
    for that long, and stops at its first one (then the second model is not tried)."""
    t0 = time.perf_counter()
    cp1 = CPModel(data, win, objective, n_periods, frozen, horizon)
    if hint is not None:
        cp1.add_hint(hint)
    left = share - (time.perf_counter() - t0)
    first = max(0.5, left * PHASE1_SHARE)
    sol1 = cp1.solve(SolveParams(first, params.workers, params.seed, params.log, params.hooks,
                                 grace_s=max(0.0, left - first) + params.grace_s))
    if sol1 is not None and sol1.status == "INFEASIBLE":
        sol1 = None  # the second model may still be feasible
    left = share - (time.perf_counter() - t0)
    if sol1 is not None and left < (sol1.first_s or 0.0):
        # found late (in the grace period, or near the end of the share): the second,
        # larger model would not reach its first solution in the time left (sol1's bound
        # only bounds the model without preemption)
        sol1.status, sol1.bound = "FEASIBLE", 0.0
        return sol1
    cp2 = CPModel(data, win, objective, n_periods, frozen, horizon, splits)
    if sol1 is not None:
        cp2.add_hint(hint_from_solution(sol1))
    elif hint is not None:
        cp2.add_hint(hint)
    left = share - (time.perf_counter() - t0)
    second = max(0.5, left)
    grace = max(0.0, share + params.grace_s - (time.perf_counter() - t0) - second) \
        if sol1 is None else 0.0
    sol2 = cp2.solve(SolveParams(second, params.workers, params.seed, params.log,
                                 params.hooks, grace_s=grace))
    if sol2 is None or (sol2.status == "INFEASIBLE" and sol1 is not None):
        if sol1 is not None:  # its bound only bounds the model without preemption
            sol1.status, sol1.bound = "FEASIBLE", 0.0
            if sol2 is None:  # a model with splits found nothing in `second` seconds:
                # a round of the split search needs more (lns.refine_splits)
                sol1.first_s = max(sol1.first_s or 0.0, second)
        return sol1
    if sol1 is not None and sol1.objective < sol2.objective:
        sol1.status, sol1.bound = "FEASIBLE", sol2.bound
        return sol1
    return sol2


def base_info_of(opts: Any) -> dict[str, Any]:
    return {"time_limit_s": float(getattr(opts, "time_limit_s", 60.0)),
            "workers": int(getattr(opts, "workers", 2))}


def hooks(opts: Any, instance: Instance, cost: CostModel, data: ProblemData, objective: str,
           monolithic: bool, t0: float, best: Any, info: dict[str, Any]) -> SolveHooks | None:
    """Observers from ``opts.progress`` (called with each improving plan, at most every
    PROGRESS_EVERY_S, monolithic models only) and ``opts.stop`` (ends the search and keeps
    the best plan so far). Without them the search runs exactly as before."""
    progress = getattr(opts, "progress", None)
    stop = getattr(opts, "stop", None)
    if progress is None and stop is None:
        return None
    if progress is None or not monolithic:
        return SolveHooks(None, stop)
    bound = lower_bound(instance, cost, data, objective)[0]
    last = [-1e9]
    best_key = [objective_key(best, objective) if best is not None else None]

    def on_solution(_internal: float, read: Any) -> None:
        now = time.perf_counter()
        if now - last[0] < PROGRESS_EVERY_S:
            return
        last[0] = now
        builder = PlanBuilder(data)
        builder.commit(read(), True)
        sched = builder.schedule()
        m = compute_metrics(instance, sched.actions)
        key = objective_key(m, objective)
        if best_key[0] is not None and key >= best_key[0]:
            return
        best_key[0] = key
        obj = objective_value(m, objective)
        progress(sched, SolverInfo("cp-sat", "RUNNING", obj, bound, gap_of(obj, bound, objective),
                                   now - t0, **info, notes="an improving CP-SAT solution; "
                                   "the search goes on"))

    return SolveHooks(on_solution, stop)
