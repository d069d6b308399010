"""Reference data shipped with the package: GPUs, host CPUs, model architectures, transfers.

Each figure carries its source in the JSON files under ``planner/data``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from planner.domain import ModelArch
from planner.errors import DomainError


@cache
def _load(name: str) -> dict[str, Any]:
    text = resources.files("planner.data").joinpath(name).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return {k: v for k, v in data.items() if not k.startswith("_")}


def gpu_types() -> dict[str, dict[str, Any]]:
    return _load("gpus.json")


def cpu_types() -> dict[str, dict[str, Any]]:
    return _load("cpus.json")


def model_names() -> list[str]:
    return sorted(_load("models.json"))


def transfers() -> dict[str, Any]:
    return _load("transfers.json")


@dataclass(frozen=True)
class GpuSpec:
    type: str
    memory_bytes: int
    mem_bw: float  # bytes/s
    fp16_flops: float  # FLOP/s
    pcie_h2d: float  # bytes/s achieved for host-to-device copies
    pcie_d2h: float  # bytes/s achieved for device-to-host copies


@dataclass(frozen=True)
class CpuSpec:
    type: str
    mem_bw: float  # bytes/s
    fp32_flops: float  # FLOP/s
    known: bool


def gpu_spec(gpu_type: str, pcie_gen: int | None = None) -> GpuSpec | None:
    """Reference figures of a GPU type; ``pcie_gen`` overrides its PCIe generation (what if)."""
    g = gpu_types().get(gpu_type)
    if g is None:
        return None
    t = transfers()
    gen = g["pcie_gen"] if pcie_gen is None else pcie_gen
    link = t["pcie_gbs_per_lane"][str(gen)] * g["pcie_lanes"] * 1e9
    return GpuSpec(
        type=gpu_type,
        memory_bytes=int(g["memory_gib"] * 1024**3),
        mem_bw=g["mem_bw_gbs"] * 1e9,
        fp16_flops=g["fp16_tflops"] * 1e12,
        pcie_h2d=link * t["kv_copy_efficiency"]["h2d"],
        pcie_d2h=link * t["kv_copy_efficiency"]["d2h"],
    )


def cpu_spec(cpu_type: str) -> CpuSpec:
    table = cpu_types()
    c = table.get(cpu_type)
    known = c is not None
    if c is None:
        c = table["generic-server"]
    return CpuSpec(cpu_type, c["mem_bw_gbs"] * 1e9, c["fp32_gflops"] * 1e9, known)


def _shape_only(d: dict[str, Any]) -> ModelArch:
    """A ModelArch carrying only the shape, to derive parameter counts from it."""
    return ModelArch(name="shape", n_layers=int(d["n_layers"]), hidden_size=int(d["hidden_size"]),
                     n_heads=int(d["n_heads"]), n_kv_heads=int(d["n_kv_heads"]),
                     head_dim=int(d["head_dim"]), ffn_size=int(d["ffn_size"]),
                     vocab_size=int(d["vocab_size"]), layer_bytes=1, other_bytes=0,
                     quantization="", params=0)


def reference_arch(name: str) -> ModelArch:
    """Architecture of a model named in ``planner/data/models.json``."""
    table = _load("models.json")
    if name not in table:
        raise KeyError(name)
    m = table[name]
    layer_params = _shape_only(m).layer_params
    other_params = m["vocab_size"] * m["hidden_size"] * (1 if m["tied_embeddings"] else 2)
    other_params += m["hidden_size"]
    return ModelArch(
        name=m["name"],
        n_layers=m["n_layers"],
        hidden_size=m["hidden_size"],
        n_heads=m["n_heads"],
        n_kv_heads=m["n_kv_heads"],
        head_dim=m["head_dim"],
        ffn_size=m["ffn_size"],
        vocab_size=m["vocab_size"],
        layer_bytes=int(layer_params * m["layer_bpw"] / 8),
        other_bytes=int(other_params * m["other_bpw"] / 8),
        quantization=m["quantization"],
        params=m["n_layers"] * layer_params + other_params,
        source=m["source"],
        n_ctx_train=m.get("n_ctx_train"),
    )


def arch_from_fields(name: str, d: dict[str, Any]) -> ModelArch:
    """Architecture given inline in an instance (``"arch": {...}``)."""
    fields = ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "head_dim", "ffn_size",
              "vocab_size", "layer_bytes", "other_bytes")
    missing = [f for f in fields if f not in d]
    if missing:
        raise KeyError(missing[0])
    for f in (*fields, "params", "n_ctx_train"):
        v = d.get(f)
        if f in d and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**53):
            raise DomainError(f"arch.{f}: must be a whole number in [0, 2**53) "
                              f"(got {json.dumps(v)[:40]})")
    layer_params = _shape_only(d).layer_params
    return ModelArch(
        name=d.get("name", name),
        n_layers=int(d["n_layers"]), hidden_size=int(d["hidden_size"]),
        n_heads=int(d["n_heads"]), n_kv_heads=int(d["n_kv_heads"]),
        head_dim=int(d["head_dim"]), ffn_size=int(d["ffn_size"]),
        vocab_size=int(d["vocab_size"]), layer_bytes=int(d["layer_bytes"]),
        other_bytes=int(d["other_bytes"]), quantization=str(d.get("quantization", "unknown")),
        params=int(d.get("params", d["n_layers"] * layer_params)),
        source="instance file",
        n_ctx_train=d.get("n_ctx_train"),
    )
