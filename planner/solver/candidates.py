"""Candidate engine configurations: the layer-split pool and the working set CP-SAT sees.

Pool. Per (model, device), every split :func:`planner.costmodel.splits.split_curve`
keeps (every layer up to 40 layers, else ~3 % decode-time steps; 0 and the most
that fit; dominated splits pruned), on every GPU and, unless turned off, on
every host's CPU as well (``n_gpu_layers`` 0). A host CPU is one more device:
one compute lane (an engine there uses the host's threads, so one request runs
at a time on it), its engines' bytes count in the host's RAM. Plus every
configuration a baseline used, so its plan can be a hint.

Working set. The CP-SAT model holds one option per (request, candidate, period),
so the pool is thinned to stay under an option budget: per (model, device) the
``k`` candidates spread evenly along the curve (fastest and least memory always
among them), with ``k`` the largest that fits the budget. Small instances keep
the whole pool.
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


def working_set(instance: Instance, pool: dict[tuple[str, str], list[EngineConfig]],
                baselines: dict[str, Schedule], budget: float, periods: int,
                n_ctx: dict[str, int] | None = None, k_max: int = 3) -> list[EngineConfig]:
    """The first candidates the CP-SAT model holds: at most ``k_max`` per (model, device)
    and ``budget`` request options (the split search, lns.py, moves from there)."""
    n_ctx = n_ctx or context_sizes(instance)
    per_model: dict[str, int] = {}
    for r in instance.requests:
        per_model[r.model] = per_model.get(r.model, 0) + 1

    def options(k: int) -> int:
        return sum(per_model.get(m, 0) * min(k, len(c)) * periods for (m, _d), c in pool.items())

    longest = max((len(c) for c in pool.values()), default=1)
    k = 1
    while k < min(longest, k_max) and options(k + 1) <= budget:
        k += 1
    out: list[EngineConfig] = []
    seen: set[tuple[str, str, int]] = set()

    def add(cfg: EngineConfig) -> None:
        if (cfg.model, cfg.device, cfg.n_gpu_layers) not in seen:
            seen.add((cfg.model, cfg.device, cfg.n_gpu_layers))
            out.append(cfg)

    for c in pool.values():
        for cfg in spread(c, k):
            add(cfg)
    for sched in baselines.values():
        for e in sched.engines:
            if e.n_ctx == n_ctx.get(e.model):
                add(EngineConfig(e.model, e.device, e.n_gpu_layers, e.n_ctx))
    return out
