"""The CP-SAT model's constraints (SPEC rules as the solver states them) and objectives.
The formulation is described in :mod:`planner.solver.model`; the plan checker
(:mod:`planner.check`) re-derives every rule without this code."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ortools.sat.python import cp_model

from planner.solver.data import ProblemData, co_resident
from planner.solver.preempt import PartOption
from planner.solver.variables import Frozen, RunVar, Variables


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
        (pairwise NoOverlap, left out for engines that do not fit in memory together:
        their runs, inside their resident periods, cannot overlap). A split engine's
        runs use every GPU it spans."""
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
        together: dict[tuple[int, int], bool] = {}

        def apart(a: int, b: int) -> bool:
            """whether the runs of engines a and b need a no-overlap of their own"""
            if (a, b) not in together:
                together[a, b] = co_resident(self.data, self.engine[a], self.engine[b])
            return together[a, b]

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
                    if eb != ea and (self.engine[eb].slots == 1 or j < i) and \
                            apart(ea, eb):
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


