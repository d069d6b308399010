"""The CP-SAT model's variables (:class:`Variables`) and the solver-neutral records a
window is solved from and into (:class:`Frozen`, :class:`Hint`, :class:`WindowSolution`).
The formulation is described in :mod:`planner.solver.model`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from planner.solver.data import CandidateEngine, ProblemData, RequestData
from planner.solver.preempt import Piece, SplitVar, make_split

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
    #: seconds from the solve's start to its first solution (None: not from a solve);
    #: what a model of this size needs before it has any plan (lns.refine_splits)
    first_s: float | None = None


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


