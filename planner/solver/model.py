"""The CP-SAT model: a CPModel that owns its Variables (:mod:`planner.solver.variables`),
Constraints and Objective (:mod:`planner.solver.constraints`).

Formulation (one *window* of requests; the whole instance is one window unless
it is too large, see :mod:`planner.solver.solve`). Time is integer ticks.

- A candidate engine ``e`` (model, device, n_gpu_layers, n_ctx; see
  :mod:`planner.solver.data`) has periods ``p = 0..P_e-1``, each optional:
  presence ``z[e,p]``, a load interval ``[ls, ls+L_e)``, an unload interval
  ``[us, us+U_e)`` and a resident interval ``[ls, us+U_e)`` (SPEC rule 4's
  memory period). An engine carried over from the previous window has a fixed
  load and an unload still to place.
- A request ``r`` picks one option ``x[r,e,p]`` among the periods of the
  engines of its model; it runs in ``[s_r, s_r + d_{r,e})`` with ``d`` the cost
  model's run time on ``e``'s configuration.
- A request allowed to be preempted (``splits``) may instead take one of its
  split alternatives (:mod:`planner.solver.preempt`): parts ``[0,k_1), ...,
  [k_n,out)``, each on an (engine, period) of its model (a later part on
  another device is a migration), handed over by kv_save/kv_restore (glued to
  their runs, on the transfer lane, the state held in host RAM), recompute, or a
  pause on the same engine (a per-engine NoOverlap keeps its other runs out).
- Solver values are read in :meth:`CPModel.solution` only, into the
  solver-neutral :class:`WindowSolution`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from ortools.sat.python import cp_model

from planner.interrupt import stoppable
from planner.solver.constraints import Constraints, Objective
from planner.solver.data import ProblemData, RequestData
from planner.solver.preempt import Piece, hint_off, split_pieces
from planner.solver.variables import (
    Frozen,
    Hint,
    OpenPeriod,
    PeriodVar,
    RequestVar,
    RunVar,
    Variables,
    WindowSolution,
)

__all__ = ["CPModel", "Constraints", "Frozen", "Hint", "Objective", "OpenPeriod", "PeriodVar",
           "Piece", "RequestVar", "RunVar", "SolveHooks", "SolveParams", "Variables",
           "WindowSolution"]


# --- the model ------------------------------------------------------------------------

#: (perf_counter, objective) of every solution CP-SAT reports, in the model's units; the
#: caller clears it and reads when a solution first beat its baseline (benchmarks).
PROGRESS: list[tuple[float, float]] = []


@dataclass
class SolveHooks:
    """Observers of a running search; they never change what the solver decides.

    ``on_solution`` is called with each improving solution's objective (internal
    units) and a function that reads that solution (reading costs time, so the
    caller decides); ``stop``, once set, ends the search and keeps its best
    solution so far (the same as reaching the time limit then).
    """

    on_solution: Callable[[float, Callable[[], WindowSolution]], None] | None = None
    stop: threading.Event | None = None


@dataclass
class SolveParams:
    """``grace_s``: when the search has no solution at ``time_limit_s``, it goes on for up
    to this much longer and stops at its first solution (a model whose presolve alone takes
    most of its share: 292 requests on four GPUs, docs/solver.md "A first solution late")."""

    time_limit_s: float
    workers: int
    seed: int
    log: bool
    hooks: SolveHooks | None = None
    grace_s: float = 0.0


#: CP-SAT's probing (``cp_model_probing_level``, default 2) is off. In its presolve it
#: took 1.3 s of wall time per pass (for 0.03 deterministic seconds, so its own limit never
#: cut it) on 296 requests on four GPUs, and the first solution came at 4.5 s instead of
#: 0.6 s. With it off, ten solves of five such instances (165-479 requests, 8 and 15 s)
#: all gave CP-SAT plans (before: one of ten), better on six (by up to 13 %), within 0.1 %
#: on three and 1.0 % worse on one; the default set at 60 s stayed within its run-to-run
#: spread (docs/solver.md, "A first solution late")
PROBING_LEVEL = 0


class _Observer(cp_model.CpSolverSolutionCallback):
    """Records each improving solution (``PROGRESS``, ``found``), passes it to
    ``SolveHooks.on_solution``, and stops the search at a solution found after
    ``deadline`` (the time limit, when a grace period extends the search past it)."""

    def __init__(self, cp: CPModel, hooks: SolveHooks | None, solver: cp_model.CpSolver,
                 deadline: float | None) -> None:
        super().__init__()
        self.cp, self.hooks, self.solver, self.deadline = cp, hooks, solver, deadline
        self.found = threading.Event()
        self.first: float | None = None  # perf_counter at the first solution

    def on_solution_callback(self) -> None:
        now = time.perf_counter()
        PROGRESS.append((now, self.objective_value))
        if self.first is None:
            self.first = now
        self.found.set()
        if self.deadline is not None and now >= self.deadline:
            self.solver.stop_search()  # the first solution of the grace period
        if self.hooks is not None and self.hooks.on_solution is not None:
            self.hooks.on_solution(self.objective_value, lambda: self.cp.read_values(
                self.boolean_value, self.value, "FEASIBLE", self.objective_value,
                self.best_objective_bound))


class CPModel:
    """Owns the CP-SAT model of one window: variables, constraints, objective, hint."""

    def __init__(self, data: ProblemData, reqs: list[RequestData], objective: str,
                 n_periods: dict[int, int], frozen: Frozen, horizon: int,
                 splits: frozenset[str] = frozenset()) -> None:
        self.model = cp_model.CpModel()
        self.data = data
        self.vars = Variables(self.model, data, reqs, n_periods, frozen, horizon, splits)
        Constraints(self.model, data, self.vars, frozen).apply()
        Objective(self.model, self.vars, objective).apply()

    def add_hint(self, hint: Hint) -> None:
        """Hint every variable the hint determines (unload ends, resident sizes, request
        ends too). CP-SAT completes a partial hint by search and may fail to: with most
        requests of a 59-request model fixed at their hinted places (a time-window
        neighbourhood, tried 2026-12-02), it returned plans worse than the hint."""
        m = self.model
        unload = {e.key: e.unload for e in self.data.engines}
        for ek, ps in self.vars.periods.items():
            given = hint.periods.get(ek, [])
            for p, pv in enumerate(ps):
                if p >= len(given):
                    if not pv.carried:
                        m.add_hint(pv.present, 0)
                    continue
                ls, us = given[p]
                ue = us + unload[ek]
                m.add_hint(pv.unload_start, us)
                m.add_hint(pv.unload_end, ue)
                if pv.carried:  # its load is fixed
                    continue
                m.add_hint(pv.present, 1)
                m.add_hint(cast(cp_model.IntVar, pv.load_start), ls)
                size = pv.resident.size_expr()
                if isinstance(size, cp_model.IntVar):
                    m.add_hint(size, ue - ls)
        for rv in self.vars.requests:
            choice = hint.runs.get(rv.data.req.id)
            if choice is None:
                continue
            ek, p, start = choice
            m.add_hint(rv.start, start)
            dur = next((o.duration for o in rv.options if o.engine == ek and o.period == p),
                       None)
            if dur is not None:
                m.add_hint(rv.end, start + dur)
            for o in rv.options:
                m.add_hint(o.chosen, int(o.engine == ek and o.period == p))
            for sv in rv.splits:  # the hint runs every request whole
                hint_off(m, sv, start)

    def solve(self, params: SolveParams) -> WindowSolution | None:
        solver = cp_model.CpSolver()
        limit = max(0.05, params.time_limit_s)
        grace = max(0.0, params.grace_s)
        solver.parameters.max_time_in_seconds = limit + grace
        solver.parameters.num_workers = params.workers
        solver.parameters.random_seed = params.seed
        solver.parameters.log_search_progress = params.log
        solver.parameters.catch_sigint_signal = False  # planner.interrupt stops the search
        solver.parameters.cp_model_probing_level = PROBING_LEVEL
        if any(e.slots > 1 for e in self.data.engines):
            # the slot engines' pairwise exclusions (constraints.py) stay pairs: merged into
            # cliques by the presolve (4,342 no-overlaps of 581,718 intervals from 21,766
            # pairs on a 67-request CPU instance) they made one step of the feasibility-jump
            # worker take 6.2 s of a 3.7 s limit, with no plan (docs/solver.md, "Compute lanes")
            solver.parameters.merge_no_overlap_work_limit = 0
        hooks = params.hooks
        if hooks is not None and hooks.stop is not None and hooks.stop.is_set():
            return None  # stopped: no search, as if the time ran out without a solution
        started = time.perf_counter()
        deadline = started + limit if grace > 0 else None
        observer = _Observer(self, hooks, solver, deadline)
        with stoppable(solver.stop_search):  # Ctrl-C/SIGTERM: return the best so far
            status = self._solve_watched(solver, observer, hooks.stop if hooks else None)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            if status == cp_model.INFEASIBLE:
                return WindowSolution("INFEASIBLE", 0.0, 0.0, {}, {})
            return None
        sol = self.solution(solver, status)
        sol.first_s = (observer.first if observer.first is not None
                       else time.perf_counter()) - started
        return sol

    def _solve_watched(self, solver: cp_model.CpSolver, observer: _Observer,
                       stop: threading.Event | None) -> Any:
        """Solve with ``observer``, and a watcher that stops the search on request and, in a
        grace period, at the time limit where a solution was found by then."""
        done = threading.Event()
        deadline = observer.deadline

        def watch() -> None:
            while not done.wait(0.05):
                if stop is not None and stop.is_set():
                    # repeated: a stop before the search begins is forgotten
                    solver.stop_search()
                if deadline is not None and observer.found.is_set() and \
                        time.perf_counter() >= deadline:
                    solver.stop_search()

        watcher = threading.Thread(target=watch, daemon=True) \
            if stop is not None or deadline is not None else None
        if watcher is not None:
            watcher.start()
        try:
            return solver.solve(self.model, observer)
        finally:
            done.set()
            if watcher is not None:
                watcher.join()

    def solution(self, solver: cp_model.CpSolver, status: Any) -> WindowSolution:
        """The solver's final values."""
        return self.read_values(solver.boolean_value, solver.value, solver.status_name(status),
                                solver.objective_value, solver.best_objective_bound)

    def read_values(self, boolean_value: Callable[[Any], bool], value: Callable[[Any], int],
                    status: str, objective: float, bound: float) -> WindowSolution:
        """The one place solver values are read (from the solver, or a solution callback)."""
        periods: dict[int, list[tuple[int, int, int, int, bool]]] = {}
        index: dict[tuple[int, int], int] = {}
        for ek, ps in self.vars.periods.items():
            for p, pv in enumerate(ps):
                if boolean_value(pv.present):
                    index[(ek, p)] = len(periods.setdefault(ek, []))
                    periods[ek].append((value(pv.load_start), value(pv.load_end),
                                        value(pv.unload_start),
                                        value(pv.unload_end), pv.carried))
        runs: dict[str, list[Piece]] = {}
        host = self.vars.host_of
        for rv in self.vars.requests:
            rd = rv.data
            start = value(rv.start)
            out = rd.req.output_tokens
            sv = next((a for a in rv.splits if boolean_value(a.on)), None)
            if sv is None:
                o = next(o for o in rv.options if boolean_value(o.chosen))
                runs[rd.req.id] = [Piece("run", o.engine, index[(o.engine, o.period)], start,
                                         value(rv.end), rd.run_s[o.engine], 0, out)]
                continue
            runs[rd.req.id] = split_pieces(boolean_value, value, sv, index, host, out)
        return WindowSolution(status, objective, bound, periods, runs)
