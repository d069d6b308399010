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
"""

from __future__ import annotations

from planner.baselines.sim import Resident, Simulator
from planner.costmodel.base import CostModel
from planner.domain import Instance, Request, Schedule


def smith_with_loads(instance: Instance, cost: CostModel) -> Schedule:
    sim = Simulator(instance, cost)
    waiting = sorted(instance.requests, key=lambda r: (r.arrival_s, r.id))
    arrivals = sorted({r.arrival_s for r in waiting})
    while waiting:
        ds = min(sim.devices.values(), key=lambda d: (d.free_at, d.device.id))
        t = ds.free_at
        ready = [r for r in waiting if r.arrival_s <= t + 1e-9]
        if not ready:
            ds.free_at = min(a for a in arrivals if a > t)
            continue
        here = {r.engine.model: r for r in ds.resident}
        best: tuple[float, Request, Resident | None] | None = None
        by_model: dict[str, list[Request]] = {}
        for r in ready:
            by_model.setdefault(r.model, []).append(r)
        for model, reqs in by_model.items():
            res = here.get(model)
            if res is not None:
                for r in reqs:
                    score = r.weight / max(1e-9, sim.run_time(res, r))
                    if best is None or score > best[0]:
                        best = (score, r, res)
                continue
            opt = sim.plan_load(model, ds.device.id, t)
            if opt is None:
                continue
            setup = opt.ready_at - t
            runs = [cost.run_s(opt.cfg, r.prompt_tokens, 0, r.output_tokens) for r in reqs]
            score = sum(r.weight for r in reqs) / max(1e-9, setup + sum(runs))
            if best is None or score > best[0]:
                first = max(zip(reqs, runs, strict=True), key=lambda x: x[0].weight / x[1])[0]
                best = (score, first, None)
        if best is None:  # nothing this device can take: wait for another to act
            later = [d.free_at for d in sim.devices.values() if d.free_at > t]
            later += [a for a in arrivals if a > t]
            if not later:
                raise RuntimeError("no device can serve the waiting requests")
            ds.free_at = min(later)
            continue
        _score, req, res = best
        if res is None:
            opt = sim.plan_load(req.model, ds.device.id, t)
            assert opt is not None
            res = sim.apply_load(opt)
        sim.run(res, req, t)
        waiting.remove(req)
    return sim.schedule()
