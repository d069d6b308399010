"""Analytic (roofline) cost model over the reference data.

Decode is memory-bound: each token reads the weights of every layer once, the
layers kept on the GPU at GPU bandwidth and the rest at host bandwidth, plus
the KV cache read so far, plus a fixed per-token overhead. Time therefore grows
linearly with the layers left on the host, and throughput (its inverse) falls
steepest near full residency. Prefill is compute-bound (2 FLOP per parameter
per token, plus attention). Loads are bounded by the file read and PCIe; KV
copies by PCIe (published GPU<->host rates). Every constant comes from
``planner/data`` with its source.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.costmodel.base import GPU_RUNTIME_BYTES, CostModel, CostModelError
from planner.domain import EngineConfig, Instance, ModelArch
from planner.reference import CpuSpec, GpuSpec, cpu_spec, gpu_spec, transfers

# Fixed memory beyond weights and KV cache, llama.cpp's typical figures.
HOST_RUNTIME_BYTES = 150 * 1024**2  # process, host compute buffer
DECODE_OVERHEAD_S = {"gpu": 0.004, "cpu": 0.002}  # kernel launches, sampling
SPLIT_OVERHEAD_S = 0.001  # activations crossing PCIe when layers are split
GPU_HOP_S = 1e-4  # per token and GPU boundary of a split engine: a peer copy's latency
HOST_COPY_BW = 10e9  # memcpy in host RAM, for states of host-resident layers
UNLOAD_S = 0.15


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cpu" or "gpu"
    gpu: GpuSpec | None
    host: CpuSpec
    memory_bytes: int


def split_layers(n_layers: int, split: tuple[tuple[str, float], ...]) -> list[int]:
    """Layers per GPU of a split: fractions rounded, the remainder on the last GPU."""
    out: list[int] = []
    left = n_layers
    for i, (_d, f) in enumerate(split):
        n = left if i == len(split) - 1 else min(left, round(n_layers * f))
        out.append(n)
        left -= n
    return out


class AnalyticCostModel(CostModel):
    """Roofline predictions from data-sheet figures; a stopgap until profiles exist."""

    name = "analytic"

    def __init__(self, models: dict[str, ModelArch], devices: dict[str, DeviceInfo],
                 missing: dict[str, str] | None = None) -> None:
        self.models = models
        self.devices = devices
        # devices without reference data (a GPU type gpus.json lacks): asking about
        # them raises this message, so that profiles may cover them instead
        self.missing = dict(missing or {})
        t = transfers()
        self._eff = t["efficiency"]
        self._reload = t["reload"]
        # per configuration (the model's inputs never change after construction): the
        # start plan and the bound ask for the same few hundred configurations hundreds
        # of thousands of times on 1,000 requests
        self._shares: dict[EngineConfig, tuple[tuple[str, int], ...]] = {}
        self._terms: dict[EngineConfig, tuple[float, float]] = {}

    @classmethod
    def for_instance(cls, instance: Instance, pcie_gen: int | None = None,
                     strict: bool = True) -> AnalyticCostModel:
        """The model for an instance's cluster; ``pcie_gen`` puts every GPU on that generation.

        A GPU type without reference data fails at once when ``strict``; otherwise only
        when a prediction for that GPU is asked for (a fallback behind profiles that
        cover it)."""
        devices: dict[str, DeviceInfo] = {}
        missing: dict[str, str] = {}
        for h in instance.cluster.hosts:
            cpu = cpu_spec(h.cpu)
            devices[h.id] = DeviceInfo("cpu", None, cpu, h.memory_bytes)
            for g in h.gpus:
                spec = gpu_spec(g.type, pcie_gen)
                if spec is None:
                    missing[g.id] = (f"GPU type {g.type!r} of {g.id} has no reference data; "
                                     f"profile it or use one of the known types")
                    if strict:
                        raise CostModelError(missing[g.id])
                devices[g.id] = DeviceInfo("gpu", spec, cpu, g.memory_bytes)
        return cls({m.id: m.arch for m in instance.models}, devices, missing)

    # --- lookups --------------------------------------------------------------
    def _arch(self, model: str) -> ModelArch:
        try:
            return self.models[model]
        except KeyError:
            raise CostModelError(f"unknown model {model!r}") from None

    def _dev(self, device: str) -> DeviceInfo:
        if device in self.missing:
            raise CostModelError(self.missing[device])
        try:
            return self.devices[device]
        except KeyError:
            raise CostModelError(f"unknown device {device!r}") from None

    def _split(self, cfg: EngineConfig) -> tuple[ModelArch, DeviceInfo, int]:
        arch, dev = self._arch(cfg.model), self._dev(cfg.device)
        g = min(cfg.n_gpu_layers, arch.n_layers) if dev.kind == "gpu" else 0
        return arch, dev, g

    def _gpu_parts(self, cfg: EngineConfig) -> list[tuple[DeviceInfo, int]]:
        """(GPU, layers on it) for each GPU the engine spans (llama.cpp's layer split:
        layers in order, the last GPU also holds the output layer)."""
        _arch, dev, g = self._split(cfg)
        if dev.kind != "gpu":
            return []
        if not cfg.split:
            return [(dev, g)]
        return [(self._dev(d), n) for (d, _f), n in zip(cfg.split, split_layers(g, cfg.split),
                                                          strict=True)]

    def _hop_s(self, cfg: EngineConfig, tokens: int) -> float:
        """Activations crossing GPU boundaries of a split engine for ``tokens`` tokens."""
        if len(cfg.split) < 2:
            return 0.0
        arch, dev, _g = self._split(cfg)
        pcie = dev.gpu.pcie_h2d if dev.gpu else 10e9
        return (len(cfg.split) - 1) * (GPU_HOP_S + tokens * arch.hidden_size * 4 / pcie)

    def n_layers(self, model: str) -> int:
        return self._arch(model).n_layers

    def max_gpu_layers(self, model: str) -> int:
        return self._arch(model).n_layers + 1

    def _head_on_gpu(self, cfg: EngineConfig) -> bool:
        """llama.cpp offloads the output layer (half of ``other_bytes``; the token
        embeddings stay on the host) only with ``n_gpu_layers`` above the block count:
        ``-ngl <n_layers>`` leaves it on the host (measured 2x slower per token)."""
        return (self._dev(cfg.device).kind == "gpu"
                and cfg.n_gpu_layers > self._arch(cfg.model).n_layers)

    # --- memory ---------------------------------------------------------------
    def gpu_bytes(self, cfg: EngineConfig) -> int:
        return sum(self.gpu_shares(cfg).values())

    def gpu_shares(self, cfg: EngineConfig) -> dict[str, int]:
        got = self._shares.get(cfg)
        if got is None:
            got = self._shares[cfg] = tuple(self._gpu_shares(cfg).items())
        return dict(got)

    def _gpu_shares(self, cfg: EngineConfig) -> dict[str, int]:
        arch, dev, g = self._split(cfg)
        if dev.kind != "gpu":
            return {}
        out: dict[str, int] = {}
        parts = cfg.split or ((cfg.device, 1.0),)
        for i, ((d, _f), n) in enumerate(zip(parts, split_layers(g, parts), strict=True)):
            head = arch.other_bytes // 2 if self._head_on_gpu(cfg) and i == len(parts) - 1 \
                else 0
            kv = arch.kv_bytes_per_token * cfg.kv_cells * n // arch.n_layers
            out[d] = n * arch.layer_bytes + head + kv + GPU_RUNTIME_BYTES
        return out

    def host_bytes(self, cfg: EngineConfig) -> int:
        arch, _dev, g = self._split(cfg)
        host_layers = arch.n_layers - g
        other = arch.other_bytes - (arch.other_bytes // 2 if self._head_on_gpu(cfg) else 0)
        kv = arch.kv_bytes_per_token * cfg.kv_cells * host_layers // arch.n_layers
        return host_layers * arch.layer_bytes + other + kv + HOST_RUNTIME_BYTES

    def kv_bytes(self, cfg: EngineConfig, context_tokens: int) -> int:
        arch = self._arch(cfg.model)
        return arch.kv_bytes_per_token * max(0, context_tokens) + 64 * 1024

    # --- time -----------------------------------------------------------------
    def _bandwidths(self, dev: DeviceInfo) -> tuple[float, float]:
        host_bw = dev.host.mem_bw * self._eff["host_mem_bw"]
        gpu_bw = dev.gpu.mem_bw * self._eff["gpu_mem_bw"] if dev.gpu else host_bw
        return gpu_bw, host_bw

    def _decode_terms(self, cfg: EngineConfig) -> tuple[float, float]:
        """(seconds per token at empty context, extra seconds per token of context)."""
        got = self._terms.get(cfg)
        if got is None:
            got = self._terms[cfg] = self._decode_terms_of(cfg)
        return got

    def _decode_terms_of(self, cfg: EngineConfig) -> tuple[float, float]:
        arch, dev, g = self._split(cfg)
        gpu_bw, host_bw = self._bandwidths(dev)
        host_layers = arch.n_layers - g
        base = DECODE_OVERHEAD_S[dev.kind]
        if 0 < g < arch.n_layers:
            base += SPLIT_OVERHEAD_S
        head_on_gpu = self._head_on_gpu(cfg)
        head_bytes = arch.other_bytes / 2
        kv_tok = arch.kv_bytes_per_token / arch.n_layers
        slope = host_layers * kv_tok / host_bw
        base += host_layers * arch.layer_bytes / host_bw
        last_bw = gpu_bw
        for part, n in self._gpu_parts(cfg):  # layer split: the GPUs take turns per token
            bw = self._bandwidths(part)[0]
            base += n * arch.layer_bytes / bw
            slope += n * kv_tok / bw
            last_bw = bw
        base += head_bytes / (last_bw if head_on_gpu else host_bw)
        base += self._hop_s(cfg, 1)
        return base, slope

    def decode_s_per_token(self, cfg: EngineConfig, context_tokens: int) -> float:
        base, slope = self._decode_terms(cfg)
        return base + slope * max(0, context_tokens)

    def decode_s(self, cfg: EngineConfig, context_from: int, n_tokens: int) -> float:
        if n_tokens <= 0:
            return 0.0
        base, slope = self._decode_terms(cfg)
        # sum_{i=0}^{n-1} (base + slope * (c + i))
        return n_tokens * base + slope * (n_tokens * context_from + n_tokens * (n_tokens - 1) / 2)

    def prefill_s(self, cfg: EngineConfig, prompt_tokens: int) -> float:
        arch, dev, g = self._split(cfg)
        n = max(1, prompt_tokens)
        per_layer_flops = 2 * arch.layer_params
        attn_flops = 4 * arch.n_heads * arch.head_dim * n * n / 2  # QK^T and AV, causal
        layer_flops = per_layer_flops * n + attn_flops
        head_flops = 2 * arch.vocab_size * arch.hidden_size  # logits of the last token only
        cpu_rate = dev.host.fp32_flops * self._eff["cpu_flops"]
        t = 0.01 + head_flops / cpu_rate
        host_layers = arch.n_layers - g
        if dev.gpu is not None:
            gpu_rate = dev.gpu.fp16_flops * self._eff["gpu_flops"]
            for part, n_layers in self._gpu_parts(cfg):
                assert part.gpu is not None
                t += n_layers * layer_flops / (part.gpu.fp16_flops * self._eff["gpu_flops"])
            t += self._hop_s(cfg, n)
            # llama.cpp computes host layers of a large batch on the GPU after
            # copying their weights over PCIe, whichever is faster.
            on_cpu = layer_flops / cpu_rate
            via_gpu = arch.layer_bytes / dev.gpu.pcie_h2d + layer_flops / gpu_rate
            t += host_layers * min(on_cpu, via_gpu)
        else:
            t += arch.n_layers * layer_flops / cpu_rate
        return t

    def load_s(self, cfg: EngineConfig) -> float:
        _arch, dev, _g = self._split(cfg)
        total = self.gpu_bytes(cfg) + self.host_bytes(cfg)
        t = self._reload["overhead_s"] + total / (self._reload["read_gbs"] * 1e9)
        if dev.gpu is not None:
            # the upload overlaps the read; it only adds when PCIe is the slower one
            upload = self.gpu_bytes(cfg) / dev.gpu.pcie_h2d
            t += max(0.0, upload - self.gpu_bytes(cfg) / (self._reload["read_gbs"] * 1e9))
        return t

    def unload_s(self, cfg: EngineConfig) -> float:
        return UNLOAD_S

    def _kv_copy_s(self, cfg: EngineConfig, context_tokens: int, gpu_rate: float | None) -> float:
        arch, _dev, g = self._split(cfg)
        nbytes = self.kv_bytes(cfg, context_tokens)
        gpu_share = g / arch.n_layers
        t = 0.005 + nbytes * (1 - gpu_share) / HOST_COPY_BW
        if gpu_rate is not None:
            t += nbytes * gpu_share / gpu_rate
        return t

    def kv_save_s(self, cfg: EngineConfig, context_tokens: int) -> float:
        dev = self._dev(cfg.device)
        return self._kv_copy_s(cfg, context_tokens, dev.gpu.pcie_d2h if dev.gpu else None)

    def kv_restore_s(self, cfg: EngineConfig, context_tokens: int) -> float:
        dev = self._dev(cfg.device)
        return self._kv_copy_s(cfg, context_tokens, dev.gpu.pcie_h2d if dev.gpu else None)
