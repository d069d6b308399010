"""Domain types: cluster, devices, models, requests, engines, actions and plans.

Every type is a frozen dataclass validated at construction (``__post_init__``),
following ``../shared/SPEC.md`` (format version 1). Times are seconds from the
instance's time zero, memory is bytes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from planner.errors import DomainError

INSTANCE_FORMAT = "planner.instance/1"
PLAN_FORMAT = "planner.plan/1"
#: format 1.1: engines may have parallel slots (``n_parallel``) and span several GPUs of one
#: host (``devices`` with split fractions); written only by plans that use either
PLAN_FORMAT_1_1 = "planner.plan/1.1"
PLAN_FORMATS: tuple[str, ...] = (PLAN_FORMAT, PLAN_FORMAT_1_1)
REPORT_FORMAT = "planner.report/1"

GIB = 1024**3
LOCAL_CPU = "local"  # an instance host whose CPU is "this machine's", whatever it is

ActionKind = Literal["load", "unload", "run", "kv_save", "kv_restore"]
ACTION_KINDS: tuple[str, ...] = ("load", "unload", "run", "kv_save", "kv_restore")
TRANSFER_KINDS: frozenset[str] = frozenset({"load", "unload", "kv_save", "kv_restore"})
OBJECTIVES: tuple[str, ...] = ("mean_response", "makespan", "slo_attainment", "tardiness")

# Upper limits of instance values. Past them a number is a slip of the keyboard, not a
# workload, and the solver's integer arithmetic (1 ms ticks, weights times 1000) would
# overflow 64 bits. An offline plan covers hours, not weeks.
MAX_TIME_S = 1e6  # arrival_s and slo_s: about 11.6 days
MAX_WEIGHT = 1e3  # request weight
MAX_MEMORY_BYTES = 2**50  # a host's or a GPU's memory: 1 PiB
MAX_THREADS = 2**16  # a host's threads
MAX_TOKENS = 2**24  # prompt + output of a request whose model's trained context is unknown




def duplicates(ids: Iterable[str]) -> list[str]:
    """The ids that occur more than once, sorted (linear: instances hold up to 200,000
    requests, and a pairwise count took hours there)."""
    return sorted(i for i, n in Counter(ids).items() if n > 1)


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise DomainError(message)


@dataclass(frozen=True)
class Gpu:
    id: str
    type: str
    memory_bytes: int
    host: str

    def __post_init__(self) -> None:
        _require(bool(self.id), "gpu id must be non-empty")
        _require(self.memory_bytes > 0, f"gpu {self.id}: memory must be positive "
                 "(at least one byte)")
        _require(self.memory_bytes <= MAX_MEMORY_BYTES,
                 f"gpu {self.id}: memory must be at most {MAX_MEMORY_BYTES // 2**30} GiB")


@dataclass(frozen=True)
class Host:
    id: str
    cpu: str
    threads: int
    memory_bytes: int
    gpus: tuple[Gpu, ...] = ()
    #: llama.cpp's extra buffer types (CPU repack, AMX) on this host's engines;
    #: None: decided where the engine runs (off on CPUs with AMX, on elsewhere)
    extra_bufts: bool | None = None

    def __post_init__(self) -> None:
        _require(bool(self.id), "host id must be non-empty")
        _require(0 < self.threads <= MAX_THREADS,
                 f"host {self.id}: threads must be in [1, {MAX_THREADS}]")
        _require(self.memory_bytes > 0, f"host {self.id}: memory must be positive "
                 "(at least one byte)")
        _require(self.memory_bytes <= MAX_MEMORY_BYTES,
                 f"host {self.id}: memory must be at most {MAX_MEMORY_BYTES // 2**30} GiB")


@dataclass(frozen=True)
class Device:
    """A place an engine can live: a host's CPU (``kind='cpu'``) or one GPU."""

    id: str
    kind: Literal["cpu", "gpu"]
    host: str
    type: str
    memory_bytes: int


@dataclass(frozen=True)
class Cluster:
    hosts: tuple[Host, ...]

    def __post_init__(self) -> None:
        _require(len(self.hosts) > 0, "cluster needs at least one host")
        ids = [h.id for h in self.hosts] + [g.id for h in self.hosts for g in h.gpus]
        dup = duplicates(ids)
        _require(not dup, f"duplicate device ids: {', '.join(dup)}")

    @property
    def devices(self) -> tuple[Device, ...]:
        out: list[Device] = []
        for h in self.hosts:
            out.append(Device(h.id, "cpu", h.id, h.cpu, h.memory_bytes))
            out.extend(Device(g.id, "gpu", h.id, g.type, g.memory_bytes) for g in h.gpus)
        return tuple(out)

    def device(self, device_id: str) -> Device:
        for d in self.devices:
            if d.id == device_id:
                return d
        raise DomainError(f"unknown device {device_id!r}")

    def host(self, host_id: str) -> Host:
        for h in self.hosts:
            if h.id == host_id:
                return h
        raise DomainError(f"unknown host {host_id!r}")


@dataclass(frozen=True)
class ModelArch:
    """Architecture metadata of one model file: enough to size weights and KV cache.

    ``layer_bytes`` are the weight bytes of one repeating block; ``other_bytes``
    the weights outside the blocks (token embeddings, output norm and head).
    ``kv_bytes_per_token`` is K and V for all layers at the cache's type (F16).
    """

    name: str
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    layer_bytes: int
    other_bytes: int
    quantization: str
    params: int
    source: str = ""
    kv_bytes_per_elem: int = 2
    #: the context length the model was trained for (GGUF ``context_length``, a
    #: release's ``max_position_embeddings``); None where unknown
    n_ctx_train: int | None = None

    def __post_init__(self) -> None:
        for name in ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "head_dim"):
            _require(getattr(self, name) > 0, f"model {self.name}: {name} must be positive")
        _require(self.n_ctx_train is None or self.n_ctx_train > 0,
                 f"model {self.name}: n_ctx_train must be positive")
        _require(self.layer_bytes > 0, f"model {self.name}: layer_bytes must be positive")
        _require(self.other_bytes >= 0, f"model {self.name}: other_bytes must be >= 0")

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * self.kv_bytes_per_elem

    @property
    def layer_params(self) -> int:
        """Parameters of one block: attention projections, gated MLP, norms."""
        h, d = self.hidden_size, self.head_dim
        attn = 2 * h * self.n_heads * d + 2 * h * self.n_kv_heads * d
        return attn + 3 * h * self.ffn_size + 2 * h

    @property
    def weight_bytes(self) -> int:
        return self.n_layers * self.layer_bytes + self.other_bytes


@dataclass(frozen=True)
class Model:
    """A model as the instance names it, with its resolved architecture."""

    id: str
    arch: ModelArch
    gguf_path: str | None = None
    reference: str | None = None


@dataclass(frozen=True)
class Request:
    id: str
    model: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    weight: float = 1.0
    slo_s: float | None = None

    def __post_init__(self) -> None:
        _require(bool(self.id), "request id must be non-empty")
        _require(math.isfinite(self.arrival_s) and 0 <= self.arrival_s <= MAX_TIME_S,
                 f"request {self.id}: arrival_s must be in [0, {MAX_TIME_S:g}] seconds")
        _require(self.prompt_tokens > 0, f"request {self.id}: prompt_tokens must be > 0")
        _require(self.output_tokens > 0, f"request {self.id}: output_tokens must be > 0")
        _require(self.total_tokens <= MAX_TOKENS,
                 f"request {self.id}: prompt_tokens + output_tokens must be at most "
                 f"{MAX_TOKENS:,}")
        _require(math.isfinite(self.weight) and 0 < self.weight <= MAX_WEIGHT,
                 f"request {self.id}: weight must be > 0 and at most {MAX_WEIGHT:g}")
        _require(self.slo_s is None or (math.isfinite(self.slo_s)
                                        and 0 < self.slo_s <= MAX_TIME_S),
                 f"request {self.id}: slo_s must be > 0 and at most {MAX_TIME_S:g} seconds")

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


@dataclass(frozen=True)
class Instance:
    name: str
    cluster: Cluster
    models: tuple[Model, ...]
    requests: tuple[Request, ...]
    objective: str = "mean_response"
    profiles: tuple[str, ...] = ()
    sha256: str = ""
    path: str = ""  #: the file it was read from (absolute), "" when built in memory

    def __post_init__(self) -> None:
        mids = [m.id for m in self.models]
        dup = duplicates(mids)
        _require(not dup, f"duplicate model ids: {', '.join(dup)}")
        rids = [r.id for r in self.requests]
        dup = duplicates(rids)
        _require(not dup, f"duplicate request ids: {', '.join(dup)}")
        known = set(mids)
        for r in self.requests:
            _require(r.model in known, f"request {r.id}: unknown model {r.model!r}")
        _require(self.objective in OBJECTIVES,
                 f"objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")

    def model(self, model_id: str) -> Model:
        for m in self.models:
            if m.id == model_id:
                return m
        raise DomainError(f"unknown model {model_id!r}")

    def request(self, request_id: str) -> Request:
        for r in self.requests:
            if r.id == request_id:
                return r
        raise DomainError(f"unknown request {request_id!r}")


@dataclass(frozen=True)
class EngineConfig:
    """What a cost model needs to know about an engine.

    ``n_ctx`` is the context of one slot (what one request may use); the engine's
    KV cache holds ``n_parallel * n_ctx`` cells. ``split`` lists the GPUs of one
    host the GPU layers are spread over, with their fractions (llama.cpp's
    ``--split-mode layer --tensor-split``); empty: all on ``device``, which is then
    the first of ``split``.
    """

    model: str
    device: str
    n_gpu_layers: int
    n_ctx: int
    n_parallel: int = 1
    split: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        _require(self.n_gpu_layers >= 0, "n_gpu_layers must be >= 0")
        _require(self.n_ctx > 0, "n_ctx must be > 0")
        _require(self.n_parallel >= 1, "n_parallel must be >= 1")
        if self.split:
            _require(self.split[0][0] == self.device, "split must start with the device")
            _require(abs(sum(f for _d, f in self.split) - 1.0) < 1e-6
                     and all(f > 0 for _d, f in self.split),
                     "split fractions must be positive and sum to 1")

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(d for d, _f in self.split) if self.split else (self.device,)

    @property
    def kv_cells(self) -> int:
        """KV cells of the whole engine: every slot's context."""
        return self.n_ctx * self.n_parallel


@dataclass(frozen=True)
class DeviceShare:
    """One GPU of a split engine: its fraction of the GPU layers and the bytes it holds."""

    id: str
    fraction: float
    gpu_bytes: int

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "fraction": round(self.fraction, 6), "gpu_bytes": self.gpu_bytes}


@dataclass(frozen=True)
class Engine:
    id: str
    model: str
    device: str
    n_gpu_layers: int
    n_ctx: int
    gpu_bytes: int
    host_bytes: int
    #: llama.cpp's extra buffer types (CPU repack, AMX) on or off; None: the default
    #: where it runs (off on CPUs with AMX). From the instance's host, else the profile.
    extra_bufts: bool | None = None
    #: parallel slots: up to this many requests decode together (continuous batching)
    n_parallel: int = 1
    #: GPUs of one host the layers are split over (first = ``device``); empty: ``device`` only
    shares: tuple[DeviceShare, ...] = ()

    def __post_init__(self) -> None:
        _require(bool(self.id), "engine id must be non-empty")
        _require(self.n_gpu_layers >= 0, f"engine {self.id}: n_gpu_layers must be >= 0")
        _require(self.n_ctx > 0, f"engine {self.id}: n_ctx must be > 0")
        _require(self.gpu_bytes >= 0 and self.host_bytes >= 0,
                 f"engine {self.id}: memory must be >= 0")
        _require(self.n_parallel >= 1, f"engine {self.id}: n_parallel must be >= 1")
        if self.shares:
            _require(self.shares[0].id == self.device,
                     f"engine {self.id}: devices must start with its device {self.device}")

    @property
    def devices(self) -> tuple[str, ...]:
        """Every device the engine occupies (its GPUs when split)."""
        return tuple(s.id for s in self.shares) if self.shares else (self.device,)

    @property
    def config(self) -> EngineConfig:
        return EngineConfig(self.model, self.device, self.n_gpu_layers, self.n_ctx,
                            self.n_parallel, tuple((s.id, s.fraction) for s in self.shares))

    def gpu_bytes_on(self, device: str) -> int:
        """Bytes this engine holds on GPU ``device`` (its share when split)."""
        if not self.shares:
            return self.gpu_bytes if device == self.device else 0
        return sum(s.gpu_bytes for s in self.shares if s.id == device)


def fresh_worker_per_load(instance: Instance, engine: Engine,
                          n_gpu_layers: int | None = None) -> bool:
    """Whether every load of ``engine`` happens in a newly started worker process (as
    llama-swap starts a server per model and Ollama a runner): engines with layers on a
    GPU. A CUDA process keeps its context after the model is freed (one H200 replay with
    10 workers kept measured about 490 MiB of GPU memory and 340 MiB of host RSS per
    worker above its prediction), so a worker kept across an unload holds memory no
    deployment would. ``n_gpu_layers``: the layers it really gets on this machine (a
    replay may map a GPU to the host CPU), else the engine's."""
    layers = engine.n_gpu_layers if n_gpu_layers is None else n_gpu_layers
    return layers > 0 and instance.cluster.device(engine.device).kind == "gpu"


@dataclass(frozen=True)
class Action:
    kind: str
    engine: str
    device: str
    start_s: float
    end_s: float
    request: str | None = None
    tokens_from: int | None = None
    tokens_to: int | None = None
    recompute: bool = False
    bytes: int | None = None
    #: a load made on demand (plan format 1.1): the request whose arrival triggers it, as
    #: Ollama and llama-swap load a model when a request for it comes in; the load starts
    #: no earlier than that arrival (the baselines' plans; the planner's loads may start
    #: before, since it knows the arrivals)
    on_demand: str | None = None

    def __post_init__(self) -> None:
        _require(self.kind in ACTION_KINDS, f"unknown action kind {self.kind!r}")
        _require(self.on_demand is None or self.kind == "load",
                 f"{self.kind} action cannot be on_demand (loads only)")
        if self.kind == "run":
            _require(self.request is not None and self.tokens_from is not None
                     and self.tokens_to is not None,
                     "run action needs request, tokens_from and tokens_to")
        if self.kind in ("kv_save", "kv_restore"):
            _require(self.request is not None and self.bytes is not None,
                     f"{self.kind} action needs request and bytes")

    @property
    def lane(self) -> str:
        return "transfer" if self.kind in TRANSFER_KINDS else "compute"

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {"kind": self.kind, "engine": self.engine, "device": self.device}
        if self.kind == "run":
            d.update(request=self.request, tokens_from=self.tokens_from,
                     tokens_to=self.tokens_to, recompute=self.recompute)
        elif self.kind in ("kv_save", "kv_restore"):
            d.update(request=self.request, bytes=self.bytes)
        elif self.on_demand is not None:
            d.update(on_demand=self.on_demand)
        d.update(start_s=round(self.start_s, 6), end_s=round(self.end_s, 6))
        return d


@dataclass(frozen=True)
class SolverInfo:
    name: str
    status: str
    objective: float | None = None
    bound: float | None = None
    gap: float | None = None
    wall_s: float = 0.0
    time_limit_s: float | None = None
    workers: int | None = None
    notes: str = ""
    #: seconds from the start until a plan better than the best baseline was found
    first_improvement_s: float | None = None


@dataclass(frozen=True)
class Schedule:
    """Engines and actions: what every scheduler (baseline or CP-SAT) produces."""

    engines: tuple[Engine, ...]
    actions: tuple[Action, ...]

    def engine(self, engine_id: str) -> Engine:
        for e in self.engines:
            if e.id == engine_id:
                return e
        raise DomainError(f"unknown engine {engine_id!r}")


@dataclass(frozen=True)
class Plan:
    instance_name: str
    instance_sha256: str
    solver: SolverInfo
    schedule: Schedule
    baselines: dict[str, dict[str, object]] = field(default_factory=dict)
    objective_name: str = "mean_response"
