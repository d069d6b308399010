"""A list schedule that starts the CP-SAT planner on overloaded instances: Smith's rule
with model loads.

When a device falls free, every waiting request is scored by its weight per second
of device time it would take there: its run on the engine already resident, or
its run plus the load (and any evictions) for a model that is not; a load counts
for every waiting request of that model (they share it: the ratio is their total
weight over their total time). The best goes first. This is WSPT (Smith's rule,
optimal on one machine without loads) with the set-up cost of a swap, so
requests batch per model where swaps are dear and the heavy short ones overtake.
It emits a plain plan through the baselines' simulator (one timeline per
device, never preempting), which the checker accepts like theirs.

With ``earliest_completion``, a device free at t leaves a request that another
device would finish sooner (from when that one falls free: the run on its resident
engine of the model, or the model's load and run there) to that device, as list
schedulers for unrelated machines do (earliest completion time): on heterogeneous
GPUs this keeps a 70B request off the slow GPU that happens to fall free first.
Which of the two plans is better depends on the workload; :func:`start_plan`
builds both and keeps the better.
"""

from __future__ import annotations

import contextlib
import math
import time

from planner.baselines.sim import DeviceState, Resident, Simulator
from planner.costmodel.base import CostModel
from planner.domain import EngineConfig, Instance, Request, Schedule
from planner.metrics import compute_metrics, objective_key

Choice = tuple[float, Request, Resident | None]


def start_plan(instance: Instance, cost: CostModel, objective: str,
               deadline: float = math.inf) -> Schedule:
    """The better (by ``objective``) of the two list schedules; RuntimeError when
    neither can serve every request, or neither is done by ``deadline``
    (``time.perf_counter()``: each decision weighs every waiting request, so a heavily
    overloaded trace of thousands of requests takes minutes)."""
    plans = []
    for ect in (False, True):
        with contextlib.suppress(RuntimeError):
            plans.append(smith_with_loads(instance, cost, earliest_completion=ect,
                                          deadline=deadline))
    if not plans:
        raise RuntimeError("no device can serve the waiting requests, or no time left")
    return min(plans, key=lambda s: objective_key(compute_metrics(instance, s.actions),
                                                  objective))


def smith_with_loads(instance: Instance, cost: CostModel,
                     earliest_completion: bool = False,
                     deadline: float = math.inf) -> Schedule:
    sim = Simulator(instance, cost)
    waiting = sorted(instance.requests, key=lambda r: (r.arrival_s, r.id))
    arrivals = sorted({r.arrival_s for r in waiting})
    cold: dict[tuple[str, str], float] = {}
    runs: dict[tuple[str, EngineConfig], float] = {}  # (request, engine) -> run seconds
    while waiting:
        if time.perf_counter() > deadline:
            raise RuntimeError("the start plan ran out of time")
        ds = min(sim.devices.values(), key=lambda d: (d.free_at, d.device.id))
        t = ds.free_at
        ready = [r for r in waiting if r.arrival_s <= t + 1e-9]
        if not ready:
            ds.free_at = min(a for a in arrivals if a > t)
            continue
        best = _choose(sim, cost, ds, t, ready, earliest_completion, cold, runs)
        if best is None:  # nothing this device should take: wait for another to act
            later = [d.free_at for d in sim.devices.values() if d.free_at > t]
            later += [a for a in arrivals if a > t]
            if later:
                ds.free_at = min(later)
                continue
            # nothing changes later: this device takes what it can after all
            best = _choose(sim, cost, ds, t, ready, False, cold, runs) \
                if earliest_completion else None
            if best is None:
                raise RuntimeError("no device can serve the waiting requests")
        _score, req, res = best
        if res is None:
            opt = sim.plan_load(req.model, ds.device.id, t)
            assert opt is not None
            res = sim.apply_load(opt)
        sim.run(res, req, t)
        waiting.remove(req)
    return sim.schedule()


def _choose(sim: Simulator, cost: CostModel, ds: DeviceState, t: float,
            ready: list[Request], earliest_completion: bool,
            cold: dict[tuple[str, str], float],
            memo: dict[tuple[str, EngineConfig], float]) -> Choice | None:
    """The best (score, request, resident engine or None: load its model) for ``ds``.
    ``memo``: run seconds per (request, engine configuration), filled as asked (each
    decision weighs every waiting request again)."""
    here = {r.engine.model: r for r in ds.resident}
    # the other devices as this decision sees them: (state, free from, resident by model)
    others = [(o, max(o.free_at, t), {x.engine.model: x for x in reversed(o.resident)})
              for o in sim.devices.values() if o is not ds] if earliest_completion else []
    best: Choice | None = None
    by_model: dict[str, list[Request]] = {}
    for r in ready:
        by_model.setdefault(r.model, []).append(r)
    for model, reqs in by_model.items():
        res = here.get(model)
        if res is not None:
            for r in reqs:
                k = (r.id, res.engine.config)
                if k not in memo:
                    memo[k] = sim.run_time(res, r)
                dur = memo[k]
                if earliest_completion and t + dur > _elsewhere(sim, cost, others, r, cold):
                    continue
                score = r.weight / max(1e-9, dur)
                if best is None or score > best[0]:
                    best = (score, r, res)
            continue
        opt = sim.plan_load(model, ds.device.id, t)
        if opt is None:
            continue
        runs = []
        for r in reqs:
            k = (r.id, opt.cfg)
            if k not in memo:
                memo[k] = cost.run_s(opt.cfg, r.prompt_tokens, 0, r.output_tokens)
            runs.append((r, memo[k]))
        if earliest_completion:
            runs = [(r, d) for r, d in runs
                    if opt.ready_at + d <= _elsewhere(sim, cost, others, r, cold)]
            if not runs:
                continue
        score = sum(r.weight for r, _ in runs) / max(1e-9, opt.ready_at - t +
                                                      sum(d for _, d in runs))
        if best is None or score > best[0]:
            first = max(runs, key=lambda x: x[0].weight / x[1])[0]
            best = (score, first, None)
    return best


def _elsewhere(sim: Simulator, cost: CostModel,
               others: list[tuple[DeviceState, float, dict[str, Resident]]], r: Request,
               cold: dict[tuple[str, str], float]) -> float:
    """Earliest completion of ``r`` on another device (``others``: each with when it falls
    free, not before now, and its resident engines by model), started when that one falls
    free: on its resident engine of the model, else after loading it (``cold``, filled as
    asked: (request, device) -> load and run seconds there, and (request, engine) -> run
    seconds on that resident engine)."""
    out = math.inf
    for other, free, resident in others:
        res = resident.get(r.model)
        if res is not None:
            key = (r.id, res.engine.id)
            if key not in cold:
                cold[key] = sim.run_time(res, r)
            out = min(out, free + cold[key])
            continue
        key = (r.id, other.device.id)
        if key not in cold:
            cfg = sim.fit_config(r.model, other.device.id)
            cold[key] = math.inf if cfg is None else \
                cost.load_s(cfg) + cost.run_s(cfg, r.prompt_tokens, 0, r.output_tokens)
        out = min(out, free + cold[key])
    return out
