"""What an instance asks of its cluster (``planner instance show``).

Before any plan: for each model on each device, the most GPU layers that fit there
with nothing else resident (as ``--fit`` would choose, and as the baselines load),
its decode and prefill speed and its load time at that split, from the cost model the
solver would use (profiles where they cover the pair, the analytic model elsewhere).
Then each model's requests: how many, how fast they arrive, their lengths, and the
work they bring, each request at its fastest device. Against the arrival span, that
work gives the *busy share*: the time the requests need if every one ran alone at its
fastest and no model were ever swapped, over the GPUs' time (without GPUs, the host
CPUs') while requests arrive. Above 1 the GPUs cannot keep up even so, and a backlog
grows unless the host CPUs take work at their lower speed; swaps, memory shared between
models and slower splits only add to it.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from planner.baselines.sim import context_sizes, fit_alone
from planner.costmodel.base import CostModel
from planner.domain import Instance

GIB = 2**30


@dataclass(frozen=True)
class Fit:
    """One model alone on one device, at the most GPU layers that fit (None: none fit)."""

    model: str
    device: str
    max_gpu_layers: int  # llama.cpp's count: the repeating layers and the output layer
    n_gpu_layers: int | None
    gpu_gib: float | None
    host_gib: float | None
    decode_tok_s: float | None  # at the model's median prompt depth
    prefill_tok_s: float | None  # of the model's median prompt
    load_s: float | None
    source: str  # "analytic", or the profile behind the pair


@dataclass(frozen=True)
class ModelWork:
    """One model's requests."""

    model: str
    requests: int
    rate_per_s: float | None  # over the instance's arrival span (None: no span)
    median_prompt: int | None
    median_output: int | None
    weight: float  # their total weight
    with_slo: int
    fastest_s: float  # each request's run alone at its fastest device, summed
    fastest_on: str | None  # where most of them run fastest


@dataclass(frozen=True)
class GpuRoom:
    """Whether a GPU holds every model at its most layers at once (GPU memory only)."""

    device: str
    gib: float
    need_gib: float  # every model's fit on it, together
    most_at_once: int  # the most of those models that fit together (smallest first)
    models: int


@dataclass(frozen=True)
class InstanceSummary:
    name: str
    objective: str
    requests: int
    span_s: float  # first to last arrival
    pool: str  # "GPUs" or "host CPUs": the devices the busy share counts
    pool_size: int
    fits: tuple[Fit, ...]
    rooms: tuple[GpuRoom, ...]
    work: tuple[ModelWork, ...]
    unservable: tuple[str, ...]  # models that fit no device
    fastest_s: float
    busy_share: float | None  # fastest_s / (span_s * pool_size); None without a span

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(instance: Instance, cost: CostModel) -> InstanceSummary:
    n_ctx = context_sizes(instance)
    devices = instance.cluster.devices
    source = getattr(cost, "source", None)
    by_model: dict[str, list[Any]] = {m.id: [] for m in instance.models}
    for r in instance.requests:
        by_model[r.model].append(r)
    fits: list[Fit] = []
    cfgs = {}
    for m in instance.models:
        reqs = by_model[m.id]
        prompt = int(statistics.median(r.prompt_tokens for r in reqs)) if reqs else 512
        top = cost.max_gpu_layers(m.id)
        for d in devices:
            cfg = fit_alone(instance, cost, m.id, d, n_ctx[m.id])
            src = source(m.id, d.id) if callable(source) else cost.name
            if cfg is None:
                fits.append(Fit(m.id, d.id, top, None, None, None, None, None, None, src))
                continue
            cfgs[(m.id, d.id)] = cfg
            pre = cost.prefill_s(cfg, prompt)
            step = cost.decode_s_per_token(cfg, prompt)
            fits.append(Fit(m.id, d.id, top, cfg.n_gpu_layers,
                            cost.gpu_bytes(cfg) / GIB, cost.host_bytes(cfg) / GIB,
                            1.0 / step if step > 0 else None,
                            prompt / pre if pre > 0 else None, cost.load_s(cfg), src))
    gpus = [d for d in devices if d.kind == "gpu"]
    pool = gpus or [d for d in devices if d.kind == "cpu"]
    arrivals = [r.arrival_s for r in instance.requests]
    span = max(arrivals) - min(arrivals) if arrivals else 0.0
    work: list[ModelWork] = []
    unservable: list[str] = []
    total = 0.0
    for m in instance.models:
        reqs = by_model[m.id]
        places = [d.id for d in devices if (m.id, d.id) in cfgs]
        if not places:
            unservable.append(m.id)
        fastest = 0.0
        wins: dict[str, int] = {}
        for r in reqs:
            runs = {d: cost.run_s(cfgs[(m.id, d)], r.prompt_tokens, 0, r.output_tokens)
                    for d in places}
            if runs:
                best = min(runs, key=lambda d: runs[d])
                fastest += runs[best]
                wins[best] = wins.get(best, 0) + 1
        total += fastest
        work.append(ModelWork(
            m.id, len(reqs), len(reqs) / span if span > 0 else None,
            int(statistics.median(r.prompt_tokens for r in reqs)) if reqs else None,
            int(statistics.median(r.output_tokens for r in reqs)) if reqs else None,
            sum(r.weight for r in reqs), sum(1 for r in reqs if r.slo_s is not None),
            fastest, max(wins, key=lambda d: wins[d]) if wins else None))
    busy = total / (span * len(pool)) if span > 0 and pool else None
    rooms = []
    for g in gpus:
        sizes = sorted(f.gpu_gib for f in fits if f.device == g.id and f.gpu_gib is not None
                       and f.n_gpu_layers)
        room, count, used = g.memory_bytes / GIB, 0, 0.0
        for size in sizes:  # smallest first: the most models that fit together
            if used + size > room:
                break
            used, count = used + size, count + 1
        rooms.append(GpuRoom(g.id, room, sum(sizes), count, len(sizes)))
    return InstanceSummary(instance.name, instance.objective, len(instance.requests), span,
                           "GPUs" if gpus else "host CPUs", len(pool), tuple(fits),
                           tuple(rooms), tuple(work), tuple(unservable), total, busy)
