"""The CP-SAT model: Variables, Constraints, Objective, and a CPModel that owns them.

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
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from ortools.sat.python import cp_model

from planner.interrupt import stoppable
from planner.solver.data import CandidateEngine, ProblemData, RequestData
from planner.solver.preempt import (
    PartOption,
    Piece,
    SplitVar,
    hint_off,
    make_split,
    split_pieces,
)

Interval = tuple[int, int]


@dataclass
class OpenPeriod:
    """An engine resident at the end of the previous window, not yet unloaded."""

    load_start: int
    load_end: int
    ready: int  # end of its last run so far: the unload cannot start before


@dataclass
class Frozen:
    """What earlier windows committed: fixed lane, memory occupancy and open engines."""

    compute: dict[str, list[Interval]] = field(default_factory=dict)
    transfer: dict[str, list[Interval]] = field(default_factory=dict)
    gpu_mem: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)
    host_mem: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)
    open: dict[int, OpenPeriod] = field(default_factory=dict)


@dataclass
class Hint:
    """Values to start from: per engine its periods (load start, unload start), per request
    its (engine, period index, start). Period indices count a carried period as 0."""

    periods: dict[int, list[tuple[int, int]]]
    runs: dict[str, tuple[int, int, int]]


@dataclass
class WindowSolution:
    status: str
    objective: float
    bound: float
    periods: dict[int, list[tuple[int, int, int, int, bool]]]  # ls, le, us, ue, carried
    runs: dict[str, list[Piece]]  # request -> its actions in time order


# --- variables -----------------------------------------------------------------------

@dataclass
class PeriodVar:
    present: cp_model.IntVar
    load_start: cp_model.LinearExprT
    load_end: cp_model.LinearExprT
    unload_start: cp_model.IntVar
    unload_end: cp_model.IntVar
    load: cp_model.IntervalVar | None  # None when carried (already in the frozen lane)
    unload: cp_model.IntervalVar
    resident: cp_model.IntervalVar
    carried: bool


@dataclass
class RunVar:
    engine: int
    period: int
    chosen: cp_model.IntVar
    interval: cp_model.IntervalVar
    duration: int


@dataclass
class RequestVar:
    data: RequestData
    start: cp_model.IntVar
    end: cp_model.IntVar
    options: list[RunVar]
    splits: list[SplitVar] = field(default_factory=list)


class Variables:
    def __init__(self, m: cp_model.CpModel, data: ProblemData, reqs: list[RequestData],
                 n_periods: dict[int, int], frozen: Frozen, horizon: int,
                 splits: frozenset[str] = frozenset()) -> None:
        self.horizon = horizon
        self.host_of = {e.key: e.host for e in data.engines}
        self.periods: dict[int, list[PeriodVar]] = {}
        for e in data.engines:
            ps: list[PeriodVar] = []
            op = frozen.open.get(e.key)
            if op is not None:
                ps.append(self._carried(m, e, op, horizon))
            for p in range(n_periods.get(e.key, 0)):
                ps.append(self._period(m, e, p, horizon))
            if ps:
                self.periods[e.key] = ps
        self.requests: list[RequestVar] = []
        for rd in reqs:
            r = rd.req
            start = m.new_int_var(rd.arrival, horizon, f"s[{r.id}]")
            end = m.new_int_var(rd.arrival, horizon, f"c[{r.id}]")
            options = []
            for ek, dur in rd.run.items():
                for p in range(len(self.periods.get(ek, []))):
                    x = m.new_bool_var(f"x[{r.id},{ek},{p}]")
                    iv = m.new_optional_fixed_size_interval_var(start, dur, x,
                                                                f"run[{r.id},{ek},{p}]")
                    options.append(RunVar(ek, p, x, iv, dur))
            rv = RequestVar(rd, start, end, options)
            if r.id in splits:
                n_per = {ek: len(ps) for ek, ps in self.periods.items()}
                rv.splits = [make_split(m, r.id, start, end, rd.arrival, sd, i, n_per,
                                        self.host_of, horizon)
                             for i, sd in enumerate(rd.splits)]
            self.requests.append(rv)

    @staticmethod
    def _period(m: cp_model.CpModel, e: CandidateEngine, p: int, h: int) -> PeriodVar:
        z = m.new_bool_var(f"z[{e.key},{p}]")
        ls = m.new_int_var(0, h, f"ls[{e.key},{p}]")
        us = m.new_int_var(0, h, f"us[{e.key},{p}]")
        ue = m.new_int_var(0, h, f"ue[{e.key},{p}]")
        size = m.new_int_var(0, h, f"rs[{e.key},{p}]")
        load = m.new_optional_fixed_size_interval_var(ls, e.load, z, f"load[{e.key},{p}]")
        unload = m.new_optional_interval_var(us, e.unload, ue, z, f"unload[{e.key},{p}]")
        resident = m.new_optional_interval_var(ls, size, ue, z, f"res[{e.key},{p}]")
        return PeriodVar(z, ls, ls + e.load, us, ue, load, unload, resident, False)

    @staticmethod
    def _carried(m: cp_model.CpModel, e: CandidateEngine, op: OpenPeriod, h: int) -> PeriodVar:
        z = m.new_constant(1)
        us = m.new_int_var(max(op.ready, op.load_end), h, f"us[{e.key},c]")
        ue = m.new_int_var(0, h, f"ue[{e.key},c]")
        size = m.new_int_var(0, h, f"rs[{e.key},c]")
        unload = m.new_interval_var(us, e.unload, ue, f"unload[{e.key},c]")
        resident = m.new_interval_var(op.load_start, size, ue, f"res[{e.key},c]")
        return PeriodVar(z, op.load_start, op.load_end, us, ue, None, unload, resident, True)


# --- constraints -----------------------------------------------------------------------

class Constraints:
    def __init__(self, m: cp_model.CpModel, data: ProblemData, v: Variables,
                 frozen: Frozen) -> None:
        self.m, self.data, self.v, self.frozen = m, data, v, frozen
        self.engine = {e.key: e for e in data.engines}

    def apply(self) -> None:
        self._period_order()
        self._one_option_per_request()
        self._residency()
        self._compute_lanes()
        self._transfer_lanes()
        self._gpu_memory()
        self._host_memory()

    def _fixed(self, s: int, e: int, name: str) -> cp_model.IntervalVar:
        return self.m.new_fixed_size_interval_var(s, e - s, name)

    def _period_order(self) -> None:
        """z[e,p+1] <= z[e,p];  z[e,p+1] => ls[e,p+1] >= ue[e,p];  z[e,p] => us >= ls + L_e."""
        for ps in self.v.periods.values():
            for p, pv in enumerate(ps):
                if not pv.carried:
                    self.m.add(pv.unload_start >= pv.load_end).only_enforce_if(pv.present)
                if p + 1 < len(ps):
                    nxt = ps[p + 1]
                    self.m.add_implication(nxt.present, pv.present)
                    self.m.add(nxt.load_start >= pv.unload_end).only_enforce_if(nxt.present)

    def _one_option_per_request(self) -> None:
        """sum_{e,p} x[r,e,p] + sum_a on[r,a] = 1;  c_r = s_r + sum d_{r,e} x[r,e,p] when
        whole. Each split alternative a sets c_r itself when on (preempt.make_split)."""
        for rv in self.v.requests:
            whole = rv.start + sum(o.duration * o.chosen for o in rv.options)
            self.m.add_exactly_one([o.chosen for o in rv.options] + [a.on for a in rv.splits])
            if not rv.splits:
                self.m.add(rv.end == whole)
                continue
            self.m.add(rv.end == whole).only_enforce_if([~a.on for a in rv.splits])

    def _residency(self) -> None:
        """x[r,e,p] => z[e,p] and ls[e,p] + L_e <= s_r and s_r + d_{r,e} <= us[e,p]."""
        for rv in self.v.requests:
            opts: list[tuple[Any, RunVar | PartOption]] = [(rv.start, o) for o in rv.options]
            for sv in rv.splits:
                for i, part in enumerate(sv.parts):
                    opts += [(sv.starts[i], o) for o in part]
            for start, o in opts:
                pv = self.v.periods[o.engine][o.period]
                self.m.add_implication(o.chosen, pv.present)
                self.m.add(start >= pv.load_end).only_enforce_if(o.chosen)
                size = o.duration if isinstance(o, RunVar) else o.size
                self.m.add(start + size <= pv.unload_start).only_enforce_if(o.chosen)

    def _compute_lanes(self) -> None:
        """Compute lanes (SPEC rule 2): per device, NoOverlap over the runs of one-slot
        engines; runs of an engine with p slots overlap at most p at a time
        (Cumulative), and never overlap a run of another engine on its devices
        (pairwise NoOverlap). A split engine's runs use every GPU it spans."""
        lanes: dict[str, list[cp_model.IntervalVar]] = {d: [] for d in self.data.devices}
        engine_runs: dict[tuple[int, int], list[cp_model.IntervalVar]] = {}
        pauses: dict[tuple[int, int], list[cp_model.IntervalVar]] = {}
        slotted: dict[str, list[tuple[int, cp_model.IntervalVar]]] = defaultdict(list)
        per_engine: dict[int, list[cp_model.IntervalVar]] = defaultdict(list)
        for rv in self.v.requests:
            opts: list[RunVar | PartOption] = list(rv.options)
            for sv in rv.splits:
                opts += [o for part in sv.parts for o in part]
                for ek, p, iv in sv.pauses:
                    pauses.setdefault((ek, p), []).append(iv)
            for o in opts:
                eng = self.engine[o.engine]
                for d in eng.devices:
                    if eng.slots == 1:
                        lanes[d].append(o.interval)
                    slotted[d].append((o.engine, o.interval))
                if eng.slots > 1:
                    per_engine[o.engine].append(o.interval)
                engine_runs.setdefault((o.engine, o.period), []).append(o.interval)
        # a same-device pause: no other run of that engine (period) while it lasts
        # (preemption uses one-slot engines only)
        for key, ivs in pauses.items():
            self.m.add_no_overlap(ivs + engine_runs.get(key, []))
        for d, ivs in lanes.items():
            ivs += [self._fixed(s, e, f"fixed-run[{d}]") for s, e in self.frozen.compute.get(d, [])]
            if len(ivs) > 1:
                self.m.add_no_overlap(ivs)
        for ek, ivs in per_engine.items():
            self.m.add_cumulative(ivs, [1] * len(ivs), self.engine[ek].slots)
        for d, items in slotted.items():
            fixed = [self._fixed(s, e, f"fixed-run[{d}]")
                     for s, e in self.frozen.compute.get(d, [])]
            for i, (ea, ia) in enumerate(items):
                if self.engine[ea].slots == 1:
                    continue
                for ib in fixed:
                    self.m.add_no_overlap([ia, ib])
                for j, (eb, ib) in enumerate(items):
                    # each pair once: with a one-slot engine from this side, else j < i
                    if eb != ea and (self.engine[eb].slots == 1 or j < i):
                        self.m.add_no_overlap([ia, ib])

    def _transfer_lanes(self) -> None:
        """NoOverlap over loads and unloads on each device (SPEC rule 2, transfer lane)."""
        lanes: dict[str, list[cp_model.IntervalVar]] = {d: [] for d in self.data.devices}
        for ek, ps in self.v.periods.items():
            for d in self.engine[ek].devices:
                for pv in ps:
                    if pv.load is not None:
                        lanes[d].append(pv.load)
                    lanes[d].append(pv.unload)
        for rv in self.v.requests:
            for sv in rv.splits:
                for ek, iv in sv.transfers:
                    lanes[self.engine[ek].cfg.device].append(iv)
        for d, ivs in lanes.items():
            ivs += [self._fixed(s, e, f"fixed-xfer[{d}]")
                    for s, e in self.frozen.transfer.get(d, [])]
            if len(ivs) > 1:
                self.m.add_no_overlap(ivs)

    def _gpu_memory(self) -> None:
        """Cumulative(resident[e,p], gpu_mib_e) <= GPU memory, per GPU (SPEC rule 4)."""
        for g, cap in self.data.gpu_mib.items():
            ivs, dem = [], []
            for ek, ps in self.v.periods.items():
                e = self.engine[ek]
                mib = dict(e.gpu_share_mib).get(g, 0)
                if mib > 0:
                    ivs += [pv.resident for pv in ps]
                    dem += [mib] * len(ps)
            for s, t, b in self.frozen.gpu_mem.get(g, []):
                ivs.append(self._fixed(s, t, f"fixed-gpu[{g}]"))
                dem.append(b)
            if ivs:
                self.m.add_cumulative(ivs, dem, cap)

    def _host_memory(self) -> None:
        """Cumulative(resident[e,p], host_mib_e; held_r, kv_mib_r) <= host memory (rule 4)."""
        for h, cap in self.data.host_mib.items():
            ivs, dem = [], []
            for ek, ps in self.v.periods.items():
                e = self.engine[ek]
                if e.host == h and e.host_mib > 0:
                    ivs += [pv.resident for pv in ps]
                    dem += [e.host_mib] * len(ps)
            for rv in self.v.requests:
                for sv in rv.splits:
                    for host, mib, iv in sv.holds:
                        if host == h and mib > 0:
                            ivs.append(iv)
                            dem.append(mib)
            for s, t, b in self.frozen.host_mem.get(h, []):
                ivs.append(self._fixed(s, t, f"fixed-host[{h}]"))
                dem.append(b)
            if ivs:
                self.m.add_cumulative(ivs, dem, cap)


# --- objective ------------------------------------------------------------------------

class Objective:
    """Integer objectives over completion ticks c_r (weights w_r scaled to integers)."""

    def __init__(self, m: cp_model.CpModel, v: Variables, name: str) -> None:
        self.m, self.v, self.name = m, v, name

    def apply(self) -> None:
        getattr(self, f"_{self.name}")()

    def _mean_response(self) -> None:
        """min sum_r w_r c_r  (= sum_w * weighted mean response + constant)."""
        self.m.minimize(sum(rv.data.weight * rv.end for rv in self.v.requests))

    def _makespan(self) -> None:
        """min C_max, C_max >= c_r."""
        cmax = self.m.new_int_var(0, self.v.horizon, "makespan")
        for rv in self.v.requests:
            self.m.add(cmax >= rv.end)
        self.m.minimize(cmax)

    def _slo_attainment(self) -> None:
        """min M * sum_r miss_r + sum_r w_r c_r;  not miss_r => c_r <= deadline_r."""
        big = self.v.horizon * sum(rv.data.weight for rv in self.v.requests) + 1
        missed = []
        for rv in self.v.requests:
            if rv.data.deadline is None:
                continue
            miss = self.m.new_bool_var(f"miss[{rv.data.req.id}]")
            self.m.add(rv.end <= rv.data.deadline).only_enforce_if(~miss)
            missed.append(miss)
        self.m.minimize(big * sum(missed) + sum(rv.data.weight * rv.end for rv in self.v.requests))

    def _tardiness(self) -> None:
        """min sum_r w_r T_r,  T_r >= c_r - deadline_r, T_r >= 0."""
        terms = []
        for rv in self.v.requests:
            if rv.data.deadline is None:
                continue
            t = self.m.new_int_var(0, self.v.horizon, f"tard[{rv.data.req.id}]")
            self.m.add(t >= rv.end - rv.data.deadline)
            terms.append(rv.data.weight * t)
        self.m.minimize(sum(terms))


# --- the model ------------------------------------------------------------------------

#: (perf_counter, objective) of every solution CP-SAT reports, in the model's units; the
#: caller clears it and reads when a solution first beat its baseline (benchmarks).
PROGRESS: list[tuple[float, float]] = []


class _Progress(cp_model.CpSolverSolutionCallback):
    def on_solution_callback(self) -> None:
        PROGRESS.append((time.perf_counter(), self.objective_value))


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
    time_limit_s: float
    workers: int
    seed: int
    log: bool
    hooks: SolveHooks | None = None


class _Observer(cp_model.CpSolverSolutionCallback):
    """Passes each improving solution to ``SolveHooks.on_solution``."""

    def __init__(self, cp: CPModel, hooks: SolveHooks) -> None:
        super().__init__()
        self.cp, self.hooks = cp, hooks

    def on_solution_callback(self) -> None:
        PROGRESS.append((time.perf_counter(), self.objective_value))
        if self.hooks.on_solution is not None:
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
        m = self.model
        for ek, ps in self.vars.periods.items():
            given = hint.periods.get(ek, [])
            for p, pv in enumerate(ps):
                if pv.carried:
                    if p < len(given):
                        m.add_hint(pv.unload_start, given[p][1])
                    continue
                if p < len(given):
                    m.add_hint(pv.present, 1)
                    m.add_hint(cast(cp_model.IntVar, pv.load_start), given[p][0])
                    m.add_hint(pv.unload_start, given[p][1])
                else:
                    m.add_hint(pv.present, 0)
        for rv in self.vars.requests:
            choice = hint.runs.get(rv.data.req.id)
            if choice is None:
                continue
            ek, p, start = choice
            m.add_hint(rv.start, start)
            for o in rv.options:
                m.add_hint(o.chosen, int(o.engine == ek and o.period == p))
            for sv in rv.splits:  # the hint runs every request whole
                hint_off(m, sv, start)

    def solve(self, params: SolveParams) -> WindowSolution | None:
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = max(0.05, params.time_limit_s)
        solver.parameters.num_workers = params.workers
        solver.parameters.random_seed = params.seed
        solver.parameters.log_search_progress = params.log
        solver.parameters.catch_sigint_signal = False  # planner.interrupt stops the search
        hooks = params.hooks
        if hooks is not None and hooks.stop is not None and hooks.stop.is_set():
            return None  # stopped: no search, as if the time ran out without a solution
        with stoppable(solver.stop_search):  # Ctrl-C/SIGTERM: return the best so far
            status = solver.solve(self.model, _Progress()) if hooks is None else \
                self._solve_observed(solver, hooks)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            if status == cp_model.INFEASIBLE:
                return WindowSolution("INFEASIBLE", 0.0, 0.0, {}, {})
            return None
        return self.solution(solver, status)

    def _solve_observed(self, solver: cp_model.CpSolver, hooks: SolveHooks) -> Any:
        """Solve with a solution callback and a watcher that stops the search on request."""
        done = threading.Event()
        stop = hooks.stop

        def watch() -> None:
            assert stop is not None
            while not done.wait(0.05):
                if stop.is_set():  # repeated: a stop before the search begins is forgotten
                    solver.stop_search()

        watcher = threading.Thread(target=watch, daemon=True) if stop is not None else None
        if watcher is not None:
            watcher.start()
        try:
            if hooks.on_solution is not None:
                return solver.solve(self.model, _Observer(self, hooks))
            return solver.solve(self.model)
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
