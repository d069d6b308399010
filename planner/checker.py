"""Plan checker: re-derives SPEC rules 1-7 from a plan's actions alone.

It shares no code with the schedulers (baselines, CP-SAT): it reads engines and
actions, rebuilds lanes, residency, memory over time, token coverage and state
hand-overs from scratch, and recomputes the metrics with :mod:`planner.metrics`.
Like OR-Tools' sample ``check_solution``, it is the independent witness that a
plan is executable.

Resident periods: for rule 3 an engine is usable from the end of its ``load``
to the start of its ``unload``; for rule 4 it holds memory from the start of
its ``load`` to the end of its ``unload`` (SPEC).
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from planner.domain import Action, Engine, Instance, Schedule
from planner.metrics import compute_metrics, request_outcomes

EPS = 1e-6
INF = math.inf
Intervals = dict[str, list[tuple[float, float, int]]]


@dataclass(frozen=True)
class Violation:
    rule: int
    message: str

    def __str__(self) -> str:
        return f"rule {self.rule}: {self.message}"


def _fmt(a: Action) -> str:
    extra = f" {a.request}" if a.request else ""
    if a.kind == "run":
        extra += f" [{a.tokens_from},{a.tokens_to})"
    return f"{a.kind}{extra} on {a.engine}@{a.device} [{a.start_s:.3f},{a.end_s:.3f}]"


def peak_bytes(intervals: list[tuple[float, float, int]]) -> tuple[int, float]:
    """Largest sum of bytes over time; an interval ending at t frees before one starts at t."""
    events: list[tuple[float, int, int]] = []
    for s, e, b in intervals:
        events.append((s, 1, b))
        events.append((e, 0, -b))
    events.sort(key=lambda x: (x[0], x[1]))
    cur = best = 0
    at = 0.0
    for t, _order, b in events:
        cur += b
        if cur > best:
            best, at = cur, t
    return best, at


class _Check:
    def __init__(self, instance: Instance, schedule: Schedule) -> None:
        self.inst = instance
        self.sched = schedule
        self.out: list[Violation] = []
        self.engines: dict[str, Engine] = {}
        self.actions: list[Action] = []

    def bad(self, rule: int, msg: str) -> None:
        self.out.append(Violation(rule, msg))

    # rule 1 ---------------------------------------------------------------------
    def references(self) -> None:
        devices = {d.id: d for d in self.inst.cluster.devices}
        models = {m.id: m for m in self.inst.models}
        for e in self.sched.engines:
            if e.id in self.engines:
                self.bad(1, f"engine id {e.id} appears twice")
            self.engines[e.id] = e
            if e.model not in models:
                self.bad(1, f"engine {e.id}: unknown model {e.model!r}")
            if e.device not in devices:
                self.bad(1, f"engine {e.id}: unknown device {e.device!r}")
            elif devices[e.device].kind == "cpu" and e.n_gpu_layers != 0:
                self.bad(1, f"engine {e.id}: placed on host {e.device} with n_gpu_layers > 0")
            elif e.model in models and e.n_gpu_layers > models[e.model].arch.n_layers + 1:
                self.bad(1, f"engine {e.id}: n_gpu_layers {e.n_gpu_layers} exceeds the "
                            f"model's {models[e.model].arch.n_layers} layers")
            if e.shares and e.device in devices:
                self.split_engine(e, devices)
        for a in self.sched.actions:
            if a.engine not in self.engines:
                self.bad(1, f"{_fmt(a)}: unknown engine")
                continue
            if a.device != self.engines[a.engine].device:
                self.bad(1, f"{_fmt(a)}: device differs from engine's "
                            f"{self.engines[a.engine].device}")
                continue
            if not (math.isfinite(a.start_s) and math.isfinite(a.end_s)):
                self.bad(1, f"{_fmt(a)}: time is not finite")
                continue
            if a.start_s > a.end_s + EPS or a.start_s < -EPS:
                self.bad(1, f"{_fmt(a)}: start_s must be >= 0 and <= end_s")
                continue
            self.actions.append(a)

    def split_engine(self, e: Engine, devices: dict[str, Any]) -> None:
        """A split engine: GPUs of its device's host, each once, fractions summing to 1,
        shares summing to its gpu_bytes."""
        host = devices[e.device].host
        ids = [s.id for s in e.shares]
        if len(set(ids)) != len(ids):
            self.bad(1, f"engine {e.id}: a device appears twice in its split")
        for sh in e.shares:
            d = devices.get(sh.id)
            if d is None or d.kind != "gpu" or d.host != host:
                self.bad(1, f"engine {e.id}: split device {sh.id} is not a GPU of host {host}")
        if abs(sum(sh.fraction for sh in e.shares) - 1.0) > 1e-4:
            self.bad(1, f"engine {e.id}: split fractions sum to "
                        f"{sum(sh.fraction for sh in e.shares):.6f}, not 1")
        if sum(sh.gpu_bytes for sh in e.shares) != e.gpu_bytes:
            self.bad(1, f"engine {e.id}: per-GPU bytes sum to "
                        f"{sum(sh.gpu_bytes for sh in e.shares)}, not its gpu_bytes "
                        f"{e.gpu_bytes}")

    # rule 2 ---------------------------------------------------------------------
    def lanes(self) -> None:
        """Transfer lanes: no overlap. Compute lanes: runs overlap only when they are of one
        engine, at most ``n_parallel`` at once (its slots). A split engine's actions use the
        lanes of every GPU it spans."""
        lanes: dict[tuple[str, str], list[Action]] = defaultdict(list)
        for a in self.actions:
            for dev in self.engines[a.engine].devices:
                lanes[(dev, a.lane)].append(a)
        for (dev, lane), acts in lanes.items():
            acts.sort(key=lambda a: (a.start_s, a.end_s))
            if lane == "transfer":
                for x, y in itertools.pairwise(acts):
                    if y.start_s < x.end_s - EPS:
                        self.bad(2, f"{lane} lane of {dev}: {_fmt(x)} overlaps {_fmt(y)}")
                continue
            active: list[Action] = []
            for y in acts:
                active = [x for x in active if x.end_s > y.start_s + EPS]
                other = next((x for x in active if x.engine != y.engine), None)
                if other is not None:
                    self.bad(2, f"{lane} lane of {dev}: {_fmt(other)} overlaps {_fmt(y)} "
                                "(another engine)")
                slots = self.engines[y.engine].n_parallel
                same = [x for x in active if x.engine == y.engine]
                if len(same) + 1 > slots:
                    self.bad(2, f"{lane} lane of {dev}: {_fmt(y)} is run {len(same) + 1} at "
                                f"once on {y.engine}, which has {slots} slot(s)")
                active.append(y)

    # rule 3 ---------------------------------------------------------------------
    def residency(self) -> dict[str, list[tuple[float, float, float, float]]]:
        """Per engine: (load start, load end, unload start, unload end) periods."""
        periods: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
        by_engine: dict[str, list[Action]] = defaultdict(list)
        for a in self.actions:
            if a.kind in ("load", "unload"):
                by_engine[a.engine].append(a)
        for eid, acts in by_engine.items():
            acts.sort(key=lambda a: (a.start_s, 0 if a.kind == "unload" else 1))
            open_load: Action | None = None
            for a in acts:
                if a.kind == "load":
                    if open_load is not None:
                        self.bad(3, f"engine {eid}: {_fmt(a)} while already loaded")
                        continue
                    open_load = a
                else:
                    if open_load is None:
                        self.bad(3, f"engine {eid}: {_fmt(a)} without a preceding load")
                        continue
                    if a.start_s < open_load.end_s - EPS:
                        self.bad(3, f"engine {eid}: {_fmt(a)} starts before its load ends")
                    periods[eid].append((open_load.start_s, open_load.end_s, a.start_s, a.end_s))
                    open_load = None
            if open_load is not None:
                periods[eid].append((open_load.start_s, open_load.end_s, INF, INF))
        for a in self.actions:
            if a.kind in ("load", "unload"):
                continue
            ok = any(ls_end - EPS <= a.start_s and a.end_s <= us_start + EPS
                     for _ls, ls_end, us_start, _ue in periods.get(a.engine, []))
            if not ok:
                self.bad(3, f"{_fmt(a)}: engine {a.engine} is not resident throughout")
        return periods

    # rule 4 ---------------------------------------------------------------------
    def intervals(self, periods: dict[str, list[tuple[float, float, float, float]]],
                  saves: list[tuple[Action, Action | None]]) -> tuple[Intervals, Intervals]:
        """(start, end, bytes) held per GPU and per host: resident engines from load start
        to unload end, saved states from kv_save start to the matching kv_restore end."""
        devices = {d.id: d for d in self.inst.cluster.devices}
        gpu_iv: Intervals = defaultdict(list)
        host_iv: Intervals = defaultdict(list)
        for eid, ps in periods.items():
            e = self.engines[eid]
            dev = devices.get(e.device)
            if dev is None:
                continue
            for ls, _le, _us, ue in ps:
                if e.shares:  # each GPU of a split engine holds its own share
                    for sh in e.shares:
                        gpu_iv[sh.id].append((ls, ue, sh.gpu_bytes))
                elif dev.kind == "gpu":
                    gpu_iv[dev.id].append((ls, ue, e.gpu_bytes))
                host_iv[dev.host].append((ls, ue, e.host_bytes))
        for save, restore in saves:
            dev = devices.get(save.device)
            if dev is None or save.bytes is None:
                continue
            end = restore.end_s if restore is not None else INF
            host_iv[dev.host].append((save.start_s, end, save.bytes))
        return gpu_iv, host_iv

    def memory(self, gpu_iv: Intervals, host_iv: Intervals) -> None:
        devices = {d.id: d for d in self.inst.cluster.devices}
        for gid, iv in gpu_iv.items():
            peak, at = peak_bytes(iv)
            if peak > devices[gid].memory_bytes:
                self.bad(4, f"GPU {gid}: {peak} bytes held at t={at:.3f} s exceed its "
                            f"{devices[gid].memory_bytes}")
        for hid, iv in host_iv.items():
            cap = self.inst.cluster.host(hid).memory_bytes
            peak, at = peak_bytes(iv)
            if peak > cap:
                self.bad(4, f"host {hid}: {peak} bytes held at t={at:.3f} s exceed its {cap}")

    # rules 5 and 6 ------------------------------------------------------------------
    def requests(self) -> list[tuple[Action, Action | None]]:
        runs: dict[str, list[Action]] = defaultdict(list)
        transfers: dict[str, list[Action]] = defaultdict(list)
        engine_runs: dict[str, list[Action]] = defaultdict(list)
        unloads: dict[str, list[Action]] = defaultdict(list)
        known = {r.id: r for r in self.inst.requests}
        for a in self.actions:
            if a.on_demand is not None:  # a load made when this request arrives
                req = known.get(a.on_demand)
                if req is None:
                    self.bad(5, f"{_fmt(a)}: on_demand names an unknown request "
                                f"{a.on_demand!r}")
                elif req.model != self.engines[a.engine].model:
                    self.bad(5, f"{_fmt(a)}: on_demand request {a.on_demand} is of model "
                                f"{req.model}, not the engine's")
                elif a.start_s < req.arrival_s - EPS:
                    self.bad(5, f"{_fmt(a)}: a load on demand starts before its request "
                                f"{a.on_demand} arrives ({req.arrival_s:g})")
            if a.kind == "run":
                engine_runs[a.engine].append(a)
            if a.kind == "unload":
                unloads[a.engine].append(a)
            if a.request is None:
                continue
            if a.request not in known:
                self.bad(5, f"{_fmt(a)}: unknown request")
                continue
            (runs if a.kind == "run" else transfers)[a.request].append(a)

        def holds(engine: str, request: str, t0: float, t1: float) -> bool:
            """Engine keeps the request's state through (t0, t1): no unload, and fewer other
            requests run there meanwhile than it has slots (one slot: none)."""
            for u in unloads[engine]:
                if u.end_s > t0 + EPS and u.start_s < t1 - EPS:
                    return False
            others = {r.request for r in engine_runs[engine]
                      if r.request != request and r.end_s > t0 + EPS and r.start_s < t1 - EPS}
            return len(others) < self.engines[engine].n_parallel

        saves: list[tuple[Action, Action | None]] = []
        for req in self.inst.requests:
            rs = sorted(runs.get(req.id, []), key=lambda a: a.start_s)
            if not rs:
                self.bad(5, f"request {req.id}: never served")
            expected = 0
            for a in rs:
                e = self.engines[a.engine]
                if e.model != req.model:
                    self.bad(5, f"{_fmt(a)}: engine serves {e.model}, request needs {req.model}")
                if req.prompt_tokens + req.output_tokens > e.n_ctx:
                    self.bad(5, f"{_fmt(a)}: prompt+output {req.total_tokens} exceeds n_ctx "
                                f"{e.n_ctx} of {e.id}")
                if a.tokens_from != expected or (a.tokens_to or 0) <= (a.tokens_from or 0):
                    self.bad(5, f"{_fmt(a)}: tokens must continue at {expected} and advance")
                expected = a.tokens_to or expected
            if rs and expected != req.output_tokens:
                self.bad(5, f"request {req.id}: runs cover [0,{expected}), "
                            f"needs [0,{req.output_tokens})")
            if rs and rs[0].start_s < req.arrival_s - EPS:
                self.bad(5, f"{_fmt(rs[0])}: starts before arrival {req.arrival_s}")
            for x, y in itertools.pairwise(rs):
                if y.start_s < x.end_s - EPS:
                    self.bad(5, f"request {req.id}: {_fmt(x)} overlaps {_fmt(y)}")
            # state hand-overs (rule 6)
            ts = sorted(transfers.get(req.id, []), key=lambda a: a.start_s)
            svs = [a for a in ts if a.kind == "kv_save"]
            rst = [a for a in ts if a.kind == "kv_restore"]
            used_restores: set[int] = set()
            for s in svs:
                before = [r for r in rs if r.end_s <= s.start_s + EPS]
                if not before or before[-1].engine != s.engine or \
                        not holds(s.engine, req.id, before[-1].end_s, s.start_s):
                    self.bad(6, f"{_fmt(s)}: engine does not hold {req.id}'s state")
                match = next((i for i, r in enumerate(rst)
                              if i not in used_restores and r.start_s >= s.end_s - EPS), None)
                if match is not None:
                    used_restores.add(match)
                    r = rst[match]
                    if r.bytes != s.bytes:
                        self.bad(6, f"{_fmt(r)}: restores {r.bytes} bytes, saved {s.bytes}")
                    if self.engines[r.engine].model != req.model:
                        self.bad(6, f"{_fmt(r)}: engine of another model")
                saves.append((s, rst[match] if match is not None else None))
            for i, r in enumerate(rst):
                if i not in used_restores:
                    self.bad(6, f"{_fmt(r)}: no earlier kv_save of {req.id} to restore")
            for x, y in itertools.pairwise(rs):
                if y.recompute:
                    continue
                if x.engine == y.engine and holds(x.engine, req.id, x.end_s, y.start_s):
                    continue
                ok = False
                for s, restore in saves:
                    if s.request != req.id or restore is None:
                        continue
                    if (s.start_s >= x.end_s - EPS and restore.end_s <= y.start_s + EPS
                            and s.engine == x.engine and restore.engine == y.engine
                            and holds(y.engine, req.id, restore.end_s, y.start_s)):
                        ok = True
                        break
                if not ok:
                    self.bad(6, f"request {req.id}: state lost between {_fmt(x)} and {_fmt(y)}"
                                " (needs kv_save+kv_restore or recompute)")
        return saves

    # rule 7 ---------------------------------------------------------------------
    def metrics(self, data: dict[str, Any]) -> None:
        m = compute_metrics(self.inst, self.sched.actions).to_json()
        stored = data.get("metrics", {})
        for k in ("makespan_s", "mean_response_s", "p95_response_s",
                  "weighted_mean_response_s", "slo_attainment", "n_loads", "n_kv_saves",
                  "n_recomputes"):
            a, b = stored.get(k), m.get(k)
            if a is not None and (isinstance(a, bool) or not isinstance(a, int | float)):
                self.bad(7, f"metrics.{k}: file says {json.dumps(a)[:40]}, not a number")
            elif a is None or b is None:
                if a != b:
                    self.bad(7, f"metrics.{k}: file says {a}, actions give {b}")
            elif abs(float(a) - float(b)) > 1e-3 * max(1.0, abs(float(b))):
                self.bad(7, f"metrics.{k}: file says {a}, actions give {b}")
        stored_req = {r["id"]: r for r in data.get("requests", [])}
        for o in request_outcomes(self.inst, self.sched.actions):
            s = stored_req.get(o.id)
            if s is None:
                self.bad(7, f"requests: {o.id} missing")
            elif o.completion_s is not None and (s.get("completion_s") is None or abs(
                    s["completion_s"] - o.completion_s) > 1e-3):
                self.bad(7, f"requests: {o.id} completion_s {s.get('completion_s')} "
                            f"differs from actions' {o.completion_s:.6f}")


def check_plan(instance: Instance, schedule: Schedule,
               plan_data: dict[str, Any] | None = None) -> list[Violation]:
    """Every violation of SPEC rules 1-7; an empty list means the plan is valid.

    ``plan_data`` (the plan file's JSON) enables rule 7's comparison of the
    stored metrics with those recomputed from the actions.
    """
    c = _Check(instance, schedule)
    c.references()
    c.lanes()
    periods = c.residency()
    saves = c.requests()
    c.memory(*c.intervals(periods, saves))
    if plan_data is not None:
        c.metrics(plan_data)
    return c.out


def memory_peaks(instance: Instance, schedule: Schedule) -> dict[str, dict[str, int]]:
    """Peak bytes a plan holds: ``{gpu id: {"gpu_bytes": n}, host id: {"host_bytes": n}}``.

    Derived as rule 4 derives it (the execution report sets it beside the measured peaks).
    """
    c = _Check(instance, schedule)
    c.references()
    gpu_iv, host_iv = c.intervals(c.residency(), c.requests())
    out: dict[str, dict[str, int]] = {}
    for d, iv in gpu_iv.items():
        out.setdefault(d, {})["gpu_bytes"] = peak_bytes(iv)[0]
    for h, iv in host_iv.items():
        out.setdefault(h, {})["host_bytes"] = peak_bytes(iv)[0]
    return out
