"""Solver input data: candidate engines, per-request options, integer durations, bounds.

Everything the CP-SAT model needs is computed here, apart from model building
(as in OR-Tools' samples): the time grid (``TICKS_PER_S`` ticks per second;
every duration is rounded *up* so that a plan read back in seconds keeps the
cost model's durations or longer), the candidate engine configurations per
(model, device), the run time of every request on every candidate engine, and
a valid lower bound on each request's response time.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass, field, replace

from planner.baselines.sim import context_sizes
from planner.costmodel.analytic import split_layers
from planner.costmodel.base import CostModel, CostModelError
from planner.domain import EngineConfig, Instance, Request, Schedule
from planner.solver.candidates import curves, solver_devices, working_set
from planner.solver.preempt import SplitData, build_alternative, split_points

TICKS_PER_S = 1000  # 1 ms grid
MIB = 1024**2
WEIGHT_SCALE = 1000  # request weights become integers: round(weight * WEIGHT_SCALE)
#: the request a split engine's layers are placed for (prompt, output tokens)
SPLIT_PROBE = (128, 128)
SPLIT_MIN_TOKENS = 16  # requests with at least this many output tokens may be preempted


def ticks_up(seconds: float) -> int:
    """Seconds to ticks, rounded up (durations and earliest starts)."""
    return max(0, math.ceil(seconds * TICKS_PER_S - 1e-9))


@dataclass(frozen=True)
class CandidateEngine:
    """One engine configuration the solver may load (any number of times)."""

    key: int
    cfg: EngineConfig
    host: str
    on_gpu: bool
    gpu_bytes: int
    host_bytes: int
    gpu_mib: int  # rounded up, for the cumulative constraints
    host_mib: int
    load: int  # ticks
    unload: int  # ticks
    load_s: float  # the cost model's exact durations, written into the plan
    unload_s: float
    #: GPU id -> MiB on it (rounded up); a split engine spans several GPUs
    gpu_share_mib: tuple[tuple[str, int], ...] = ()
    gpu_shares: tuple[tuple[str, int], ...] = ()  # GPU id -> bytes

    @property
    def devices(self) -> tuple[str, ...]:
        return self.cfg.devices

    @property
    def slots(self) -> int:
        return self.cfg.n_parallel


@dataclass(frozen=True)
class RequestData:
    req: Request
    arrival: int  # earliest start tick
    weight: int  # scaled integer weight
    deadline: int | None  # latest completion tick that meets the SLO
    run: dict[int, int]  # candidate engine key -> run ticks (whole request, from token 0)
    run_s: dict[int, float]  # the same in exact seconds
    min_response_s: float  # lower bound on the response time over these candidates, seconds
    splits: tuple[SplitData, ...] = ()  # preemption alternatives (planner.solver.preempt)


@dataclass(frozen=True)
class ProblemData:
    instance: Instance
    engines: tuple[CandidateEngine, ...]
    requests: tuple[RequestData, ...]
    gpu_mib: dict[str, int]  # GPU id -> capacity (rounded down)
    host_mib: dict[str, int]  # host id -> capacity (rounded down)
    devices: tuple[str, ...]  # serving devices
    device_host: dict[str, str]
    pool: dict[tuple[str, str], list[EngineConfig]] = field(default_factory=dict)  # all splits

    def engines_of(self, model: str) -> list[CandidateEngine]:
        return [e for e in self.engines if e.cfg.model == model]


def request_options(data: ProblemData) -> int:
    """(request, candidate engine) pairs of a problem: what a CP-SAT model's size grows with"""
    return sum(len(rd.run) for rd in data.requests)


def restrict(data: ProblemData, keep: set[int]) -> ProblemData:
    """The same problem over a subset of candidate engines (placement decided elsewhere).

    Per-request lower bounds stay those of the full candidate set.
    """
    reqs = tuple(RequestData(rd.req, rd.arrival, rd.weight, rd.deadline,
                             {k: v for k, v in rd.run.items() if k in keep},
                             {k: v for k, v in rd.run_s.items() if k in keep},
                             rd.min_response_s, tuple(sd.only(keep) for sd in rd.splits))
                 for rd in data.requests)
    return ProblemData(data.instance, tuple(e for e in data.engines if e.key in keep), reqs,
                       data.gpu_mib, data.host_mib, data.devices, data.device_host, data.pool)


def co_resident(data: ProblemData, a: CandidateEngine, b: CandidateEngine) -> bool:
    """Whether engines ``a`` and ``b`` fit in memory together (SPEC rule 4: on every GPU
    both use, and on their host when they share one). Engines that do not can never be
    resident at once, so their runs never overlap, whatever else holds memory."""
    if a.host == b.host and a.host_mib + b.host_mib > data.host_mib.get(a.host, a.host_mib
                                                                         + b.host_mib):
        return False
    mine = dict(a.gpu_share_mib)
    return all(g not in mine or mine[g] + mib <= data.gpu_mib.get(g, mine[g] + mib)
               for g, mib in b.gpu_share_mib)


class InfeasibleInstance(Exception):
    """No plan exists; the message names the model, device or request responsible."""


def split_config(instance: Instance, cost: CostModel, model: str, host_id: str,
                 n_ctx: int, n_parallel: int = 1) -> EngineConfig | None:
    """Every layer on the GPUs of one host, if each GPU's share and the host fit: split in
    proportion to their memory (llama.cpp's default ``--tensor-split``), or, when faster,
    with more layers on the faster GPUs (:func:`_faster_split`); None when the proportional
    split does not fit."""
    host = instance.cluster.host(host_id)
    if len(host.gpus) < 2:
        return None
    total = sum(g.memory_bytes for g in host.gpus)
    split = tuple((g.id, g.memory_bytes / total) for g in host.gpus)
    cfg = EngineConfig(model, host.gpus[0].id, cost.n_layers(model) + 1, n_ctx, n_parallel,
                       split)
    try:
        if not config_fits(instance, cost, cfg):
            return None
        return _faster_split(instance, cost, cfg)
    except CostModelError:  # profiles measure one GPU; no reference data for the split
        return None


def config_fits(instance: Instance, cost: CostModel, cfg: EngineConfig) -> bool:
    """Whether ``cfg`` alone fits its host's RAM and, on GPUs, each GPU's share its GPU."""
    dev = instance.cluster.device(cfg.device)
    if cost.host_bytes(cfg) > instance.cluster.host(dev.host).memory_bytes:
        return False
    return dev.kind != "gpu" or all(b <= instance.cluster.device(d).memory_bytes
                                    for d, b in cost.gpu_shares(cfg).items())


def _faster_split(instance: Instance, cost: CostModel, cfg: EngineConfig) -> EngineConfig:
    """From ``cfg`` (fitting), one layer at a time from one GPU to another while a run
    (``SPLIT_PROBE``) gets faster and every GPU's share still fits (each GPU keeps a layer).
    On an RTX 4090 and an L4 (24 GiB each, 128 GiB of host RAM), the 14B F16 model split in
    proportion to memory (24 and 24 of its 48 layers) runs a 128-token request in 11.24 s
    (analytic cost model), at 45 and 3 in 6.61 s, where the 4090 alone (layers left on
    the host CPU) takes 8.63 s. A layer takes the same time on a GPU wherever the others are,
    so where no single move helps no split is faster (tests/test_split_slots.py checks it
    against every two-GPU split)."""
    layers = min(cfg.n_gpu_layers, cost.n_layers(cfg.model))  # the output layer: last GPU
    ids = [d for d, _f in cfg.split]
    counts = split_layers(layers, cfg.split)

    def make(c: list[int]) -> EngineConfig:
        return EngineConfig(cfg.model, cfg.device, cfg.n_gpu_layers, cfg.n_ctx, cfg.n_parallel,
                            tuple((d, n / layers) for d, n in zip(ids, c, strict=True)))

    def seconds(c: EngineConfig) -> float:
        return cost.run_s(c, SPLIT_PROBE[0], 0, SPLIT_PROBE[1])

    best, best_s = cfg, seconds(cfg)
    while True:
        move = None
        for i, j in itertools.permutations(range(len(ids)), 2):
            if counts[i] <= 1:
                continue
            c = counts.copy()
            c[i] -= 1
            c[j] += 1
            cand = make(c)
            t = seconds(cand)
            if t < best_s - 1e-12 and config_fits(instance, cost, cand):
                move, best, best_s = c, cand, t
        if move is None:
            return best
        counts = move


def with_slots(instance: Instance, cost: CostModel, cfg: EngineConfig,
               n_parallel: int) -> EngineConfig | None:
    """``cfg`` with ``n_parallel`` slots (KV cache for each), if it still fits."""
    c = EngineConfig(cfg.model, cfg.device, cfg.n_gpu_layers, cfg.n_ctx, n_parallel, cfg.split)
    return c if config_fits(instance, cost, c) else None


def with_slot_variants(instance: Instance, cost: CostModel, configs: list[EngineConfig],
                       slots: tuple[int, ...], n_ctx: dict[str, int] | None = None,
                       ) -> list[EngineConfig]:
    """``configs`` each with every ``n_parallel`` in ``slots`` that still fits, plus, for
    a model no GPU holds whole, all its layers split over a host's GPUs."""
    n_ctx = n_ctx or context_sizes(instance)
    out: list[EngineConfig] = []
    seen: set[tuple[str, str, int, int, tuple[tuple[str, float], ...]]] = set()

    def add(cfg: EngineConfig | None) -> None:
        if cfg is None:
            return
        for p in sorted(set(slots) | {cfg.n_parallel}):
            c = cfg if p == cfg.n_parallel else with_slots(instance, cost, cfg, p)
            key = (cfg.model, cfg.device, cfg.n_gpu_layers, p, cfg.split)
            if c is not None and key not in seen:
                seen.add(key)
                out.append(c)

    for cfg in configs:
        add(cfg)
    used = {r.model for r in instance.requests}
    for m in instance.models:
        if m.id not in used:
            continue
        for h in instance.cluster.hosts:
            whole = [EngineConfig(m.id, g.id, cost.n_layers(m.id) + 1, n_ctx[m.id])
                     for g in h.gpus]
            if h.gpus and not any(cost.gpu_bytes(c) <= g.memory_bytes
                                  for c, g in zip(whole, h.gpus, strict=True)):
                add(split_config(instance, cost, m.id, h.id, n_ctx[m.id]))
    return out


def build_data(instance: Instance, cost: CostModel,
               baselines: dict[str, Schedule] | None = None, max_options: float = math.inf,
               periods: int = 2, cpu_engines: bool = True,
               n_ctx: dict[str, int] | None = None,
               configs: list[EngineConfig] | None = None, max_splits: int = 0,
               slots: tuple[int, ...] = (1,)) -> ProblemData:
    """Candidate engines and request options; raises InfeasibleInstance with a reason.

    The candidates are the split pool's working set for ``max_options`` request
    options at ``periods`` periods per engine (:mod:`planner.solver.candidates`),
    or ``configs`` when given. At most ``max_splits`` requests get preemption
    alternatives: those where preemption can pay most (``preemption_candidates``);
    preemption uses one-slot engines on one device only.

    ``slots``: the ``n_parallel`` values candidate engines may have (each candidate
    with every value that still fits, plus, for a model no GPU holds whole, all its
    layers split over a host's GPUs); a run on an engine with ``p`` slots takes the
    cost model's duration with ``p`` sequences decoding together throughout
    (conservative: the slots may not all be busy).
    """
    baselines = baselines or {}
    devices = solver_devices(instance, cpu_engines)
    dev_host = {d.id: d.host for d in devices}
    pool = curves(instance, cost, devices, n_ctx)
    if configs is None:
        configs = working_set(instance, pool, baselines, max_options, periods, cost, n_ctx)
    engines: list[CandidateEngine] = []
    configs = with_slot_variants(instance, cost, configs, slots, n_ctx)
    for i, cfg in enumerate(configs):
        on_gpu = instance.cluster.device(cfg.device).kind == "gpu"
        shares = cost.gpu_shares(cfg) if on_gpu else {}
        gb, hb = sum(shares.values()), cost.host_bytes(cfg)
        engines.append(CandidateEngine(
            i, cfg, dev_host[cfg.device], on_gpu, gb, hb, -(-gb // MIB), -(-hb // MIB),
            max(1, ticks_up(cost.load_s(cfg))), max(1, ticks_up(cost.unload_s(cfg))),
            cost.load_s(cfg), cost.unload_s(cfg),
            tuple((d, -(-b // MIB)) for d, b in shares.items()), tuple(shares.items())))
    by_model: dict[str, list[CandidateEngine]] = {}
    for e in engines:
        by_model.setdefault(e.cfg.model, []).append(e)
    for m in instance.models:
        if m.id not in by_model and any(r.model == m.id for r in instance.requests):
            raise InfeasibleInstance(
                f"model {m.id} fits on no serving device "
                f"({', '.join(d.id for d in devices)}) at any layer split")
    requests = []
    for r in instance.requests:
        run: dict[int, int] = {}
        run_s: dict[int, float] = {}
        best = math.inf
        first_load = math.inf
        for e in by_model[r.model]:
            if r.total_tokens > e.cfg.n_ctx:
                continue
            s = cost.run_s_at(e.cfg, r.prompt_tokens, 0, r.output_tokens,
                              active=e.cfg.n_parallel)
            run[e.key] = max(1, ticks_up(s))
            run_s[e.key] = s
            best = min(best, s)
            first_load = min(first_load, cost.load_s(e.cfg) + s)
        if not run:
            raise InfeasibleInstance(
                f"request {r.id}: prompt+output {r.total_tokens} tokens exceed the context "
                f"of every engine of model {r.model}")
        # every engine starts unloaded at t=0, so an engine loads before it can run
        min_resp = max(best, first_load - r.arrival_s)
        deadline = None
        if r.slo_s is not None:
            deadline = math.floor((r.arrival_s + r.slo_s) * TICKS_PER_S + 1e-6)
        weight = max(1, round(r.weight * WEIGHT_SCALE))
        requests.append(RequestData(r, ticks_up(r.arrival_s), weight,
                                    deadline, run, run_s, min_resp))
    if max_splits > 0:
        requests = _with_splits(cost, requests, by_model, baselines, max_splits)
    gpu_mib = {d.id: d.memory_bytes // MIB for d in devices if d.kind == "gpu"}
    host_mib = {h.id: h.memory_bytes // MIB for h in instance.cluster.hosts}
    return ProblemData(instance, tuple(engines), tuple(requests), gpu_mib, host_mib,
                       tuple(d.id for d in devices), dev_host, pool)


def _windows(baselines: dict[str, Schedule], reqs: list[RequestData]) -> dict[
        str, tuple[float, float]]:
    """When each request runs in the best baseline plan (by weighted response)."""
    best: dict[str, tuple[float, float]] = {}
    score = math.inf
    arrival = {rd.req.id: rd.req for rd in reqs}
    for sched in baselines.values():
        win: dict[str, tuple[float, float]] = {}
        for a in sched.actions:
            if a.kind == "run" and a.request in arrival:
                s, e = win.get(a.request, (math.inf, 0.0))
                win[a.request] = (min(s, a.start_s), max(e, a.end_s))
        total = sum(arrival[k].weight * (e - arrival[k].arrival_s) for k, (_s, e) in win.items())
        if len(win) == len(reqs) and total < score:
            best, score = win, total
    return best


def preemption_candidates(reqs: list[RequestData], baselines: dict[str, Schedule],
                          limit: int) -> dict[str, tuple[tuple[float, float],
                                                         list[tuple[float, bool, float]]]]:
    """Requests where preemption can pay: a heavier request (higher weight per second of
    its fastest run) arrives while it runs (in the best baseline's plan, else right
    after its arrival). Scored by the weighted wait they would save; the ``limit`` best,
    each with its window and the heavier arrivals (time, of another model)."""
    win = _windows(baselines, reqs)
    ratio = {rd.req.id: rd.req.weight / max(1e-9, min(rd.run_s.values())) for rd in reqs}
    by_arrival = sorted(reqs, key=lambda rd: rd.req.arrival_s)
    times = [rd.req.arrival_s for rd in by_arrival]
    scored = []
    for rd in reqs:
        r = rd.req
        if r.output_tokens < SPLIT_MIN_TOKENS:
            continue
        s, e = win.get(r.id, (r.arrival_s, r.arrival_s + min(rd.run_s.values())))
        lo, hi = bisect.bisect_right(times, s), bisect.bisect_left(times, e)
        heavier = [(j.req.arrival_s, j.req.model != r.model, min(j.run_s.values()))
                   for j in by_arrival[lo:hi] if ratio[j.req.id] > ratio[r.id] and j.req.id != r.id]
        gain = sum(w.req.weight * (e - w.req.arrival_s) for w in by_arrival[lo:hi]
                   if ratio[w.req.id] > ratio[r.id] and w.req.id != r.id)
        if heavier:
            scored.append((-gain, r.id, (s, e), heavier))
    scored.sort()
    return {rid: (w, h) for _g, rid, w, h in scored[:limit]}


def _with_splits(cost: CostModel, reqs: list[RequestData],
                 by_model: dict[str, list[CandidateEngine]], baselines: dict[str, Schedule],
                 limit: int) -> list[RequestData]:
    cands = preemption_candidates(reqs, baselines, limit)
    out = []
    for rd in reqs:
        got = cands.get(rd.req.id)
        if got is None:
            out.append(rd)
            continue
        r = rd.req
        # preemption: one-slot engines on one device
        engs = {e.key: e.cfg for e in by_model[r.model]
                if e.key in rd.run and e.slots == 1 and not e.cfg.split}
        if not engs:
            out.append(rd)
            continue
        fastest = min(engs, key=lambda k: rd.run_s[k])
        cfg = engs[fastest]
        prefill = cost.prefill_s(cfg, r.prompt_tokens)
        per_token = (rd.run_s[fastest] - prefill) / r.output_tokens
        mid = r.prompt_tokens + r.output_tokens // 2
        handover = min(cost.kv_save_s(cfg, mid) + cost.kv_restore_s(cfg, mid),
                       cost.prefill_s(cfg, mid))
        alts = tuple(build_alternative(cost, r, engs, fastest, pts, stay, TICKS_PER_S)
                     for pts, stay in split_points(r, got[0], got[1], prefill, per_token,
                                                   handover))
        out.append(replace(rd, splits=alts))
    return out
