"""The study's arguments, parsed: the target, GPU ranges, traffic boosts, load scales."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from planner.io import InputError
from planner.reference import gpu_types

# target name -> plan metric key
TARGET_METRICS = {
    "slo_attainment": "slo_attainment",
    "mean_response": "mean_response_s",
    "weighted_mean_response": "weighted_mean_response_s",
    "p95_response": "p95_response_s",
    "makespan": "makespan_s",
}


@dataclass(frozen=True)
class Target:
    metric: str  # a key of TARGET_METRICS
    op: str  # ">=" or "<="
    value: float

    @property
    def key(self) -> str:
        return TARGET_METRICS[self.metric]

    def met(self, metrics: dict[str, Any]) -> bool:
        if metrics.get("n_unserved"):
            return False
        v = metrics.get(self.key)
        if v is None:
            return False
        return bool(v >= self.value) if self.op == ">=" else bool(v <= self.value)

    def better(self, a: float | None, b: float | None) -> bool:
        """Whether metric value ``a`` is better than ``b`` for this target."""
        if a is None:
            return False
        if b is None:
            return True
        return a > b if self.metric == "slo_attainment" else a < b

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_target(text: str) -> Target:
    """``slo_attainment>=0.95``, ``mean_response<=30``, ``p95_response<=120`` ..."""
    m = re.fullmatch(r"\s*([a-z_0-9]+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*", text or "")
    names = ", ".join(TARGET_METRICS)
    if not m:
        raise InputError([f"--target {text!r}: expected METRIC>=X or METRIC<=X "
                          f"(metrics: {names})"])
    metric, op, raw = m.groups()
    if metric.endswith("_s") and metric[:-2] in TARGET_METRICS:
        metric = metric[:-2]
    if metric not in TARGET_METRICS:
        raise InputError([f"--target {text!r}: unknown metric {metric!r} (metrics: {names})"])
    try:
        value = float(raw)
    except ValueError:
        raise InputError([f"--target {text!r}: {raw!r} is not a number"]) from None
    if metric == "slo_attainment":
        if op != ">=" or not 0 <= value <= 1:
            raise InputError([f"--target {text!r}: SLO attainment is a share: "
                              "use slo_attainment>=X with X in [0, 1]"])
    elif op != "<=" or value <= 0:
        raise InputError([f"--target {text!r}: {metric} is a time in seconds: "
                          f"use {metric}<=S with S > 0"])
    return Target(metric, op, value)


def _parse_counts(spec: str, where: str) -> list[int]:
    counts: set[int] = set()
    for part in spec.split("+"):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise InputError([f"{where}: {spec!r} is not a count or a range like 0-4"])
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise InputError([f"{where}: range {part!r} is empty (from > to)"])
        if hi > 64:
            raise InputError([f"{where}: {hi} GPUs of one type is more than the 64 a study "
                              "sweeps"])
        counts.update(range(lo, hi + 1))
    return sorted(counts)


def parse_gpu_ranges(text: str) -> dict[str, list[int]]:
    """``rtx-a6000:0-4,rtx-5000-ada:0-4`` (also ``l4:2``, ``h100-80gb:0+2+4``)."""
    known = gpu_types()
    out: dict[str, list[int]] = {}
    items = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not items:
        raise InputError(["--gpus: give TYPE:FROM-TO per GPU type, e.g. "
                          "'rtx-a6000:0-4,rtx-5000-ada:0-4'"])
    for item in items:
        if ":" not in item:
            raise InputError([f"--gpus {item!r}: expected TYPE:FROM-TO, e.g. rtx-a6000:0-4"])
        gtype, counts = (s.strip() for s in item.split(":", 1))
        if gtype not in known:
            raise InputError([f"--gpus {item!r}: unknown GPU type {gtype!r} "
                              f"(known: {', '.join(known)})"])
        if gtype in out:
            raise InputError([f"--gpus: {gtype} is given twice"])
        out[gtype] = _parse_counts(counts, f"--gpus {item!r}")
    if all(c == [0] for c in out.values()):
        raise InputError(["--gpus: every range is 0: the sweep has no cluster with a GPU"])
    return out


def parse_boosts(items: Iterable[str], model_ids: Iterable[str]) -> dict[str, float]:
    """``MODEL=FACTOR``: 2 doubles a model's requests, 0.5 halves them."""
    ids = list(model_ids)
    out: dict[str, float] = {}
    for item in items:
        if "=" not in item:
            raise InputError([f"--boost {item!r}: expected MODEL=FACTOR, e.g. "
                              f"{ids[0] if ids else 'MODEL'}=2"])
        model, raw = (s.strip() for s in item.split("=", 1))
        if model not in ids:
            raise InputError([f"--boost {item!r}: unknown model {model!r} "
                              f"(models: {', '.join(ids)})"])
        try:
            factor = float(raw)
        except ValueError:
            raise InputError([f"--boost {item!r}: {raw!r} is not a number"]) from None
        if not 0 <= factor <= 100 or math.isnan(factor):
            raise InputError([f"--boost {item!r}: the factor must be in [0, 100]"])
        out[model] = factor
    return out


def parse_scales(text: str) -> list[float]:
    """``1,1.5,2``: each compresses arrival times by that factor (2 = twice the load)."""
    out: list[float] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise InputError([f"--scales: {part!r} is not a number"]) from None
        if not 0 < v <= 100 or math.isnan(v):
            raise InputError([f"--scales: {part!r} must be > 0 (and at most 100)"])
        if v not in out:
            out.append(v)
    if not out:
        raise InputError(["--scales: give at least one load scale, e.g. 1,1.5"])
    return out
