"""Decomposition by host for instances too large for one CP-SAT model.

Start: the best baseline's plan. Its requests are grouped by the host whose
devices served them; each host (its GPUs and its CPU) with its requests is a
sub-instance: host RAM and every lane belong to one host, so sub-plans never
conflict and their union is a plan of the whole instance. Each sub-instance is
solved by :func:`planner.solver.solve.solve_cpsat` (one CP-SAT model over every
split candidate the option budget allows, warm-started from the baseline's
sub-plan, which it keeps when CP-SAT does not beat it), with a share of the
time proportional to its requests. So the result is never worse than the
baseline on a sum objective, and every part CP-SAT improves counts.

Then, while time is left, rounds of large-neighbourhood search: the worst host
(largest weighted response) and the best one are re-solved together from the
current plan, so requests may move between them.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from planner.baselines.sim import context_sizes
from planner.costmodel.base import CostModel
from planner.domain import Action, Cluster, Engine, Instance, Schedule, SolverInfo
from planner.metrics import compute_metrics, objective_key, objective_value
from planner.solver.data import ProblemData


def _part(instance: Instance, sched: Schedule, hosts: list[str]) -> tuple[Instance, Schedule]:
    """The sub-instance of ``hosts`` and the part of ``sched`` that runs there."""
    devs = {d.id for d in instance.cluster.devices if d.host in hosts}
    acts = tuple(a for a in sched.actions if a.device in devs)
    served = {a.request for a in acts if a.kind == "run"}
    reqs = tuple(r for r in instance.requests if r.id in served)
    used = {r.model for r in reqs}
    models = tuple(m for m in instance.models if m.id in used)
    cluster = Cluster(tuple(h for h in instance.cluster.hosts if h.id in hosts))
    sub = replace(instance, name=f"{instance.name}@{'+'.join(hosts)}", cluster=cluster,
                  models=models, requests=reqs)
    engs = tuple(e for e in sched.engines if e.device in devs)
    return sub, Schedule(engs, acts)


def _merge(parts: dict[str, Schedule]) -> Schedule:
    engines: list[Engine] = []
    actions: list[Action] = []
    for tag, s in parts.items():
        ids = {e.id: f"{tag}:{e.id}" for e in s.engines}
        engines += [replace(e, id=ids[e.id]) for e in s.engines]
        actions += [replace(a, engine=ids[a.engine]) for a in s.actions]
    actions.sort(key=lambda a: (a.start_s, a.device, a.kind))
    return Schedule(tuple(engines), tuple(actions))


def _host_of(instance: Instance) -> dict[str, str]:
    return {d.id: d.host for d in instance.cluster.devices}


def solve_by_hosts(instance: Instance, cost: CostModel, objective: str, opts: Any,
                   base: Schedule, base_name: str, data: ProblemData,
                   t0: float) -> tuple[Schedule, SolverInfo]:
    from planner.solver.bound import lower_bound
    from planner.solver.solve import gap_of, solve_cpsat

    limit = float(getattr(opts, "time_limit_s", 60.0))
    n_ctx = context_sizes(instance)
    host_of = _host_of(instance)
    # host -> its current sub-plan (engines and actions on its devices)
    parts: dict[str, Schedule] = {}
    for host in instance.cluster.hosts:
        _sub, s = _part(instance, base, [host.id])
        parts[host.id] = s
    statuses: list[str] = []

    def weight_of(hosts: list[str]) -> int:
        return sum(1 for a in _merge({h: parts[h] for h in hosts}).actions if a.kind == "run")

    def resolve(hosts: list[str], share: float) -> bool:
        """Re-solve ``hosts`` together from their current sub-plans; True if better."""
        cur = _merge({h: parts[h] for h in hosts})
        sub, start = _part(instance, cur, hosts)
        if not sub.requests:
            return False
        before = compute_metrics(sub, start.actions)
        o = replace(opts, time_limit_s=max(0.5, share)) if hasattr(opts, "__dataclass_fields__") \
            else _Opts(opts, max(0.5, share))
        sched, info = solve_cpsat(sub, cost, objective, o, {"current": start}, n_ctx=n_ctx)
        statuses.append(info.status.split(" ")[0])
        after = compute_metrics(sub, sched.actions)
        if objective_key(after, objective) >= objective_key(before, objective):
            return False
        by_host: dict[str, list[Action]] = {h: [] for h in hosts}
        for a in sched.actions:
            by_host[host_of[a.device]].append(a)
        for h in hosts:
            engs = tuple(e for e in sched.engines if host_of[e.device] == h)
            parts[h] = Schedule(engs, tuple(by_host[h]))
        return True

    hosts = [x.id for x in instance.cluster.hosts if parts[x.id].actions]
    total = sum(weight_of([h]) for h in hosts)
    first_pass = 0.75 * (limit - (time.perf_counter() - t0))
    budget = first_pass
    for i, h in enumerate(hosts):
        left_w = sum(weight_of([x]) for x in hosts[i:])
        share = budget * weight_of([h]) / max(1, left_w)
        tb = time.perf_counter()
        resolve([h], share)
        budget -= time.perf_counter() - tb
    rounds = 0
    while len(hosts) > 1 and limit - (time.perf_counter() - t0) > 2.0:
        per = {h: compute_metrics(_part(instance, parts[h], [h])[0], parts[h].actions)
               for h in hosts}
        load = {h: per[h].weighted_mean_response_s * weight_of([h]) for h in hosts}
        order = sorted(hosts, key=lambda h: load[h])
        pair = [order[-1], order[rounds % (len(order) - 1)]]
        left = limit - (time.perf_counter() - t0) - 0.5
        resolve(pair, min(left, 2 * limit * weight_of(pair) / max(1, total)))
        rounds += 1
    sched = _merge(parts)
    m = compute_metrics(instance, sched.actions)
    obj = objective_value(m, objective)
    bound, bound_name = lower_bound(instance, cost, data, objective)
    kinds = ", ".join(f"{s} x{statuses.count(s)}" for s in sorted(set(statuses)))
    notes = (f"decomposition by host from the {base_name} plan: {len(hosts)} hosts solved "
             f"apart, then {rounds} rounds re-solving the worst host with another "
             f"(sub-solve statuses: {kinds}); bound: {bound_name}; "
             f"{m.n_kv_saves} kv_saves and {m.n_recomputes} recomputes used")
    wall = time.perf_counter() - t0
    workers = int(getattr(opts, "workers", 2))
    return sched, SolverInfo("cp-sat", "FEASIBLE", obj, bound, gap_of(obj, bound, objective),
                             wall, limit, workers, notes=notes)


class _Opts:
    """Options of a sub-solve: the caller's, with another time limit."""

    def __init__(self, opts: Any, limit: float) -> None:
        self._opts = opts
        self.time_limit_s = limit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._opts, name)
