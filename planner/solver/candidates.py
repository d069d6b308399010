"""Candidate engine configurations: the layer-split pool and the working set CP-SAT sees.

Pool. Per (model, device), every split :func:`planner.costmodel.splits.split_curve`
keeps (every layer up to 40 layers, else ~3 % decode-time steps; 0 and the most
that fit; dominated splits pruned), on every GPU and, unless turned off, on
every host's CPU as well (``n_gpu_layers`` 0). A host CPU is one more device:
one compute lane (an engine there uses the host's threads, so one request runs
at a time on it), its engines' bytes count in the host's RAM. Plus every
configuration a baseline used, so its plan can be a hint.

Working set. The CP-SAT model holds one option per (request, candidate, period),
and its search degrades with many candidates, so it starts from a few per
(model, device) (``working_set``) and the split search (:mod:`planner.solver.lns`)
moves along the pool's curves from there.
"""

from __future__ import annotations

from planner.baselines.sim import context_sizes
from planner.costmodel.base import CostModel
from planner.costmodel.splits import split_curve
from planner.domain import Device, EngineConfig, Instance, Schedule


def solver_devices(instance: Instance, cpu_engines: bool = True) -> list[Device]:
    """GPUs, and the hosts' CPUs (all of them when there is no GPU; as extra devices
    beside GPUs when ``cpu_engines``)."""
    gpus = [d for d in instance.cluster.devices if d.kind == "gpu"]
    cpus = [d for d in instance.cluster.devices if d.kind == "cpu"]
    if not gpus:
        return cpus
    return gpus + (cpus if cpu_engines else [])


def curves(instance: Instance, cost: CostModel, devices: list[Device],
           n_ctx: dict[str, int] | None = None) -> dict[tuple[str, str], list[EngineConfig]]:
    """(model, device) -> its candidate splits, fastest first."""
    n_ctx = n_ctx or context_sizes(instance)
    out: dict[tuple[str, str], list[EngineConfig]] = {}
    used = {r.model for r in instance.requests}
    for m in instance.models:
        if m.id not in used:
            continue
        for d in devices:
            host_cap = instance.cluster.host(d.host).memory_bytes
            c = split_curve(cost, m.id, d.id, n_ctx[m.id], d.kind == "gpu",
                            d.memory_bytes if d.kind == "gpu" else None, host_cap)
            if c:
                out[(m.id, d.id)] = [s.cfg for s in c]
    return out


def spread(curve: list[EngineConfig], k: int) -> list[EngineConfig]:
    """``k`` configurations evenly along a curve (its ends always included)."""
    if k >= len(curve):
        return list(curve)
    if k <= 1:
        return [curve[0]]
    idx = sorted({round(i * (len(curve) - 1) / (k - 1)) for i in range(k)})
    return [curve[i] for i in idx]


def memory_picks(curve: list[EngineConfig], cost: CostModel, capacity: int | None,
                 shares: tuple[float, ...]) -> list[EngineConfig]:
    """Per share of the device's memory, the fastest split whose GPU bytes fit in it."""
    if capacity is None:
        return curve[:1]
    out: list[EngineConfig] = []
    for share in shares:
        pick = next((c for c in curve if cost.gpu_bytes(c) <= share * capacity), None)
        if pick is not None and pick not in out:
            out.append(pick)
    return out


def working_set(instance: Instance, pool: dict[tuple[str, str], list[EngineConfig]],
                baselines: dict[str, Schedule], budget: float, periods: int, cost: CostModel,
                n_ctx: dict[str, int] | None = None) -> list[EngineConfig]:
    """The first candidates the CP-SAT model holds (the split search, lns.py, moves from
    there): per (model, GPU) the fastest split fitting the whole GPU and the fastest
    fitting half of it, per (model, host CPU) its one configuration, and every
    configuration a baseline used; the half-GPU splits, then the CPU ones, are left
    out while the request options exceed ``budget``."""
    n_ctx = n_ctx or context_sizes(instance)
    per_model: dict[str, int] = {}
    for r in instance.requests:
        per_model[r.model] = per_model.get(r.model, 0) + 1
    cap = {d.id: (d.memory_bytes if d.kind == "gpu" else None)
           for d in instance.cluster.devices}
    levels = [((1.0, 0.5), True), ((1.0,), True), ((1.0,), False)]
    picks: dict[tuple[str, str], list[EngineConfig]] = {}
    for shares, with_cpu in levels:
        picks = {(m, d): memory_picks(c, cost, cap[d], shares) for (m, d), c in pool.items()
                 if with_cpu or cap[d] is not None}
        n = sum(per_model.get(m, 0) * len(c) * periods for (m, _d), c in picks.items())
        if n <= budget:
            break
    out: list[EngineConfig] = []
    seen: set[tuple[str, str, int]] = set()

    def add(cfg: EngineConfig) -> None:
        if (cfg.model, cfg.device, cfg.n_gpu_layers) not in seen:
            seen.add((cfg.model, cfg.device, cfg.n_gpu_layers))
            out.append(cfg)

    for c in picks.values():
        for cfg in c:
            add(cfg)
    for sched in baselines.values():
        for e in sched.engines:
            if e.n_ctx == n_ctx.get(e.model):
                add(EngineConfig(e.model, e.device, e.n_gpu_layers, e.n_ctx))
    return out


def polish_engines(instance: Instance, cost: CostModel,
                   pool: dict[tuple[str, str], list[EngineConfig]]) -> list[EngineConfig]:
    """Configurations the polish may give a run a period of its own on
    (:mod:`planner.solver.polish`): per (model, GPU) the fastest split fitting the whole
    GPU and the fastest fitting half of it, per (model, host CPU) its configuration."""
    cap = {d.id: (d.memory_bytes if d.kind == "gpu" else None)
           for d in instance.cluster.devices}
    return [cfg for (_m, d), c in pool.items()
            for cfg in memory_picks(c, cost, cap[d], (1.0, 0.5))]
