"""Discrete-event machinery shared by the baseline policies.

The simulator keeps, per device, one timeline on which every action of that
device is appended in time order (baselines never overlap a load with a run,
as Ollama and llama-swap do not), the engines resident there with their last
use, and per host a ledger of memory intervals (open-ended while resident).
Policies decide *what* to do; this module turns decisions into timed actions
priced by the cost model. It emits plain engines and actions; validity is
judged separately by :mod:`planner.checker`.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from planner.costmodel.base import CostModel
from planner.domain import Action, Device, Engine, EngineConfig, Instance, Request, Schedule
from planner.errors import BaselineError as BaselineError  # re-exported

CTX_ROUND = 256


def _end(interval: list[float]) -> float:
    return interval[1]


def fit_alone(instance: Instance, cost: CostModel, model: str, d: Device, n_ctx: int,
              slots: int = 1, gpu_free: int | None = None) -> EngineConfig | None:
    """The most GPU layers of ``model`` that fit ``d`` in ``gpu_free`` (default: the whole
    GPU; 0 on a host CPU), its host's RAM included, like ``--fit``; None if none fit."""
    host_cap = instance.cluster.host(d.host).memory_bytes
    if d.kind == "cpu":
        cfg = EngineConfig(model, d.id, 0, n_ctx, slots)
        return cfg if cost.host_bytes(cfg) <= host_cap else None
    cap = d.memory_bytes if gpu_free is None else gpu_free
    for g in range(cost.max_gpu_layers(model), -1, -1):
        cfg = EngineConfig(model, d.id, g, n_ctx, slots)
        if cost.gpu_bytes(cfg) <= cap and cost.host_bytes(cfg) <= host_cap:
            return cfg
    return None


@dataclass
class Resident:
    engine: Engine
    interval: list[float]  # [start, end] in the host ledger; end is inf while resident
    last_used: float
    host: str
    #: when each of the engine's slots is next free (one entry per n_parallel)
    slot_free: list[float] = field(default_factory=list)


@dataclass
class DeviceState:
    device: Device
    free_at: float = 0.0
    resident: list[Resident] = field(default_factory=list)
    #: slot runs: the engine whose runs may overlap now, and when the device's last
    #: action of anything else ended
    slot_engine: str | None = None
    barrier: float = 0.0


@dataclass(frozen=True)
class LoadOption:
    device: str
    cfg: EngineConfig
    evict: tuple[Resident, ...]
    start: float  # when the first unload (or the load) begins
    ready_at: float  # when the new engine is loaded and can run


def context_sizes(instance: Instance) -> dict[str, int]:
    """n_ctx per model: its longest request, rounded up to a multiple of 256, and at most
    the model's trained context (requests longer than that are refused when read)."""
    out: dict[str, int] = {}
    for r in instance.requests:
        need = math.ceil(r.total_tokens / CTX_ROUND) * CTX_ROUND
        out[r.model] = max(out.get(r.model, CTX_ROUND), need)
    for m in instance.models:
        out.setdefault(m.id, CTX_ROUND)
        if m.arch.n_ctx_train is not None:
            longest = max((r.total_tokens for r in instance.requests if r.model == m.id),
                          default=1)
            out[m.id] = max(longest, min(out[m.id], m.arch.n_ctx_train))
    return out


def serving_devices(instance: Instance) -> list[Device]:
    """GPUs when the cluster has any (partial offload, like Ollama), else the hosts' CPUs."""
    gpus = [d for d in instance.cluster.devices if d.kind == "gpu"]
    return gpus or [d for d in instance.cluster.devices if d.kind == "cpu"]


class Simulator:
    def __init__(self, instance: Instance, cost: CostModel, slots: int = 1,
                 devices: list[Device] | None = None) -> None:
        """``devices``: those that serve (default :func:`serving_devices`)."""
        self.inst = instance
        self.cost = cost
        self.slots = slots  # n_parallel of every engine (OLLAMA_NUM_PARALLEL, concurrencyLimit)
        self.n_ctx = context_sizes(instance)
        self.devices = {d.id: DeviceState(d)
                        for d in (serving_devices(instance) if devices is None else devices)}
        # per host: the intervals of resident engines (end inf), and the ended ones by end
        self.ledger: dict[str, list[list[float]]] = {h.id: [] for h in instance.cluster.hosts}
        self.ended: dict[str, list[list[float]]] = {h.id: [] for h in instance.cluster.hosts}
        self.engines: list[Engine] = []
        self.actions: list[Action] = []
        self._fits: dict[tuple[str, str, int | None], EngineConfig | None] = {}

    # --- configuration ------------------------------------------------------------
    def fit_config(self, model: str, device: str,
                   gpu_free: int | None = None) -> EngineConfig | None:
        """Most GPU layers that fit in ``gpu_free`` (default: the whole GPU), like ``--fit``
        (kept per argument: list schedules ask again at every decision)."""
        k = (model, device, gpu_free)
        if k not in self._fits:
            self._fits[k] = self._fit_config(model, device, gpu_free)
        return self._fits[k]

    def _fit_config(self, model: str, device: str,
                    gpu_free: int | None) -> EngineConfig | None:
        return fit_alone(self.inst, self.cost, model, self.devices[device].device,
                         self.n_ctx[model], self.slots, gpu_free)

    # --- host memory ledger -------------------------------------------------------
    def host_peak_from(self, host: str, t: float, ending: dict[int, float]) -> float:
        """Largest host memory use at any time >= t; ``ending`` overrides interval ends."""
        events: list[tuple[float, int, float]] = []
        ended = self.ended[host]  # only those ending after t (a long replay ends thousands)
        for iv in (*self.ledger[host], *ended[bisect.bisect_right(ended, t, key=_end):]):
            s, e, b = iv[0], ending.get(id(iv), iv[1]), iv[2]
            if e <= t:
                continue
            events.append((max(s, t), 1, b))
            if e != math.inf:
                events.append((e, 0, -b))
        events.sort(key=lambda x: (x[0], x[1]))
        cur = best = 0.0
        for _t, _o, b in events:
            cur += b
            best = max(best, cur)
        return best

    # --- decisions ----------------------------------------------------------------
    def resident_engines(self, model: str) -> list[tuple[DeviceState, Resident]]:
        return [(ds, r) for ds in self.devices.values() for r in ds.resident
                if r.engine.model == model]

    def plan_load(self, model: str, device: str, earliest: float,
                  evict_all: bool = False) -> LoadOption | None:
        """Evict least-recently-used engines on ``device`` until ``model`` fits; dry run."""
        ds = self.devices[device]
        cfg = self.fit_config(model, device)
        if cfg is None:
            return None
        gpu_need = self.cost.gpu_bytes(cfg)
        host_need = self.cost.host_bytes(cfg)
        host = ds.device.host
        host_cap = self.inst.cluster.host(host).memory_bytes
        gpu_cap = ds.device.memory_bytes if ds.device.kind == "gpu" else 0
        order = sorted(ds.resident, key=lambda r: r.last_used)
        evict: list[Resident] = []
        t = max(ds.free_at, earliest)
        while True:
            unload_end = t + sum(self.cost.unload_s(r.engine.config) for r in evict)
            kept = [r for r in ds.resident if r not in evict]
            gpu_ok = ds.device.kind != "gpu" or \
                sum(r.engine.gpu_bytes for r in kept) + gpu_need <= gpu_cap
            ending = {id(r.interval): unload_end for r in evict}
            host_ok = self.host_peak_from(host, unload_end, ending) + host_need <= host_cap
            if gpu_ok and host_ok and not (evict_all and kept):
                return LoadOption(device, cfg, tuple(evict), t,
                                  unload_end + self.cost.load_s(cfg))
            if not order:
                return None
            evict.append(order.pop(0))

    def apply_load(self, opt: LoadOption, on_demand: str | None = None) -> Resident:
        """Load ``opt``'s engine (after its evictions); ``on_demand``: the request whose
        arrival makes the server load it (the load is marked so, and starts no earlier)."""
        ds = self.devices[opt.device]
        t = max(ds.free_at, opt.start)
        ds.slot_engine = None
        for r in opt.evict:
            self.unload(r, t)
            t = ds.free_at
        cfg = opt.cfg
        e = Engine(f"e{len(self.engines) + 1}", cfg.model, cfg.device, cfg.n_gpu_layers,
                   cfg.n_ctx, self.cost.gpu_bytes(cfg), self.cost.host_bytes(cfg),
                   n_parallel=cfg.n_parallel)
        self.engines.append(e)
        end = t + self.cost.load_s(cfg)
        self.actions.append(Action("load", e.id, e.device, t, end, on_demand=on_demand))
        iv = [t, math.inf, float(e.host_bytes)]
        self.ledger[ds.device.host].append(iv)
        res = Resident(e, iv, end, ds.device.host, [end] * cfg.n_parallel)
        ds.resident.append(res)
        ds.free_at = end
        return res

    def unload(self, r: Resident, earliest: float) -> None:
        ds = self.devices[r.engine.device]
        t = max(ds.free_at, earliest)
        ds.slot_engine = None
        end = t + self.cost.unload_s(r.engine.config)
        self.actions.append(Action("unload", r.engine.id, r.engine.device, t, end))
        r.interval[1] = end
        open_ = self.ledger[r.host]
        del open_[next(i for i, iv in enumerate(open_) if iv is r.interval)]
        bisect.insort(self.ended[r.host], r.interval, key=_end)
        ds.resident.remove(r)
        ds.free_at = end

    def run_time(self, r: Resident, req: Request) -> float:
        return self.cost.run_s_at(r.engine.config, req.prompt_tokens, 0, req.output_tokens,
                                  active=r.engine.n_parallel)

    def run_start(self, r: Resident, req: Request, earliest: float) -> float:
        """When ``req`` can start on ``r``: a free slot, after every action on the device
        that is not one of this engine's runs."""
        ds = self.devices[r.engine.device]
        if r.engine.n_parallel == 1:
            return max(ds.free_at, earliest, req.arrival_s)
        after = ds.barrier if ds.slot_engine == r.engine.id else ds.free_at
        return max(after, min(r.slot_free), earliest, req.arrival_s)

    def next_time(self, ds: DeviceState) -> float:
        """When the device can take its next request: a free slot of the engine whose
        runs overlap now, else when everything on it has ended."""
        if ds.slot_engine is None:
            return ds.free_at
        r = next((x for x in ds.resident if x.engine.id == ds.slot_engine), None)
        return min(r.slot_free) if r is not None else ds.free_at

    def idle_until(self, ds: DeviceState, t: float) -> None:
        """Nothing to do on ``ds`` before ``t``."""
        ds.free_at = max(ds.free_at, t)
        for r in ds.resident:
            r.slot_free = [max(x, t) for x in r.slot_free]

    def run(self, r: Resident, req: Request, earliest: float) -> float:
        ds = self.devices[r.engine.device]
        t = self.run_start(r, req, earliest)
        end = t + self.run_time(r, req)
        if r.engine.n_parallel > 1:
            if ds.slot_engine != r.engine.id:
                ds.slot_engine, ds.barrier = r.engine.id, ds.free_at
            i = min(range(len(r.slot_free)), key=lambda k: r.slot_free[k])
            r.slot_free[i] = end
            self.actions.append(Action("run", r.engine.id, r.engine.device, t, end,
                                       request=req.id, tokens_from=0,
                                       tokens_to=req.output_tokens))
            ds.free_at = max(ds.free_at, end)
            r.last_used = max(r.last_used, end)
            return end
        ds.slot_engine = None
        self.actions.append(Action("run", r.engine.id, r.engine.device, t, end, request=req.id,
                                   tokens_from=0, tokens_to=req.output_tokens))
        ds.free_at = end
        r.last_used = end
        return end

    def schedule(self) -> Schedule:
        return Schedule(tuple(self.engines),
                        tuple(sorted(self.actions, key=lambda a: (a.start_s, a.device))))
