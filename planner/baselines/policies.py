"""Baseline schedulers: what Ollama, llama-swap and a static deployment would do.

- ``fcfs-lru`` (Ollama): requests in arrival order; a request for a loaded
  model goes to that engine; otherwise the model is loaded, with as many layers
  on the GPU as fit (``--fit``), on the device where it would finish first,
  evicting least-recently-used engines there. Never preempts.
- ``grouped`` (llama-swap): each device serves one model at a time and drains
  that model's waiting requests before swapping, unless a request of another
  model has waited longer than the starvation bound. Never preempts.
- ``static``: every model placed once at time zero (largest first, on the
  device with most free memory, as many layers on the GPU as still fit); no
  swapping. Fails with a clear message when the models cannot all be placed.
"""

from __future__ import annotations

from collections.abc import Callable

from planner.baselines.sim import LoadOption, Resident, Simulator
from planner.costmodel.base import CostModel
from planner.domain import Instance, Request, Schedule
from planner.errors import BaselineError

STARVATION_S = 30.0


def _by_arrival(instance: Instance) -> list[Request]:
    return sorted(instance.requests, key=lambda r: (r.arrival_s, r.id))


def _best_load(sim: Simulator, model: str, earliest: float, req: Request,
               evict_all: bool = False, devices: list[str] | None = None) -> LoadOption:
    best: tuple[float, LoadOption] | None = None
    for dev in devices if devices is not None else list(sim.devices):
        opt = sim.plan_load(model, dev, earliest, evict_all=evict_all)
        if opt is None:
            continue
        ready = max(opt.ready_at, req.arrival_s)
        finish = ready + sim.cost.run_s(opt.cfg, req.prompt_tokens, 0, req.output_tokens)
        if best is None or finish < best[0]:
            best = (finish, opt)
    if best is None:
        raise BaselineError(f"model {model} fits on no device of the cluster "
                            f"(even after evicting every other engine)")
    return best[1]


def fcfs_lru(instance: Instance, cost: CostModel, slots: int = 1) -> Schedule:
    """Ollama; ``slots`` is its OLLAMA_NUM_PARALLEL (requests decoded together per model)."""
    sim = Simulator(instance, cost, slots)
    for req in _by_arrival(instance):
        resident = sim.resident_engines(req.model)
        if resident:
            _ds, r = min(resident, key=lambda x: sim.run_start(x[1], req, req.arrival_s)
                         + sim.run_time(x[1], req))
        else:
            r = sim.apply_load(_best_load(sim, req.model, req.arrival_s, req))
        sim.run(r, req, req.arrival_s)
    return sim.schedule()


def grouped(instance: Instance, cost: CostModel, starvation_s: float = STARVATION_S,
            slots: int = 1) -> Schedule:
    """llama-swap; ``slots`` is its concurrencyLimit (with llama-server --parallel)."""
    sim = Simulator(instance, cost, slots)
    waiting = _by_arrival(instance)
    arrivals = sorted({r.arrival_s for r in waiting})
    while waiting:
        ds = min(sim.devices.values(), key=lambda d: (sim.next_time(d), d.device.id))
        t = sim.next_time(ds)
        ready = [r for r in waiting if r.arrival_s <= t + 1e-9]
        if not ready:
            # idle until the next arrival
            sim.idle_until(ds, min(a for a in arrivals if a > t))
            continue
        here = {r.engine.model: r for r in ds.resident}
        elsewhere = {r.engine.model for d in sim.devices.values() if d is not ds
                     for r in d.resident}
        oldest = ready[0]
        starving = t - oldest.arrival_s > starvation_s
        current = [r for r in ready if r.model in here]
        candidates: list[Request] = []
        if current and not (starving and oldest.model not in here):
            candidates.append(current[0])
        candidates += [r for r in ready
                       if r.model not in elsewhere or t - r.arrival_s > starvation_s]
        later = [d.free_at for d in sim.devices.values() if d is not ds and d.free_at > t]
        later += [a for a in arrivals if a > t]
        if not later:  # nobody else will act: take any ready request
            candidates += ready
        served: tuple[Request, Resident] | None = None
        for req in candidates:
            if req.model in here:
                served = (req, here[req.model])
                break
            opt = sim.plan_load(req.model, ds.device.id, t, evict_all=True)
            if opt is not None:
                served = (req, sim.apply_load(opt))
                break
        if served is None:
            # nothing this device can take now: wait for the next event
            if not later:
                raise BaselineError(f"no device can serve {oldest.model} "
                                    f"(request {oldest.id})")
            sim.idle_until(ds, min(later))
            continue
        req, res = served
        sim.run(res, req, t)
        waiting.remove(req)
    return sim.schedule()


def static(instance: Instance, cost: CostModel, slots: int = 1) -> Schedule:
    sim = Simulator(instance, cost, slots)
    gpu_free = {d: s.device.memory_bytes for d, s in sim.devices.items()}
    host_free = {h.id: h.memory_bytes for h in instance.cluster.hosts}
    weight = {m.id: m.arch.weight_bytes for m in instance.models}
    placed: dict[str, Resident] = {}
    for model in sorted(weight, key=lambda m: -weight[m]):
        choice = None
        for dev in sorted(sim.devices, key=lambda d: -gpu_free[d]):
            kind = sim.devices[dev].device.kind
            cfg = sim.fit_config(model, dev, gpu_free[dev] if kind == "gpu" else None)
            host = sim.devices[dev].device.host
            if cfg is not None and cost.host_bytes(cfg) <= host_free[host]:
                choice = cfg
                break
        if choice is None:
            free = ", ".join(f"{d} {b / 2**30:.1f} GiB" for d, b in gpu_free.items())
            raise BaselineError(f"model {model} does not fit beside the models already "
                                f"placed (free memory: {free}); use a swapping solver")
        dev = choice.device
        if sim.devices[dev].device.kind == "gpu":
            gpu_free[dev] -= cost.gpu_bytes(choice)
        host_free[sim.devices[dev].device.host] -= cost.host_bytes(choice)
        placed[model] = sim.apply_load(LoadOption(dev, choice, (), 0.0, 0.0))
    for req in _by_arrival(instance):
        sim.run(placed[req.model], req, req.arrival_s)
    return sim.schedule()


BASELINES: dict[str, Callable[..., Schedule]] = {
    "fcfs-lru": fcfs_lru,
    "grouped": grouped,
    "static": static,
}
