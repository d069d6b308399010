"""Solver input data: candidate engines, per-request options, integer durations, bounds.

Everything the CP-SAT model needs is computed here, apart from model building
(as in OR-Tools' samples): the time grid (``TICKS_PER_S`` ticks per second;
every duration is rounded *up* so that a plan read back in seconds keeps the
cost model's durations or longer), the candidate engine configurations per
(model, device), the run time of every request on every candidate engine, and
a valid lower bound on each request's response time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from planner.baselines.sim import Simulator, context_sizes, serving_devices
from planner.costmodel.base import CostModel
from planner.domain import EngineConfig, Instance, Request, Schedule

TICKS_PER_S = 1000  # 1 ms grid
MIB = 1024**2
WEIGHT_SCALE = 1000  # request weights become integers: round(weight * WEIGHT_SCALE)
GPU_SHARES = (1.0, 0.5)  # candidate configs: most layers fitting this share of the GPU
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
class SplitData:
    """One candidate preemption point: part 1 generates ``[0, k)``, part 2 ``[k, out)``.

    The hand-over is fixed per request to the cheaper of the two the cost model
    offers (on the request's fastest candidate configuration): ``kv`` (kv_save
    after part 1 on its engine, kv_restore before part 2 on its engine) or
    ``recompute`` (part 2 prefills prompt + k tokens again).
    """

    k: int
    mode: str  # "kv" | "recompute"
    part1: dict[int, int]  # engine key -> ticks of the run [0, k)
    part1_s: dict[int, float]
    part2: dict[int, int]  # engine key -> ticks of the run [k, out), recompute included
    part2_s: dict[int, float]
    save: dict[int, int]  # engine key -> kv_save ticks (empty for recompute)
    save_s: dict[int, float]
    restore: dict[int, int]  # engine key -> kv_restore ticks (empty for recompute)
    restore_s: dict[int, float]
    kv_bytes: dict[int, int]  # saving engine key -> bytes of the saved state
    kv_mib: int  # the largest of kv_bytes, in MiB rounded up (host cumulative)

    def only(self, keep: set[int]) -> SplitData:
        def f(d: dict[int, Any]) -> dict[int, Any]:
            return {k: v for k, v in d.items() if k in keep}

        return SplitData(self.k, self.mode, f(self.part1), f(self.part1_s), f(self.part2),
                         f(self.part2_s), f(self.save), f(self.save_s), f(self.restore),
                         f(self.restore_s), f(self.kv_bytes), self.kv_mib)


@dataclass(frozen=True)
class RequestData:
    req: Request
    arrival: int  # earliest start tick
    weight: int  # scaled integer weight
    deadline: int | None  # latest completion tick that meets the SLO
    run: dict[int, int]  # candidate engine key -> run ticks (whole request, from token 0)
    run_s: dict[int, float]  # the same in exact seconds
    min_response_s: float  # valid lower bound on the response time, seconds
    split: SplitData | None = None  # a preemption candidate, when the request is long enough


@dataclass(frozen=True)
class ProblemData:
    instance: Instance
    engines: tuple[CandidateEngine, ...]
    requests: tuple[RequestData, ...]
    gpu_mib: dict[str, int]  # GPU id -> capacity (rounded down)
    host_mib: dict[str, int]  # host id -> capacity (rounded down)
    devices: tuple[str, ...]  # serving devices
    device_host: dict[str, str]

    def engines_of(self, model: str) -> list[CandidateEngine]:
        return [e for e in self.engines if e.cfg.model == model]


def restrict(data: ProblemData, keep: set[int]) -> ProblemData:
    """The same problem over a subset of candidate engines (placement decided elsewhere).

    Per-request lower bounds stay those of the full candidate set.
    """
    reqs = tuple(RequestData(rd.req, rd.arrival, rd.weight, rd.deadline,
                             {k: v for k, v in rd.run.items() if k in keep},
                             {k: v for k, v in rd.run_s.items() if k in keep},
                             rd.min_response_s,
                             rd.split.only(keep) if rd.split is not None else None)
                 for rd in data.requests)
    return ProblemData(data.instance, tuple(e for e in data.engines if e.key in keep), reqs,
                       data.gpu_mib, data.host_mib, data.devices, data.device_host)


class InfeasibleInstance(Exception):
    """No plan exists; the message names the model, device or request responsible."""


def split_config(instance: Instance, cost: CostModel, model: str, host_id: str,
                 n_ctx: int, n_parallel: int = 1) -> EngineConfig | None:
    """Every layer on the GPUs of one host, split in proportion to their memory
    (llama.cpp's default ``--tensor-split``), if each GPU's share and the host fit."""
    host = instance.cluster.host(host_id)
    if len(host.gpus) < 2:
        return None
    total = sum(g.memory_bytes for g in host.gpus)
    split = tuple((g.id, g.memory_bytes / total) for g in host.gpus)
    cfg = EngineConfig(model, host.gpus[0].id, cost.n_layers(model) + 1, n_ctx, n_parallel,
                       split)
    shares = cost.gpu_shares(cfg)
    if any(shares.get(g.id, 0) > g.memory_bytes for g in host.gpus):
        return None
    return cfg if cost.host_bytes(cfg) <= host.memory_bytes else None


def with_slots(instance: Instance, cost: CostModel, cfg: EngineConfig,
               n_parallel: int) -> EngineConfig | None:
    """``cfg`` with ``n_parallel`` slots (KV cache for each), if it still fits."""
    c = EngineConfig(cfg.model, cfg.device, cfg.n_gpu_layers, cfg.n_ctx, n_parallel, cfg.split)
    dev = instance.cluster.device(cfg.device)
    host = instance.cluster.host(dev.host)
    if cost.host_bytes(c) > host.memory_bytes:
        return None
    if dev.kind == "gpu":
        for d, b in cost.gpu_shares(c).items():
            if b > instance.cluster.device(d).memory_bytes:
                return None
    return c


def _candidate_configs(instance: Instance, cost: CostModel,
                       baselines: dict[str, Schedule],
                       slots: tuple[int, ...] = (1,)) -> list[EngineConfig]:
    sim = Simulator(instance, cost)
    n_ctx = context_sizes(instance)
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

    for m in instance.models:
        for d in serving_devices(instance):
            if d.kind == "cpu":
                add(sim.fit_config(m.id, d.id))
                continue
            for share in GPU_SHARES:
                add(sim.fit_config(m.id, d.id, int(d.memory_bytes * share)))
        # a model no GPU holds whole: all its layers split over a host's GPUs
        for h in instance.cluster.hosts:
            whole = [EngineConfig(m.id, g.id, cost.n_layers(m.id) + 1, n_ctx[m.id])
                     for g in h.gpus]
            if h.gpus and not any(cost.gpu_bytes(c) <= g.memory_bytes
                                  for c, g in zip(whole, h.gpus, strict=True)):
                add(split_config(instance, cost, m.id, h.id, n_ctx[m.id]))
    # every configuration a baseline used, so that its plan can be given as a hint
    for sched in baselines.values():
        for e in sched.engines:
            if e.n_ctx == n_ctx[e.model]:
                add(e.config)
    return out


def build_data(instance: Instance, cost: CostModel,
               baselines: dict[str, Schedule] | None = None,
               slots: tuple[int, ...] = (1,)) -> ProblemData:
    """Candidate engines and request options; raises InfeasibleInstance with a reason.

    ``slots``: the ``n_parallel`` values candidate engines may have; a run on an
    engine with ``p`` slots takes the cost model's duration with ``p`` sequences
    decoding together throughout (conservative: the slots may not all be busy).
    """
    baselines = baselines or {}
    devices = serving_devices(instance)
    dev_host = {d.id: d.host for d in devices}
    engines: list[CandidateEngine] = []
    for i, cfg in enumerate(_candidate_configs(instance, cost, baselines, slots)):
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
        split = None
        engs = [e for e in by_model[r.model]
                if e.key in run and e.slots == 1 and not e.cfg.split]
        if r.output_tokens >= SPLIT_MIN_TOKENS and engs:  # preemption: one-slot, one-device
            split, s_best, s_first = _split(cost, r, engs,
                                            min((e.key for e in engs), key=lambda k: run_s[k]))
            # a split run on two configurations may beat every whole run: bound both
            best, first_load = min(best, s_best), min(first_load, s_first)
        # every engine starts unloaded at t=0, so an engine loads before it can run
        min_resp = max(best, first_load - r.arrival_s)
        deadline = None
        if r.slo_s is not None:
            deadline = math.floor((r.arrival_s + r.slo_s) * TICKS_PER_S + 1e-6)
        weight = max(1, round(r.weight * WEIGHT_SCALE))
        requests.append(RequestData(r, ticks_up(r.arrival_s), weight,
                                    deadline, run, run_s, min_resp, split))
    gpu_mib = {d.id: d.memory_bytes // MIB for d in devices if d.kind == "gpu"}
    host_mib = {h.id: h.memory_bytes // MIB for h in instance.cluster.hosts}
    return ProblemData(instance, tuple(engines), tuple(requests), gpu_mib, host_mib,
                       tuple(d.id for d in devices), dev_host)


def _split(cost: CostModel, r: Request, engs: list[CandidateEngine],
           fastest: int) -> tuple[SplitData, float, float]:
    """The preemption candidate at k = output/2, and lower bounds on a split request's
    service time and on load + service time (hand-over costs left out: they only add)."""
    k = r.output_tokens // 2
    ctx = r.prompt_tokens + k
    p1 = {e.key: cost.run_s(e.cfg, r.prompt_tokens, 0, k) for e in engs}
    p2 = {e.key: cost.run_s(e.cfg, r.prompt_tokens, k, r.output_tokens) for e in engs}
    fast = next(e for e in engs if e.key == fastest)
    kv_cost = cost.kv_save_s(fast.cfg, ctx) + cost.kv_restore_s(fast.cfg, ctx)
    rec_cost = cost.run_s(fast.cfg, r.prompt_tokens, k, r.output_tokens, True) - p2[fastest]
    s_best = min(p1.values()) + min(p2.values())
    s_first = min(e.load_s + p1[e.key] for e in engs) + min(p2.values())
    if kv_cost <= rec_cost:
        save_s = {e.key: cost.kv_save_s(e.cfg, ctx) for e in engs}
        restore_s = {e.key: cost.kv_restore_s(e.cfg, ctx) for e in engs}
        kvb = {e.key: cost.kv_bytes(e.cfg, ctx) for e in engs}
        mode, part2_s = "kv", p2
    else:
        save_s, restore_s, kvb = {}, {}, {}
        mode = "recompute"
        part2_s = {e.key: cost.run_s(e.cfg, r.prompt_tokens, k, r.output_tokens, True)
                   for e in engs}

    def ticks(d: dict[int, float]) -> dict[int, int]:
        return {key: max(1, ticks_up(v)) for key, v in d.items()}

    split = SplitData(k, mode, ticks(p1), p1, ticks(part2_s), part2_s, ticks(save_s), save_s,
                      ticks(restore_s), restore_s, kvb,
                      -(-max(kvb.values(), default=0) // MIB))
    return split, s_best, s_first
