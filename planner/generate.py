"""Workload generator: arrivals per model, request lengths, a seed.

Arrivals: ``poisson`` (constant rate per model) or ``bursty``: time is cut into
periods of ``burst_period_s``; in each period ``hot_models`` models, drawn at
random (in proportion to their rates), get ``burst_boost`` times their rate and
the others ``burst_cold`` times theirs, rescaled so that the period's total rate
is the sum of the models' rates (the load stays, its mix moves: swaps come from
bursts). Lengths: ``lognormal`` (median, ``sigma``) or ``pareto``, a
heavy tail of shape ``tail_alpha`` with the same median. Both clipped to the
maxima.

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

from planner.domain import INSTANCE_FORMAT, Instance
from planner.errors import InputError
from planner.reference import model_names

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
    arrivals: str = "poisson"  # "poisson" | "bursty"
    burst_period_s: float = 60.0
    hot_models: int = 2
    burst_boost: float = 8.0
    burst_cold: float = 0.25
    lengths: str = "lognormal"  # "lognormal" | "pareto"
    tail_alpha: float = 1.5


ARRIVALS = ("poisson", "bursty")
LENGTHS = ("lognormal", "pareto")


def rate_periods(spec: WorkloadSpec, rng: np.random.Generator) -> list[tuple[float, float,
                                                                             dict[str, float]]]:
    """(start, end, rate per model) periods covering ``[0, duration_s)``."""
    active = {m: r for m, r in sorted(spec.rates.items()) if r > 0}
    if spec.arrivals == "poisson" or not active:
        return [(0.0, spec.duration_s, active)]
    models = list(active)
    total = sum(active.values())
    probs = np.array([active[m] for m in models]) / total
    out = []
    t = 0.0
    while t < spec.duration_s:
        end = min(spec.duration_s, t + spec.burst_period_s)
        hot = set(rng.choice(len(models), size=min(spec.hot_models, len(models)),
                             replace=False, p=probs).tolist())
        raw = {m: active[m] * (spec.burst_boost if i in hot else spec.burst_cold)
               for i, m in enumerate(models)}
        scale = total / sum(raw.values())
        out.append((t, end, {m: v * scale for m, v in raw.items()}))
        t = end
    return out


def _length(spec: WorkloadSpec, rng: np.random.Generator, median: int, lo: int,
            hi: int) -> int:
    if spec.lengths == "pareto":
        xm = median / 2 ** (1 / spec.tail_alpha)
        x = xm * (1.0 - rng.random()) ** (-1 / spec.tail_alpha)
    else:
        x = rng.lognormal(np.log(median), spec.sigma)
    return int(np.clip(x, lo, hi))


def generate_requests(spec: WorkloadSpec) -> list[dict[str, Any]]:
    if spec.arrivals not in ARRIVALS or spec.lengths not in LENGTHS:
        raise ValueError(f"arrivals must be one of {ARRIVALS}, lengths one of {LENGTHS}")
    rng = np.random.default_rng(spec.seed)
    reqs: list[dict[str, Any]] = []
    for t0, t1, rates in rate_periods(spec, rng):
        for model, rate in rates.items():
            t = t0 + rng.exponential(1.0 / rate)
            while t < t1:
                prompt = _length(spec, rng, spec.prompt_median, 16, spec.max_prompt)
                out = _length(spec, rng, spec.output_median, 8, spec.max_output)
                interactive = bool(rng.random() < spec.interactive_share)
                reqs.append({"model": model, "arrival_s": round(float(t), 3),
                             "prompt_tokens": prompt, "output_tokens": out,
                             "weight": 2.0 if interactive else 1.0,
                             "slo_s": spec.slo_interactive_s if interactive
                             else spec.slo_batch_s})
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
                      objective: str | None) -> tuple[dict[str, Any], Instance, int]:
    """The instance ``planner instance generate`` writes: a built-in cluster and reference
    models, or those of ``like``; ``spec.rates`` is replaced by the parsed ``rates``. With
    it, the instance as read back, and how many requests were shortened to their model's
    trained context."""
    profiles: list[str] = []
    if like is not None:
        cluster, model_entries, like_objective, profiles = template_from(like, out)
        objective = objective or like_objective
    else:
        cluster = CLUSTERS[cluster_name]
        model_entries = [{"id": m.strip(), "reference": m.strip()}
                         for m in models.split(",") if m.strip()]
        known = model_names()
        unknown = [m["id"] for m in model_entries if m["id"] not in known]
        if unknown or not model_entries:
            lines = [f"--models: unknown model {m!r}" for m in unknown] or \
                ["--models: no model named"]
            lines[-1] += f" (known: {', '.join(sorted(known))})"
            raise InputError(lines)
    rate_map = parse_rates(rates, [m["id"] for m in model_entries])
    expected = sum(rate_map.values()) * spec.duration_s
    if expected > MAX_GENERATED:
        raise InputError([f"--rate, --duration: about {expected:,.0f} requests; at most "
                          f"{MAX_GENERATED:,} are generated (lower the rates or the duration)"])
    spec = replace(spec, rates=rate_map)
    data = build_instance(name or out.stem, cluster, model_entries, spec,
                          objective or "mean_response",
                          f"generated: rates {rate_map}, {spec.arrivals} arrivals, "
                          f"{spec.lengths} lengths, seed {spec.seed}")
    if profiles:
        data["profiles"] = profiles
    from planner.io import parse_instance

    shortened = _fit_contexts(data, out)
    if shortened:
        from planner.metrics import counted

        data["description"] += (f"; {counted(shortened, 'request')} shortened to their "
                                "model's trained context")
    # never write what cannot be read
    instance = parse_instance(data, str(out), out.parent.resolve(), "")
    return data, instance, shortened


def _fit_contexts(data: dict[str, Any], out: Path) -> int:
    """Shorten each request whose prompt and output pass its model's trained context
    (``n_ctx_train``: no engine could serve it, and ``solve`` would refuse the instance):
    the output to what is left after the prompt, the prompt to at most half the context
    where the output would take the rest. Returns how many were shortened."""
    from planner.io import parse_instance

    try:
        bare = parse_instance({**data, "requests": []}, str(out), out.parent.resolve(), "")
    except InputError:
        return 0  # the full parse below names the fault
    limit = {m.id: m.arch.n_ctx_train for m in bare.models}
    n = 0
    for r in data["requests"]:
        cap = limit.get(r["model"])
        if cap is not None and r["prompt_tokens"] + r["output_tokens"] > cap:
            r["prompt_tokens"] = min(r["prompt_tokens"], cap - min(r["output_tokens"], cap // 2))
            r["output_tokens"] = cap - r["prompt_tokens"]
            n += 1
    return n
