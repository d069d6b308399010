"""From solver values to a plan, and back: hints from plans and solutions, PlanBuilder.

``hint_from_schedule`` re-times a baseline plan on the tick grid (a complete
hint for the CP-SAT model); ``hint_from_solution`` turns a window solution into a
hint, also for a model over other candidate engines (matched by configuration);
``PlanBuilder`` accumulates window solutions and emits engines and actions in
seconds (see its ``schedule`` method).
"""

from __future__ import annotations

from collections import defaultdict

from planner.domain import Action, DeviceShare, Engine, Schedule
from planner.solver.data import MIB, TICKS_PER_S, ProblemData, ticks_up
from planner.solver.model import Frozen, Hint, OpenPeriod, Piece, WindowSolution

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
                # a split engine's runs block every GPU it spans; saves and restores
                # also block their device's compute lane (glued)
                for dev in self.engine[pc.engine].devices:
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
            for p, (ls, le, us, ue, carried) in enumerate(ps):
                if carried:
                    rec = self.periods[ek][-1]
                else:
                    rec = [ls, le, None, None]
                    self.periods[ek].append(rec)
                    for dev in eng.devices:
                        fz.transfer.setdefault(dev, []).append((ls, le))
                if p == len(ps) - 1 and not final:
                    ready = max(last_end.get((ek, p), le), fz.open[ek].ready if carried else 0)
                    open_now[ek] = OpenPeriod(ls, le, ready)
                    continue
                rec[2], rec[3] = us, ue
                for dev in eng.devices:
                    fz.transfer.setdefault(dev, []).append((us, ue))
                for dev, mib in eng.gpu_share_mib:
                    if mib:
                        fz.gpu_mem.setdefault(dev, []).append((ls, ue, mib))
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


def hint_from_solution(sol: WindowSolution) -> Hint:
    """A complete hint (every request whole) from a monolithic model's solution."""
    periods = {ek: [(ls, us) for ls, _le, us, _ue, _c in ps] for ek, ps in sol.periods.items()}
    runs = {rid: (ps[0].engine, ps[0].period, ps[0].start) for rid, ps in sol.runs.items()
            if len(ps) == 1}
    return Hint(periods, runs)
