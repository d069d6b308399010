"""Decomposition for instances too large for one CP-SAT model: parts, then LNS rounds.

Start: the best baseline's plan. Its requests are grouped by the device that
served them; each GPU with its requests is a *part*, a sub-instance of one host
holding only that GPU, whose host RAM is a budget: the part's own peak in the
baseline plus an equal share of what the host's parts leave free (the budgets
sum to the host's RAM, so sub-plans never conflict and their union is a plan
of the whole instance). Engines on host CPUs are left out of parts (the CPU
would be shared between the host's parts). When the parts' peaks do not fit the
host together, the whole host is one part instead.

Each part is solved by :func:`planner.solver.solve.solve_cpsat` (one CP-SAT
model, warm-started from the part's current plan, which it keeps when CP-SAT
does not beat it), with a share of the time proportional to its requests. So
the result is never worse than the baseline on a sum objective, and every part
CP-SAT improves counts. Then, while time is left, rounds of large-neighbourhood
search: the worst part (largest weighted response) is re-solved with a part of
the same host, so that requests may move between their GPUs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from planner.baselines.sim import context_sizes
from planner.checker import memory_peaks
from planner.costmodel.base import CostModel
from planner.domain import Action, Cluster, Engine, Instance, Schedule, SolverInfo
from planner.interrupt import stop_requested
from planner.metrics import compute_metrics, objective_key, objective_value
from planner.solver.bound import gap_of, lower_bound
from planner.solver.data import ProblemData

FIRST_PASS = 0.7  # share of the time for solving each part once
MIN_PART_S = 0.5  # the least time limit a part's sub-solve gets


@dataclass(frozen=True)
class Part:
    host: str
    devices: tuple[str, ...]  # GPUs (or, for a whole-host part, every device of the host)
    memory: int  # host RAM budget, bytes


def _sub(instance: Instance, sched: Schedule, parts: list[Part]) -> tuple[Instance, Schedule]:
    """The sub-instance of ``parts`` (one host) and the part of ``sched`` that runs there."""
    devs = {d for p in parts for d in p.devices}
    acts = tuple(a for a in sched.actions if a.device in devs)
    served = {a.request for a in acts if a.kind == "run"}
    reqs = tuple(r for r in instance.requests if r.id in served)
    used = {r.model for r in reqs}
    models = tuple(m for m in instance.models if m.id in used)
    host = instance.cluster.host(parts[0].host)
    h = replace(host, memory_bytes=sum(p.memory for p in parts),
                gpus=tuple(g for g in host.gpus if g.id in devs))
    sub = replace(instance, name=f"{instance.name}@{'+'.join(sorted(devs))}",
                  cluster=Cluster((h,)), models=models, requests=reqs)
    engs = tuple(e for e in sched.engines if e.device in devs)
    return sub, Schedule(engs, acts)


def _merge(parts: dict[str, Schedule]) -> Schedule:
    engines: list[Engine] = []
    actions: list[Action] = []
    for i, s in enumerate(parts.values()):
        ids = {e.id: f"p{i}-e{j + 1}" for j, e in enumerate(s.engines)}
        engines += [replace(e, id=ids[e.id]) for e in s.engines]
        actions += [replace(a, engine=ids[a.engine]) for a in s.actions]
    actions.sort(key=lambda a: (a.start_s, a.device, a.kind))
    return Schedule(tuple(engines), tuple(actions))


def make_parts(instance: Instance, base: Schedule) -> list[Part]:
    """One part per GPU, with RAM budgets; a whole host where the GPUs' peaks do not fit."""
    out: list[Part] = []
    for h in instance.cluster.hosts:
        devs = [d for d in instance.cluster.devices if d.host == h.id]
        gpus = [d.id for d in devs if d.kind == "gpu"]
        cpu_used = any(a.device == h.id for a in base.actions)
        peaks = {}
        for g in gpus:
            s = Schedule(tuple(e for e in base.engines if e.device == g),
                         tuple(a for a in base.actions if a.device == g))
            peaks[g] = memory_peaks(instance, s).get(h.id, {}).get("host_bytes", 0)
        free = h.memory_bytes - sum(peaks.values())
        if len(gpus) < 2 or cpu_used or free < 0:
            out.append(Part(h.id, tuple(d.id for d in devs), h.memory_bytes))
            continue
        for g in gpus:
            out.append(Part(h.id, (g,), peaks[g] + free // len(gpus)))
    return out


def solve_by_parts(solve_cpsat: Callable[..., tuple[Schedule, SolverInfo]], instance: Instance,
                   cost: CostModel, objective: str, opts: Any,
                   base: Schedule, base_name: str, data: ProblemData, t0: float,
                   start_better: float | None = None) -> tuple[Schedule, SolverInfo]:
    """``start_better``: when the start plan, already better than every baseline, was
    ready (the first improvement over the baselines); else the first improvement is
    the first part CP-SAT improves."""
    limit = float(getattr(opts, "time_limit_s", 60.0))
    n_ctx = context_sizes(instance)
    parts = make_parts(instance, base)
    key = {p: "+".join(p.devices) for p in parts}
    current: dict[str, Schedule] = {}
    for p in parts:
        current[key[p]] = _sub(instance, base, [p])[1]
    statuses: list[str] = []
    first: list[float] = []  # when a sub-plan first beat its part of the baseline

    def n_runs(ps: list[Part]) -> int:
        return sum(1 for p in ps for a in current[key[p]].actions if a.kind == "run")

    def resolve(ps: list[Part], share: float) -> bool:
        """Re-solve ``ps`` together from their current sub-plans; True if better."""
        cur = _merge({key[p]: current[key[p]] for p in ps})
        sub, start = _sub(instance, cur, ps)
        if not sub.requests:
            return False
        before = compute_metrics(sub, start.actions)
        whole_host = len(ps[0].devices) > 1 or any(
            d.kind == "cpu" for d in instance.cluster.devices if d.id in ps[0].devices)
        o = _Opts(opts, max(0.5, share), cpu_engines=whole_host and bool(
            getattr(opts, "cpu_engines", True)))
        sched, info = solve_cpsat(sub, cost, objective, o, {"current": start}, n_ctx=n_ctx)
        statuses.append(info.status.split(" ")[0].rstrip(":"))
        after = compute_metrics(sub, sched.actions)
        if objective_key(after, objective) >= objective_key(before, objective):
            return False
        if not first:
            first.append(time.perf_counter() - t0)
        for p in ps:
            devs = set(p.devices)
            current[key[p]] = Schedule(tuple(e for e in sched.engines if e.device in devs),
                                       tuple(a for a in sched.actions if a.device in devs))
        return True

    stop = getattr(opts, "stop", None)

    def stopped() -> bool:
        return stop_requested(stop)

    def cost_of(p: Part) -> float:
        """the part's weighted response in the start plan: what solving it may gain"""
        sub, s = _sub(instance, current[key[p]], [p])
        return compute_metrics(sub, s.actions).weighted_mean_response_s * n_runs([p])

    # the costliest parts first: under a short limit the last ones may keep their start
    # plans (a sub-solve takes its share plus its own set-up, which no share covers)
    active = sorted((p for p in parts if n_runs([p])), key=lambda p: -cost_of(p))
    budget = FIRST_PASS * (limit - (time.perf_counter() - t0))
    over = 0.0  # the most a sub-solve has taken beyond its share so far
    skipped = 0
    for i, p in enumerate(active):
        left = limit - (time.perf_counter() - t0)
        if stopped() or left - over < MIN_PART_S:
            skipped = len(active) - i
            break
        share = min(max(MIN_PART_S, budget * n_runs([p]) / max(1, n_runs(active[i:]))),
                    left - over)
        tb = time.perf_counter()
        resolve([p], share)
        took = time.perf_counter() - tb
        over = max(over, took - share)
        budget -= took
    rounds = 0
    total = max(1, n_runs(active))
    while limit - (time.perf_counter() - t0) - over > 2.0 and not stopped():
        order = sorted(active, key=lambda p: -cost_of(p))
        pair = None
        for worst in order:
            mates = [q for q in parts if q.host == worst.host and q != worst and
                     len(q.devices) == 1 and len(worst.devices) == 1]
            if mates:
                pair = [worst, mates[rounds % len(mates)]]
                break
        if pair is None:
            pair = [order[rounds % len(order)]]
        left = limit - (time.perf_counter() - t0) - 0.5 - over
        share = min(left, max(2.0, 2 * limit * n_runs(pair) / total))
        tb = time.perf_counter()
        resolve(pair, share)
        over = max(over, time.perf_counter() - tb - share)
        rounds += 1
    sched = _merge(current)
    m = compute_metrics(instance, sched.actions)
    obj = objective_value(m, objective)
    bound, bound_name = lower_bound(instance, cost, data, objective)
    kinds = ", ".join(f"{s} x{statuses.count(s)}" for s in sorted(set(statuses)))
    kept = (f" ({skipped} of them, the least costly, kept their start plans: no time left)"
            if skipped else "")
    notes = (f"decomposition from the {base_name} plan: {len(active)} parts (a GPU each, "
             f"or a host) solved apart{kept}, then {rounds} rounds re-solving the worst part with "
             f"another GPU of its host (sub-solve statuses: {kinds}); bound: {bound_name}; "
             f"{m.hand_overs()}")
    wall = time.perf_counter() - t0
    workers = int(getattr(opts, "workers", 2))
    return sched, SolverInfo("cp-sat", "FEASIBLE", obj, bound, gap_of(obj, bound, objective),
                             wall, limit, workers, notes=notes,
                             first_improvement_s=start_better if start_better is not None
                             else (first[0] if first else None))


class _Opts:
    """Options of a sub-solve: the caller's, with another time limit and CPU engine rule."""

    def __init__(self, opts: Any, limit: float, cpu_engines: bool) -> None:
        self._opts = opts
        self.time_limit_s = limit
        self.cpu_engines = cpu_engines
        self.decompose = False  # a part is solved as one model (or in two stages)
        self.progress = None  # a part's plans are not plans of the instance
        self.bound = False  # only the whole instance's bound is reported (its LP takes seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._opts, name)
