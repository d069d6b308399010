"""Per-request times for the bounds (:mod:`planner.solver.bound`, whose docstring has the
derivation): each request's fastest run per device (``p_jd``, ``p_j``), each model's least
load per device (``L_md``), the places and their configurations (engines split over a
host's GPUs as the pseudo-device ``split:<host>``), and the pooled machine (preemptive
WSPT on the devices' summed speed)."""

from __future__ import annotations

import heapq
import math

from planner.baselines.sim import context_sizes
from planner.costmodel.base import CostModel
from planner.domain import Device, EngineConfig, Instance, Request
from planner.solver.bound_phases import TwoPhases, model_phases, rho_kappa, scaled
from planner.solver.candidates import curves, solver_devices
from planner.solver.data import split_config

PROBES = 5  # contexts at which the fastest configuration of a pair is confirmed


def _fastest(cost: CostModel, curve: list[EngineConfig], prompt: int, out: int) -> list[
        EngineConfig]:
    """Configurations that may be fastest for some request of this (model, device): the
    curve's fastest, plus any that beat it at a probe context (kept conservative)."""
    best = curve[0]
    keep = [best]
    for c in curve[1:]:
        for i in range(PROBES):
            ctx = prompt + (out * i) // max(1, PROBES - 1)
            if cost.decode_s_per_token(c, ctx) < cost.decode_s_per_token(best, ctx) or \
                    cost.prefill_s(c, prompt) < cost.prefill_s(best, prompt):
                keep.append(c)
                break
    return keep


def request_bounds(instance: Instance, cost: CostModel) -> tuple[
        dict[str, float], dict[str, dict[str, float]], dict[tuple[str, str], float]]:
    """(p_j, p_jd per device, L_md) as in the module docstring; ``p_jd`` in seconds per
    share of ``U_j`` (:mod:`planner.solver.bound_phases`)."""
    devices = solver_devices(instance, True)
    pool = curves(instance, cost, devices)
    load: dict[tuple[str, str], float] = {}
    for (m, d), c in pool.items():
        load[(m, d)] = min(cost.load_s(cfg) for cfg in c)
        dev = instance.cluster.device(d)
        if dev.kind == "gpu":  # dominated splits too: any split that fits
            host_cap = instance.cluster.host(dev.host).memory_bytes
            for g in range(cost.max_gpu_layers(m) + 1):
                cfg = EngineConfig(m, d, g, c[0].n_ctx)
                if cost.fits(cfg, dev.memory_bytes, host_cap):
                    load[(m, d)] = min(load[(m, d)], cost.load_s(cfg))
    probes: dict[tuple[str, str], list[EngineConfig]] = {}
    prompt_max: dict[str, int] = {}
    out_max: dict[str, int] = {}
    for r in instance.requests:
        prompt_max[r.model] = max(prompt_max.get(r.model, 0), r.prompt_tokens)
        out_max[r.model] = max(out_max.get(r.model, 0), r.output_tokens)
    for (m, d), c in pool.items():
        probes[(m, d)] = _fastest(cost, c, prompt_max[m], out_max[m])
    p: dict[str, float] = {}
    pd: dict[str, dict[str, float]] = {}
    for r in instance.requests:
        row = {}
        for dv in devices:
            cs = probes.get((r.model, dv.id))
            if cs:
                row[dv.id] = min(cost.run_s(c, r.prompt_tokens, 0, r.output_tokens) for c in cs
                                if r.total_tokens <= c.n_ctx)
        pd[r.id] = row
    # engines with every layer split over a host's GPUs (data.split_config): one more
    # "device" ``split:<host>`` that occupies all of that host's GPUs (see SPLITS)
    # (as data.with_slot_variants offers them: for a model no GPU of the host holds whole)
    n_ctx = context_sizes(instance)
    for h in instance.cluster.hosts:
        for m in sorted({r.model for r in instance.requests}):
            if any(cost.gpu_bytes(EngineConfig(m, g.id, cost.n_layers(m) + 1, n_ctx[m]))
                   <= g.memory_bytes for g in h.gpus):
                continue
            scfg = split_config(instance, cost, m, h.id, n_ctx[m])
            if scfg is None:
                continue
            load[(m, SPLIT + h.id)] = cost.load_s(scfg)
            for r in instance.requests:
                if r.model == m:
                    pd[r.id][SPLIT + h.id] = cost.run_s(scfg, r.prompt_tokens, 0,
                                                         r.output_tokens)
    # pieces of a request on several devices (bound_phases): seconds per share of U_j
    places = place_configs(instance, cost, pool, load)
    for m in sorted({r.model for r in instance.requests}):
        cfgs = {d: cs for (mm, d), cs in places.items() if mm == m}
        if len(cfgs) < 2:
            continue
        reqs = [r for r in instance.requests if r.model == m]
        ph = model_phases(cost, reqs, cfgs)
        rk = {d: rho_kappa(cost, cs, ph) for d, cs in cfgs.items()}
        rho = {d: v[0] for d, v in rk.items()}
        kappa = {d: v[1] for d, v in rk.items()}
        for r in reqs:
            _, pd[r.id] = scaled(pd[r.id], rho, kappa)
    for r in instance.requests:
        p[r.id] = min(pd[r.id].values()) if pd[r.id] else math.inf
    return p, pd, load


SPLIT = "split:"  # pseudo-device of an engine split over all GPUs of a host


def place_configs(instance: Instance, cost: CostModel,
                  pool: dict[tuple[str, str], list[EngineConfig]],
                  load: dict[tuple[str, str], float]
                  ) -> dict[tuple[str, str], list[EngineConfig]]:
    """(model, device) -> the configurations a request may run on there: the pool's
    candidate splits (``candidates.curves``), and for a ``split:<host>`` pseudo-device that
    ``request_bounds`` offered (it has a load time) the engine split over the host's GPUs."""
    n_ctx = context_sizes(instance)
    out = {k: cs for k, cs in pool.items() if cs}
    for m, d in load:
        if d.startswith(SPLIT):
            scfg = split_config(instance, cost, m, d[len(SPLIT):], n_ctx[m])
            if scfg is not None:
                out[(m, d)] = [scfg]
    return out


PhaseRates = tuple[dict[tuple[str, str], list[EngineConfig]], TwoPhases]


def phase_rates(instance: Instance, cost: CostModel, load: dict[tuple[str, str], float]
                ) -> PhaseRates:
    """Every place's configurations and the two-phase accounting over them
    (``bound_phases.TwoPhases``), shared by the LP and the decode-unit bounds."""
    cfgs = place_configs(instance, cost, curves(instance, cost, solver_devices(instance, True)),
                         load)
    return cfgs, TwoPhases(cost, list(instance.requests),
                           [(m, cs) for (m, _), cs in cfgs.items()])


def members(instance: Instance, dev: str) -> list[str]:
    """The devices whose compute lanes a run on ``dev`` occupies."""
    if dev.startswith(SPLIT):
        return [g.id for g in instance.cluster.host(dev[len(SPLIT):]).gpus]
    return [dev]


def fluid_wspt(jobs: list[tuple[float, float, float]],
               capacity: list[tuple[float, float]]) -> tuple[float, float]:
    """Preemptive WSPT on one machine of piecewise-constant speed.

    ``jobs``: (release, work, weight); ``capacity``: (from time, speed) steps, sorted.
    Returns (sum of weight * mean busy time, finishing time of all work).
    """
    order = sorted(range(len(jobs)), key=lambda i: jobs[i][0])
    heap: list[tuple[float, int]] = []
    left = [w for _r, w, _x in jobs]
    total_wm = 0.0
    t = 0.0
    k = 0
    ci = 0
    speed = 0.0
    while k < len(order) or heap:
        while ci < len(capacity) and capacity[ci][0] <= t + 1e-12:
            speed = capacity[ci][1]
            ci += 1
        while k < len(order) and jobs[order[k]][0] <= t + 1e-12:
            i = order[k]
            heapq.heappush(heap, (-jobs[i][2] / max(jobs[i][1], 1e-12), i))
            k += 1
        nxt = min(jobs[order[k]][0] if k < len(order) else math.inf,
                  capacity[ci][0] if ci < len(capacity) else math.inf)
        if not heap or speed <= 0:
            if nxt == math.inf:
                return total_wm, math.inf
            t = nxt
            continue
        _ratio, i = heap[0]
        done_at = t + left[i] / speed
        end = min(done_at, nxt)
        work = (end - t) * speed
        # contribution to w_i * M_i = w_i / p_i * integral of t * rate dt
        total_wm += jobs[i][2] / max(jobs[i][1], 1e-12) * speed * (end * end - t * t) / 2
        left[i] -= work
        t = end
        if end >= done_at - 1e-12:
            left[i] = 0.0
            heapq.heappop(heap)
    return total_wm, t


def pooled_speed(instance: Instance, devices: list[Device], group: list[Request],
                 p: dict[str, float], pd: dict[str, dict[str, float]],
                 load: dict[tuple[str, str], float], model: str | None = None
                 ) -> list[tuple[float, float]]:
    """The pooled machine's speed for ``group`` (module docstring), as sorted (from time,
    speed) steps: device ``d`` adds ``S_d = max_j p_j / p_jd`` (at most 1) from its first
    possible load (of ``model``'s, when given)."""
    lanes: dict[str, list[str]] = {}  # run place -> the devices it occupies
    fastest: dict[str, float] = {}  # device -> max_j p_j / p_jd (its share of a split run)
    for r in group:
        for k, v in pd[r.id].items():
            if v <= 0:
                continue
            ms = lanes.get(k)
            if ms is None:
                ms = lanes[k] = members(instance, k)
            # a split run advances j at p_j / p_jS on |S| devices: each gets a share
            rel = p[r.id] / (v * len(ms))
            for g in ms:
                if rel > fastest.get(g, 0.0):
                    fastest[g] = rel
    steps = []
    for d in devices:
        sp = min(1.0, fastest.get(d.id, 0.0))
        at = min((v for (m, dd), v in load.items()
                  if d.id in members(instance, dd) and model in (None, m)),
                 default=math.inf)
        if sp > 0 and at < math.inf:
            steps.append((at, sp))
    capacity: list[tuple[float, float]] = []
    acc = 0.0
    for t, sp in sorted(steps):
        acc += sp
        capacity.append((t, acc))
    return capacity
