"""Workload generator: Poisson arrivals per model, log-normal lengths, a seed.

What is solved is always the explicit request list this writes (SPEC 1).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from planner.domain import INSTANCE_FORMAT
from planner.errors import InputError

CLUSTERS: dict[str, dict[str, Any]] = {
    # The study's testbed: 2x RTX 5000 Ada on one host, 2x RTX A6000 on another.
    "two-servers": {"hosts": [
        {"id": "srv1", "cpu": "threadripper-pro-5995wx", "threads": 128, "memory_gib": 512,
         "gpus": [{"id": "srv1-gpu0", "type": "rtx-5000-ada", "memory_gib": 32},
                  {"id": "srv1-gpu1", "type": "rtx-5000-ada", "memory_gib": 32}]},
        {"id": "srv2", "cpu": "threadripper-pro-5995wx", "threads": 128, "memory_gib": 512,
         "gpus": [{"id": "srv2-gpu0", "type": "rtx-a6000", "memory_gib": 48},
                  {"id": "srv2-gpu1", "type": "rtx-a6000", "memory_gib": 48}]},
    ]},
    "one-gpu": {"hosts": [
        {"id": "box", "cpu": "desktop-dual-channel", "threads": 16, "memory_gib": 64,
         "gpus": [{"id": "box-gpu0", "type": "rtx-4090", "memory_gib": 24}]},
    ]},
}

MAX_GENERATED = 200_000  # requests one `planner instance generate` writes at most

MIXED_MODELS = ["llama3-8b-q4_k_m", "qwen3-32b-q4_k_m", "llama2-70b-q4_k_m",
                "qwen2.5-3b-f16", "qwen3-8b-f16", "qwen2.5-14b-f16"]


@dataclass
class WorkloadSpec:
    """Arrival rates (requests per second per model) and length distributions."""

    rates: dict[str, float]
    duration_s: float = 600.0
    prompt_median: int = 512
    output_median: int = 192
    sigma: float = 0.8  # log-normal spread of both lengths
    max_prompt: int = 3072
    max_output: int = 1024
    interactive_share: float = 0.5  # weight 2 and a tight SLO; the rest weight 1, loose SLO
    slo_interactive_s: float = 60.0
    slo_batch_s: float = 300.0
    seed: int = 0
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> instance entry


def generate_requests(spec: WorkloadSpec) -> list[dict[str, Any]]:
    rng = np.random.default_rng(spec.seed)
    reqs: list[dict[str, Any]] = []
    for model in sorted(spec.rates):
        rate = spec.rates[model]
        if rate <= 0:
            continue
        t = rng.exponential(1.0 / rate)
        while t < spec.duration_s:
            prompt = int(np.clip(rng.lognormal(np.log(spec.prompt_median), spec.sigma), 16,
                                 spec.max_prompt))
            out = int(np.clip(rng.lognormal(np.log(spec.output_median), spec.sigma), 8,
                              spec.max_output))
            interactive = bool(rng.random() < spec.interactive_share)
            reqs.append({"model": model, "arrival_s": round(float(t), 3),
                         "prompt_tokens": prompt, "output_tokens": out,
                         "weight": 2.0 if interactive else 1.0,
                         "slo_s": spec.slo_interactive_s if interactive else spec.slo_batch_s})
            t += rng.exponential(1.0 / rate)
    reqs.sort(key=lambda r: (r["arrival_s"], r["model"]))
    for i, r in enumerate(reqs):
        r["id"] = f"r{i + 1:04d}"
    return [{"id": r.pop("id"), **r} for r in reqs]


def build_instance(name: str, cluster: dict[str, Any], models: list[dict[str, Any]],
                   spec: WorkloadSpec, objective: str = "mean_response",
                   description: str = "") -> dict[str, Any]:
    return {
        "format": INSTANCE_FORMAT,
        "name": name,
        "description": description,
        "cluster": copy.deepcopy(cluster),
        "models": copy.deepcopy(models),
        "requests": generate_requests(spec),
        "objective": objective,
    }


def parse_rates(items: Iterable[str], ids: list[str], default: float = 0.02) -> dict[str, float]:
    """``--rate`` values: one number for every model, or ``MODEL=RATE``; finite and >= 0."""
    rate_map = {m: default for m in ids}
    for item in items:
        key, raw = item.split("=", 1) if "=" in item else (None, item)
        if key is not None and key not in rate_map:
            raise InputError([f"--rate: unknown model {key!r} (models: {', '.join(ids)})"])
        try:
            value = float(raw)
        except ValueError:
            raise InputError([f"--rate {item!r}: {raw!r} is not a number"]) from None
        if not math.isfinite(value) or value < 0:
            raise InputError([f"--rate {item!r}: a rate is a finite number >= 0 (per second)"])
        if key is None:
            rate_map = dict.fromkeys(ids, value)
        else:
            rate_map[key] = value
    return rate_map


def template_from(like: Path, out: Path) -> tuple[dict[str, Any], list[dict[str, Any]], str,
                                                    list[str]]:
    """Cluster, models, objective and profiles of an existing instance, with its relative
    paths re-anchored from ``like``'s folder to ``out``'s."""
    from planner.io import load_instance, read_json

    load_instance(like)  # every fault in the template is reported before it is copied
    base, _ = read_json(like)
    models = copy.deepcopy(base["models"])
    for m in models:
        if "gguf" in m and not m["gguf"].startswith(("/", "~")):
            m["gguf"] = os.path.relpath(like.parent / m["gguf"], out.parent)
    profiles = [p if Path(p).is_absolute() else os.path.relpath(like.parent / p, out.parent)
                for p in base.get("profiles", [])]
    return base["cluster"], models, base.get("objective", "mean_response"), profiles


def generate_instance(out: Path, like: Path | None, cluster_name: str, models: str,
                      rates: Iterable[str], spec: WorkloadSpec, name: str | None,
                      objective: str | None) -> dict[str, Any]:
    """The instance ``planner instance generate`` writes: a built-in cluster and reference
    models, or those of ``like``; ``spec.rates`` is replaced by the parsed ``rates``."""
    profiles: list[str] = []
    if like is not None:
        cluster, model_entries, like_objective, profiles = template_from(like, out)
        objective = objective or like_objective
    else:
        cluster = CLUSTERS[cluster_name]
        model_entries = [{"id": m.strip(), "reference": m.strip()}
                         for m in models.split(",") if m.strip()]
    rate_map = parse_rates(rates, [m["id"] for m in model_entries])
    expected = sum(rate_map.values()) * spec.duration_s
    if expected > MAX_GENERATED:
        raise InputError([f"--rate, --duration: about {expected:,.0f} requests; at most "
                          f"{MAX_GENERATED:,} are generated (lower the rates or the duration)"])
    spec = replace(spec, rates=rate_map)
    data = build_instance(name or out.stem, cluster, model_entries, spec,
                          objective or "mean_response",
                          f"generated: rates {rate_map}, seed {spec.seed}")
    if profiles:
        data["profiles"] = profiles
    from planner.io import parse_instance

    parse_instance(data, str(out), out.parent.resolve(), "")  # never write what cannot be read
    return data
