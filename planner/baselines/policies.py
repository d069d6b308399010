"""Baseline schedulers: what Ollama, llama-swap and a static deployment would do.

Ollama and llama-swap load a model when a request for it arrives, never before (they do
not know the arrivals): their loads are marked ``on_demand`` with that request, so that
re-timed as the executor dispatches them (``planner.retime``) they still wait for it.

- ``fcfs-lru`` (Ollama): requests in arrival order; a request for a loaded
  model goes to that engine; otherwise the model is loaded, with as many layers
  on the GPU as fit (``--fit``), on the device where it would finish first,
  evicting least-recently-used engines there. Never preempts.
- ``grouped`` (llama-swap): each device serves one model at a time and drains
  that model's waiting requests before swapping, unless a request of another
  model has waited longer than the starvation bound. Never preempts.
- ``static``: every model placed once at time zero (largest first, on the
  device with most GPU memory left), then layer splits searched along the cost
  model's curve (:mod:`planner.costmodel.splits`): the model that gains most
  decode time per extra GPU byte moves to its next faster split while
  everything still fits. No swapping. Fails with a clear message only when the
  models do not fit together even at their smallest splits.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable

from planner.baselines.sim import LoadOption, Resident, Simulator, context_sizes
from planner.costmodel.base import CostModel
from planner.costmodel.splits import Split, split_curve
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
            r = sim.apply_load(_best_load(sim, req.model, req.arrival_s, req), req.id)
        sim.run(r, req, req.arrival_s)
    return sim.schedule()


def grouped(instance: Instance, cost: CostModel, starvation_s: float = STARVATION_S,
            slots: int = 1) -> Schedule:
    """llama-swap; ``slots`` is its concurrencyLimit (with llama-server --parallel)."""
    sim = Simulator(instance, cost, slots)
    waiting = _by_arrival(instance)
    waiting_at = [r.arrival_s for r in waiting]  # (sorted: what has arrived is a prefix)
    arrivals = sorted(set(waiting_at))
    while waiting:
        ds = min(sim.devices.values(), key=lambda d: (sim.next_time(d), d.device.id))
        t = sim.next_time(ds)
        n_ready = bisect.bisect_right(waiting_at, t + 1e-9)  # the first n_ready are ready
        nxt = bisect.bisect_right(arrivals, t)
        if not n_ready:
            # idle until the next arrival
            sim.idle_until(ds, arrivals[nxt])
            continue
        here = {r.engine.model: r for r in ds.resident}
        elsewhere = {r.engine.model for d in sim.devices.values() if d is not ds
                     for r in d.resident}
        oldest = waiting[0]
        starving = t - oldest.arrival_s > starvation_s
        # in order of preference (lazily: the first one this device can serve is taken, and
        # an overloaded replay has thousands waiting)
        current = next((r for r in itertools.islice(waiting, n_ready) if r.model in here),
                       None)
        first = [current] if current is not None and not (
            starving and oldest.model not in here) else []
        later = [d.free_at for d in sim.devices.values() if d is not ds and d.free_at > t]
        later += arrivals[nxt:nxt + 1]  # the next arrival
        candidates = itertools.chain(
            first, (r for r in itertools.islice(waiting, n_ready)
                    if r.model not in elsewhere or t - r.arrival_s > starvation_s),
            # nobody else will act: take any ready request
            () if later else itertools.islice(waiting, n_ready))
        served: tuple[Request, Resident] | None = None
        tried: set[str] = set()  # models that cannot be loaded here now (a dry run each)
        for req in candidates:
            if req.model in here:
                served = (req, here[req.model])
                break
            if req.model in tried:
                continue
            tried.add(req.model)
            opt = sim.plan_load(req.model, ds.device.id, t, evict_all=True)
            if opt is not None:
                served = (req, sim.apply_load(opt, req.id))
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
        i = next(k for k in range(bisect.bisect_left(waiting_at, req.arrival_s), len(waiting))
                 if waiting[k] is req)
        del waiting[i], waiting_at[i]
    return sim.schedule()


def _decode_tokens(instance: Instance) -> dict[str, float]:
    """Weighted output tokens per model: decode seconds saved per token, times this, is
    what a faster split of the model saves."""
    out: dict[str, float] = {}
    for r in instance.requests:
        out[r.model] = out.get(r.model, 0.0) + r.weight * r.output_tokens
    return out


def static(instance: Instance, cost: CostModel, slots: int = 1) -> Schedule:
    """Every model placed once, searching layer splits (module docstring).

    Placement: largest model first on the device with most GPU memory left for the
    model's fastest split. Splits: every model starts at its fastest split; while
    GPU or host memory overflows, the one move (any model to any split of its curve)
    that removes most overflow, losing least weighted decode time, is made; then,
    while anything improves, the model whose faster split saves most decode time
    per extra GPU byte (weighted by its requests' output tokens) moves up if
    everything still fits. Fails when no move reduces the overflow. Every engine has
    ``slots`` parallel slots (llama-server ``--parallel``), its KV caches included.
    """
    sim = Simulator(instance, cost, slots)
    n_ctx = context_sizes(instance)
    host_cap = {h.id: h.memory_bytes for h in instance.cluster.hosts}
    curves: dict[tuple[str, str], list[Split]] = {}
    for mod in instance.models:
        for dev, ds in sim.devices.items():
            d = ds.device
            curve = split_curve(cost, mod.id, dev, n_ctx[mod.id], d.kind == "gpu",
                                d.memory_bytes if d.kind == "gpu" else None, host_cap[d.host],
                                slots)
            if curve:  # slowest (least GPU memory) first
                curves[(mod.id, dev)] = sorted(curve, key=lambda s: (s.gpu_bytes, -s.decode_s))
    weight = {m.id: m.arch.weight_bytes for m in instance.models}
    room = {d: (s.device.memory_bytes if s.device.kind == "gpu" else 0)
            for d, s in sim.devices.items()}
    device: dict[str, str] = {}
    for model in sorted(weight, key=lambda m: -weight[m]):
        devs = [d for d in sim.devices if (model, d) in curves]
        if not devs:
            raise BaselineError(f"model {model} fits on no device at any layer split")
        pick = max(devs, key=lambda d: (room[d], d))
        device[model] = pick
        room[pick] -= curves[(model, pick)][-1].gpu_bytes
    level = {m: len(curves[(m, device[m])]) - 1 for m in device}  # fastest splits
    load = _decode_tokens(instance)

    def used(pick: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
        gpu: dict[str, int] = {}
        host: dict[str, int] = {}
        for m, i in pick.items():
            s = curves[(m, device[m])][i]
            gpu[device[m]] = gpu.get(device[m], 0) + s.gpu_bytes
            h = sim.devices[device[m]].device.host
            host[h] = host.get(h, 0) + s.host_bytes
        return gpu, host

    def overflow(pick: dict[str, int]) -> int:
        gpu, host = used(pick)
        return sum(max(0, b - sim.devices[d].device.memory_bytes) for d, b in gpu.items()
                   if sim.devices[d].device.kind == "gpu") + \
            sum(max(0, b - host_cap[h]) for h, b in host.items())

    def fits(pick: dict[str, int]) -> bool:
        return overflow(pick) == 0

    def slower(m: str, i: int, j: int) -> float:
        curve = curves[(m, device[m])]
        return load.get(m, 0.0) * (curve[j].decode_s - curve[i].decode_s)

    # descend: the move that removes most overflow (then loses least decode time)
    while not fits(level):
        now = overflow(level)
        best: tuple[int, float, str, int] | None = None
        for m, i in level.items():
            for j in range(len(curves[(m, device[m])])):
                if j == i:
                    continue
                trial = dict(level)
                trial[m] = j
                cand = (overflow(trial), slower(m, i, j), m, j)
                if cand[0] < now and (best is None or cand[:2] < best[:2]):
                    best = cand
        if best is None:
            gpu, host = used(level)
            def gib(n: int) -> str:
                return f"{n / 2**30:.1f} GiB" if n >= 0.05 * 2**30 else "under 0.1 GiB"

            over = [f"{d} by {gib(b - sim.devices[d].device.memory_bytes)}"
                    for d, b in gpu.items() if sim.devices[d].device.kind == "gpu" and
                    b > sim.devices[d].device.memory_bytes]
            over += [f"host {h}'s memory by {gib(b - host_cap[h])}"
                     for h, b in host.items() if b > host_cap[h]]
            raise BaselineError(f"the models do not fit together at any layer split the "
                                f"search reached (over {', '.join(over)}: layers moved off "
                                f"a GPU take its host's memory); use a swapping solver")
        level[best[2]] = best[3]
    while True:
        best_gain, best_move = 0.0, None
        for m, i in level.items():
            curve = curves[(m, device[m])]
            for j in range(i + 1, len(curve)):
                trial = dict(level)
                trial[m] = j
                if not fits(trial):
                    continue
                extra = max(1, curve[j].gpu_bytes - curve[i].gpu_bytes)
                gain = load.get(m, 0.0) * (curve[i].decode_s - curve[j].decode_s) / extra
                if gain > best_gain:
                    best_gain, best_move = gain, (m, j)
        if best_move is None:
            break
        level[best_move[0]] = best_move[1]
    placed: dict[str, Resident] = {}
    for model in sorted(level, key=lambda m: -weight[m]):
        cfg = curves[(model, device[model])][level[model]].cfg
        placed[model] = sim.apply_load(LoadOption(cfg.device, cfg, (), 0.0, 0.0))
    for req in _by_arrival(instance):
        sim.run(placed[req.model], req, req.arrival_s)
    return sim.schedule()


BASELINES: dict[str, Callable[..., Schedule]] = {
    "fcfs-lru": fcfs_lru,
    "grouped": grouped,
    "static": static,
}
