"""``solve_cpsat``: data, hint, CP-SAT windows, plan, bound, and the baseline fallback.

Decomposition. An instance whose request options (requests x candidate engine
periods) stay under ``MAX_OPTIONS`` is solved as one model (the monolithic
formulation of :mod:`planner.solver.model`), warm-started from the best
baseline's plan. Larger instances are solved as a rolling horizon: requests in
arrival order are cut into windows; each window's model sees what earlier
windows committed (lanes, memory, and the engines still resident, which it may
keep using or unload) and commits its own decisions.

Bound. The reported ``bound`` is valid for the instance itself, not just for
the restricted model: every request needs at least its fastest run time on any
candidate configuration, and, since every engine starts unloaded, at least
``min(load + run) - arrival``. From these per-request lower bounds follow lower
bounds on the weighted mean response, the makespan and the weighted tardiness,
and an upper bound on SLO attainment. The CP-SAT bound of the monolithic model
(which only bounds that model: its candidate configurations and number of
periods) is quoted in ``notes``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from planner.costmodel.base import CostModel
from planner.domain import Action, DeviceShare, Engine, Instance, Schedule, SolverInfo
from planner.errors import SolveError
from planner.metrics import compute_metrics, objective_key, objective_value
from planner.solver.data import (
    MIB,
    TICKS_PER_S,
    InfeasibleInstance,
    ProblemData,
    RequestData,
    build_data,
    restrict,
    ticks_up,
)
from planner.solver.model import (
    CPModel,
    Frozen,
    Hint,
    OpenPeriod,
    Piece,
    SolveHooks,
    SolveParams,
    WindowSolution,
)

MAX_OPTIONS = 6000  # request options one CP-SAT model holds before the horizon is rolled
MIN_WINDOW = 20  # fewest requests per rolling-horizon window
PERIODS = 2  # optional load/unload periods per candidate engine (monolithic model)
WINDOW_PERIODS = 1  # new periods per candidate engine and window (rolling horizon)
MAX_SPLITS = 10  # preemption candidates per CP-SAT model (the longest requests)
PHASE1_SHARE = 0.75  # monolithic model: share of the time solved without preemption first
PROGRESS_EVERY_S = 0.5  # least time between two plans passed to a progress observer


def _error(msg: str) -> Exception:
    return SolveError(msg)


# --- hint from a baseline plan --------------------------------------------------------

def hint_from_schedule(data: ProblemData, sched: Schedule) -> tuple[Hint, int] | None:
    """Re-time a baseline plan on the tick grid; None if its engines are not candidates.

    Baselines keep one timeline per device (no load beside a run), so replaying each
    device's actions in order with durations rounded up keeps the plan valid.
    """
    key = {e.cfg: e for e in data.engines}
    cand = {}
    for be in sched.engines:
        c = key.get(be.config)
        if c is None:
            return None
        cand[be.id] = c
    reqs = {rd.req.id: rd for rd in data.requests}
    by_dev: dict[str, list[Action]] = defaultdict(list)
    for a in sched.actions:
        by_dev[a.device].append(a)
    periods: dict[str, list[list[int]]] = defaultdict(list)  # baseline engine -> [ls, us]
    runs: dict[str, tuple[str, int]] = {}
    end_all = 0
    for _dev, acts in by_dev.items():
        acts.sort(key=lambda a: (a.start_s, a.end_s))
        t = 0
        for a in acts:
            c = cand[a.engine]
            start = max(t, ticks_up(a.start_s))
            if a.kind == "load":
                periods[a.engine].append([start, -1])
                t = start + c.load
            elif a.kind == "unload":
                periods[a.engine][-1][1] = start
                t = start + c.unload
            elif a.kind == "run" and a.request is not None:
                if a.tokens_from != 0 or a.request not in reqs:
                    return None
                runs[a.request] = (a.engine, start)
                t = start + reqs[a.request].run[c.key]
            else:
                return None
        for eid in {a.engine for a in acts}:
            for p in periods[eid]:
                if p[1] < 0:  # still resident at the end: unload after everything
                    p[1] = t
                    t += cand[eid].unload
        end_all = max(end_all, t)
    out: dict[int, list[tuple[int, int]]] = defaultdict(list)
    where: dict[tuple[str, int], tuple[int, int]] = {}
    flat = sorted((p[0], p[1], eid, i) for eid, ps in periods.items() for i, p in enumerate(ps))
    for ls, us, eid, i in flat:
        k = cand[eid].key
        where[(eid, i)] = (k, len(out[k]))
        out[k].append((ls, us))
    hint_runs = {}
    for rid, (eid, start) in runs.items():
        i = max(j for j, q in enumerate(periods[eid]) if q[0] <= start)
        k, pi = where[(eid, i)]
        hint_runs[rid] = (k, pi, start)
    return Hint(dict(out), hint_runs), end_all


# --- plan assembly ---------------------------------------------------------------------

class PlanBuilder:
    """Accumulates committed windows; turns ticks into engines and actions."""

    def __init__(self, data: ProblemData) -> None:
        self.data = data
        self.engine = {e.key: e for e in data.engines}
        self.periods: dict[int, list[list[int | None]]] = defaultdict(list)
        self.runs: dict[str, list[Piece]] = {}  # request -> its actions in ticks
        self.frozen = Frozen()

    def commit(self, sol: WindowSolution, final: bool) -> None:
        fz = self.frozen
        open_now: dict[int, OpenPeriod] = {}
        last_end: dict[tuple[int, int], int] = {}
        for rid, pieces in sol.runs.items():
            self.runs[rid] = pieces
            saved_at = 0
            for pc in pieces:
                dev = self.engine[pc.engine].cfg.device
                # saves and restores also block their device's compute lane (glued)
                fz.compute.setdefault(dev, []).append((pc.start, pc.end))
                if pc.kind != "run":
                    fz.transfer.setdefault(dev, []).append((pc.start, pc.end))
                if pc.kind == "kv_save":
                    saved_at = pc.start
                elif pc.kind == "kv_restore":
                    fz.host_mem.setdefault(pc.hold_host, []).append(
                        (saved_at, pc.end, -(-pc.bytes // MIB)))
                key = (pc.engine, pc.period)
                last_end[key] = max(last_end.get(key, 0), pc.end)
        for ek, ps in sol.periods.items():
            eng = self.engine[ek]
            dev = eng.cfg.device
            for p, (ls, le, us, ue, carried) in enumerate(ps):
                if carried:
                    rec = self.periods[ek][-1]
                else:
                    rec = [ls, le, None, None]
                    self.periods[ek].append(rec)
                    fz.transfer.setdefault(dev, []).append((ls, le))
                if p == len(ps) - 1 and not final:
                    ready = max(last_end.get((ek, p), le), fz.open[ek].ready if carried else 0)
                    open_now[ek] = OpenPeriod(ls, le, ready)
                    continue
                rec[2], rec[3] = us, ue
                fz.transfer.setdefault(dev, []).append((us, ue))
                if eng.gpu_mib:
                    fz.gpu_mem.setdefault(dev, []).append((ls, ue, eng.gpu_mib))
                if eng.host_mib:
                    fz.host_mem.setdefault(eng.host, []).append((ls, ue, eng.host_mib))
        fz.open = open_now

    def _period_of(self, ek: int, start: int) -> int:
        ps = self.periods[ek]
        return max(i for i, q in enumerate(ps) if q[1] is not None and q[1] <= start)

    def schedule(self) -> Schedule:
        """Engines and actions in seconds, left-shifted with the cost model's exact durations.

        The tick solution fixes an order: per lane, load before runs (and a request's
        kv_save / kv_restore) before unload per period; a request's actions in their
        order; a kv_save or kv_restore also keeps its device's compute lane (it is glued
        to its run in the model, so no other run comes between them); and on each GPU
        and host, every memory interval (a resident period, or a saved state from its
        kv_save's start to its kv_restore's end) that ended before another began still
        does. Each action then starts at the latest end of those predecessors (and its
        arrival): no time grows, every order (hence every lane, residency, state and
        memory relation, by Helly's property of intervals) is kept.
        """
        used = {(pc.engine, self._period_of(pc.engine, pc.start))
                for pieces in self.runs.values() for pc in pieces}
        # a period that serves no request is dropped: removing intervals keeps every rule
        self.periods = defaultdict(list, {
            ek: [q for p, q in enumerate(ps) if (ek, p) in used]
            for ek, ps in self.periods.items() if any((ek, p) in used for p in range(len(ps)))})
        eids = {ek: f"e{i + 1}" for i, ek in enumerate(sorted(self.periods))}
        engines = []
        for ek in sorted(self.periods):
            c = self.engine[ek]
            shares = dict(c.gpu_shares)
            engines.append(Engine(eids[ek], c.cfg.model, c.cfg.device, c.cfg.n_gpu_layers,
                                  c.cfg.n_ctx, c.gpu_bytes, c.host_bytes,
                                  n_parallel=c.cfg.n_parallel,
                                  shares=tuple(DeviceShare(d, f, shares[d])
                                               for d, f in c.cfg.split)))
        rds = {rd.req.id: rd for rd in self.data.requests}
        # (tick start, tick end, order, kind, engine key, period, request or "", seconds, piece)
        items: list[tuple[int, int, int, str, int, int, str, float, Piece | None]] = []
        for ek, ps in self.periods.items():
            c = self.engine[ek]
            for p, (ls, le, us, ue) in enumerate(ps):
                assert ls is not None and le is not None
                items.append((ls, le, 0, "load", ek, p, "", c.load_s, None))
                if us is not None and ue is not None:
                    items.append((us, ue, 0, "unload", ek, p, "", c.unload_s, None))
        for rid, pieces in self.runs.items():
            for i, q in enumerate(pieces):
                items.append((q.start, q.end, i, q.kind, q.engine,
                              self._period_of(q.engine, q.start), rid, q.seconds, q))
        items.sort(key=lambda x: (x[0], x[1], x[2]))
        lane_end: dict[tuple[str, str], float] = {}
        load_end: dict[tuple[int, int], float] = {}
        runs_end: dict[tuple[int, int], float] = {}
        unload_end: dict[tuple[int, int], float] = {}
        req_end: dict[str, float] = {}  # end of a request's latest action so far
        freed: dict[str, list[tuple[int, float]]] = defaultdict(list)  # memory -> releases
        actions = []
        for ts, te, _i, kind, ek, p, rid, dur, pc in items:
            c = self.engine[ek]
            dev = c.cfg.device
            compute, transfer = (dev, "compute"), (dev, "transfer")
            lane = compute if kind == "run" else transfer
            # a split engine's action waits for its lane on every GPU it spans
            lanes = [(d, lane[1]) for d in c.devices]
            t = max(lane_end.get(x, 0.0) for x in lanes)
            if kind == "run" and c.slots > 1:
                # runs of a slot engine keep their CP-SAT start: its durations are rounded
                # up there, so every run ends no later and every order holds
                t = max(ts / TICKS_PER_S, load_end[(ek, p)], rds[rid].req.arrival_s)
            elif kind == "run":
                t = max(t, load_end[(ek, p)], rds[rid].req.arrival_s, req_end.get(rid, 0.0))
            elif kind == "unload":
                t = max(t, load_end[(ek, p)], runs_end.get((ek, p), 0.0))
            elif kind in ("kv_save", "kv_restore"):
                assert pc is not None
                t = max(t, lane_end.get(compute, 0.0), load_end[(ek, p)], req_end[rid])
                if kind == "kv_save":  # the saved state starts to occupy its host
                    t = max([t] + [end for tick, end in freed[pc.hold_host] if tick <= ts])
            else:
                if p > 0:
                    t = max(t, unload_end[(ek, p - 1)])
                for res in (*c.devices, c.host):
                    for ue_tick, end in freed[res]:
                        if ue_tick <= ts:
                            t = max(t, end)
            end = t + dur
            for x in lanes:
                lane_end[x] = max(lane_end.get(x, 0.0), end)
            eid = eids[ek]
            if pc is not None:
                req_end[rid] = end
                runs_end[(ek, p)] = max(runs_end.get((ek, p), 0.0), end)
            if kind == "run":
                assert pc is not None
                actions.append(Action("run", eid, dev, t, end, request=rid,
                                      tokens_from=pc.tokens_from, tokens_to=pc.tokens_to,
                                      recompute=pc.recompute))
            elif kind in ("kv_save", "kv_restore"):
                assert pc is not None
                lane_end[compute] = max(lane_end.get(compute, 0.0), end)
                if kind == "kv_restore":
                    freed[pc.hold_host].append((te, end))
                actions.append(Action(kind, eid, dev, t, end, request=rid, bytes=pc.bytes))
            elif kind == "load":
                load_end[(ek, p)] = end
                actions.append(Action("load", eid, dev, t, end))
            else:
                unload_end[(ek, p)] = end
                for d in c.devices:
                    freed[d].append((te, end))
                freed[c.host].append((te, end))
                actions.append(Action("unload", eid, dev, t, end))
        actions.sort(key=lambda a: (a.start_s, a.device, a.kind))
        return Schedule(tuple(engines), tuple(actions))


# --- bounds ----------------------------------------------------------------------------

def lower_bound(data: ProblemData, objective: str) -> float:
    """Valid bound on the objective from per-request minimal responses (module docstring)."""
    rds = data.requests
    if objective == "makespan":
        return max(rd.req.arrival_s + rd.min_response_s for rd in rds)
    if objective == "tardiness":
        return sum(rd.req.weight * max(0.0, rd.min_response_s - rd.req.slo_s)
                   for rd in rds if rd.req.slo_s is not None)
    if objective == "slo_attainment":
        with_slo = [rd for rd in rds if rd.req.slo_s is not None]
        if not with_slo:
            return 1.0
        ok = sum(1 for rd in with_slo if rd.min_response_s <= rd.req.slo_s + 1e-6)  # type: ignore[operator,misc]
        return ok / len(with_slo)
    wsum = sum(rd.req.weight for rd in rds)
    return sum(rd.req.weight * rd.min_response_s for rd in rds) / wsum


def gap_of(obj: float, bound: float, objective: str) -> float:
    if objective == "slo_attainment":  # maximised; bound is an upper bound
        return max(0.0, (bound - obj) / bound) if bound > 0 else 0.0
    return max(0.0, (obj - bound) / abs(obj)) if obj else 0.0


def cpsat_bound_seconds(data: ProblemData, sol: WindowSolution, objective: str) -> str:
    """The monolithic model's own CP-SAT bound, in the objective's units, for the notes."""
    if objective == "mean_response":
        wsum = sum(rd.weight for rd in data.requests)
        arr = sum(rd.weight * rd.req.arrival_s for rd in data.requests)
        return f"{(sol.bound / TICKS_PER_S - arr) / wsum:.3f} s"
    if objective == "makespan":
        return f"{sol.bound / TICKS_PER_S:.3f} s"
    return f"{sol.bound:.0f} (internal units)"


# --- entry point -----------------------------------------------------------------------

def _windows(reqs: list[RequestData], per_request: float) -> list[list[RequestData]]:
    size = max(MIN_WINDOW, int(MAX_OPTIONS // max(1.0, per_request)))
    if len(reqs) <= size:
        return [reqs]
    n = -(-len(reqs) // size)
    size = -(-len(reqs) // n)
    return [reqs[i:i + size] for i in range(0, len(reqs), size)]


def split_candidates(win: list[RequestData], limit: int) -> frozenset[str]:
    """The requests a window's model may preempt: the ``limit`` longest outputs."""
    cands = sorted((rd for rd in win if rd.split is not None),
                   key=lambda rd: (-rd.req.output_tokens, rd.req.id))
    return frozenset(rd.req.id for rd in cands[:limit])


def hint_from_solution(sol: WindowSolution) -> Hint:
    """A complete hint (every request whole) from a monolithic model's solution."""
    periods = {ek: [(ls, us) for ls, _le, us, _ue, _c in ps] for ek, ps in sol.periods.items()}
    runs = {rid: (ps[0].engine, ps[0].period, ps[0].start) for rid, ps in sol.runs.items()
            if len(ps) == 1}
    return Hint(periods, runs)


def _two_phases(data: ProblemData, win: list[RequestData], objective: str,
                n_periods: dict[int, int], frozen: Frozen, horizon: int,
                splits: frozenset[str], hint: Hint | None, share: float,
                params: SolveParams) -> WindowSolution | None:
    """Without preemption for PHASE1_SHARE of the time, then with it, warm-started from
    the first solution; the better of the two (the second model contains the first)."""
    t0 = time.perf_counter()
    cp1 = CPModel(data, win, objective, n_periods, frozen, horizon)
    if hint is not None:
        cp1.add_hint(hint)
    left = share - (time.perf_counter() - t0)
    sol1 = cp1.solve(SolveParams(max(0.5, left * PHASE1_SHARE), params.workers, params.seed,
                                 params.log, params.hooks))
    if sol1 is not None and sol1.status == "INFEASIBLE":
        sol1 = None  # the second model may still be feasible
    cp2 = CPModel(data, win, objective, n_periods, frozen, horizon, splits)
    if sol1 is not None:
        cp2.add_hint(hint_from_solution(sol1))
    elif hint is not None:
        cp2.add_hint(hint)
    left = share - (time.perf_counter() - t0)
    sol2 = cp2.solve(SolveParams(max(0.5, left), params.workers, params.seed, params.log,
                                 params.hooks))
    if sol2 is None or (sol2.status == "INFEASIBLE" and sol1 is not None):
        if sol1 is not None:  # its bound only bounds the model without preemption
            sol1.status, sol1.bound = "FEASIBLE", 0.0
        return sol1
    if sol1 is not None and sol1.objective < sol2.objective:
        sol1.status, sol1.bound = "FEASIBLE", sol2.bound
        return sol1
    return sol2


def base_info_of(opts: Any) -> dict[str, Any]:
    return {"time_limit_s": float(getattr(opts, "time_limit_s", 60.0)),
            "workers": int(getattr(opts, "workers", 2))}


def _hooks(opts: Any, instance: Instance, data: ProblemData, objective: str, monolithic: bool,
           t0: float, best: Any, info: dict[str, Any]) -> SolveHooks | None:
    """Observers from ``opts.progress`` (called with each improving plan, at most every
    PROGRESS_EVERY_S, monolithic models only) and ``opts.stop`` (ends the search and keeps
    the best plan so far). Without them the search runs exactly as before."""
    progress = getattr(opts, "progress", None)
    stop = getattr(opts, "stop", None)
    if progress is None and stop is None:
        return None
    if progress is None or not monolithic:
        return SolveHooks(None, stop)
    bound = lower_bound(data, objective)
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


def solve_cpsat(instance: Instance, cost: CostModel, objective: str, opts: Any,
                baseline_schedules: dict[str, Schedule]) -> tuple[Schedule, SolverInfo]:
    """CP-SAT plan for ``instance``; falls back to the best baseline when that is better."""
    t0 = time.perf_counter()
    limit = float(getattr(opts, "time_limit_s", 60.0))
    workers = int(getattr(opts, "workers", 2))
    params = SolveParams(limit, workers, int(getattr(opts, "seed", 0)),
                         bool(getattr(opts, "log", False)))
    max_splits = MAX_SPLITS if bool(getattr(opts, "preemption", True)) else 0
    try:
        slots = tuple(getattr(opts, "slots", (1,)) or (1,))
        data = build_data(instance, cost, baseline_schedules, slots)
    except InfeasibleInstance as exc:
        raise _error(f"{instance.name}: {exc}") from None

    base_metrics = {k: compute_metrics(instance, s.actions) for k, s in baseline_schedules.items()}
    best_base = min(base_metrics, key=lambda k: objective_key(base_metrics[k], objective),
                    default=None)

    def options(d: ProblemData) -> float:
        return sum(len(rd.run) for rd in d.requests) * PERIODS / max(1, len(d.requests))

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
        data = restrict(data, keep)
        decomposition = (f"two stages: engines (placement, n_gpu_layers) from the "
                         f"{decomposition} plan{'s' if ',' in decomposition else ''}, then "
                         f"CP-SAT over loads, unloads, routing and order")
    reqs = sorted(data.requests, key=lambda rd: (rd.arrival, rd.req.id))
    windows = _windows(reqs, options(data))
    if len(windows) > 1 and any(e.slots > 1 for e in data.engines):
        # slot engines are planned in one window (runs frozen from an earlier window
        # may overlap on them); a larger instance keeps one slot per engine
        data = restrict(data, {e.key for e in data.engines if e.slots == 1})
        reqs = sorted(data.requests, key=lambda rd: (rd.arrival, rd.req.id))
        windows = _windows(reqs, options(data))
    params.hooks = _hooks(opts, instance, data, objective, len(windows) == 1, t0,
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
        if len(windows) == 1 and splits:
            sol = _two_phases(data, win, objective, n_periods, builder.frozen, horizon, splits,
                              hint, share, params)
        else:
            cp = CPModel(data, win, objective, n_periods, builder.frozen, horizon, splits)
            if hint is not None:
                cp.add_hint(hint)
            build_s = time.perf_counter() - tb
            sol = cp.solve(SolveParams(max(0.5, share - build_s), workers, params.seed,
                                       params.log, params.hooks))
        if sol is None or sol.status == "INFEASIBLE":
            failed = "INFEASIBLE" if sol is not None else "no solution in time"
            failed += f" (window {i + 1}/{len(windows)})" if len(windows) > 1 else ""
            break
        statuses.append(sol.status)
        if len(windows) == 1:
            mono = sol
        builder.commit(sol, final)

    bound = lower_bound(data, objective)
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

    bound_note = ("bound: valid lower bound from per-request minimal service time "
                  "(fastest candidate run, and load+run for the first use since engines "
                  "start unloaded)")
    if failed is not None:
        return keep_baseline(f"UNKNOWN: no CP-SAT solution in time, best baseline "
                             f"{best_base} written" if "INFEASIBLE" not in failed else
                             f"INFEASIBLE restricted model ({failed}), best baseline "
                             f"{best_base} written", bound_note)

    sched = builder.schedule()
    m = compute_metrics(instance, sched.actions)
    obj = objective_value(m, objective)
    bound_note += (f"; preemption: up to {n_splits} requests per CP-SAT model may be split once "
                   f"at half their output (kv_save/kv_restore or recompute), "
                   f"{m.n_kv_saves} kv_saves and {m.n_recomputes} recomputes used"
                   if n_splits else "; preemption off")
    if len(windows) == 1 and mono is not None:
        status = mono.status
        notes = (f"{decomposition or 'monolithic CP-SAT model'}, "
                 f"{len(data.engines)} candidate engines, "
                 f"{len(reqs)} requests; {bound_note}; CP-SAT bound of the restricted "
                 f"model (its candidate configurations and periods only): "
                 f"{cpsat_bound_seconds(data, mono, objective)}")
        if hint is not None:
            notes += f"; warm start from {best_base}"
    else:
        status = "FEASIBLE"
        notes = (f"rolling horizon: {len(windows)} windows of about {len(windows[0])} "
                 f"requests by arrival, each a CP-SAT model over what earlier windows "
                 f"committed (window statuses: {', '.join(sorted(set(statuses)))}); "
                 f"{bound_note}")
    if best_base is not None and objective_key(base_metrics[best_base], objective) < \
            objective_key(m, objective):
        return keep_baseline(f"FEASIBLE (baseline {best_base} kept)",
                             notes + f"; CP-SAT plan's objective was {obj:.3f}")
    return sched, SolverInfo("cp-sat", status, obj, bound, gap_of(obj, bound, objective),
                             wall, **base_info, notes=notes)
