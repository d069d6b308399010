"""Scenarios: one instance per cluster of the sweep and load scale, with its cache key."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from planner.io import InputError, read_json
from planner.reference import gpu_types
from planner.study.args import Target, parse_boosts
from planner.study.spec import Scenario, StudySpec


def planner_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("planner")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


def counts_label(counts: dict[str, int]) -> str:
    return " + ".join(f"{n}x {t}" for t, n in counts.items() if n) or "no GPU"


def build_cluster(template: dict[str, Any], counts: dict[str, int], gpus_per_host: int,
                  host_ram_gib: float | None) -> dict[str, Any]:
    """Hosts copied from ``template``, filled with GPUs ``gpus_per_host`` at a time."""
    table = gpu_types()
    gpus = [t for t, n in counts.items() for _ in range(n)]
    n_hosts = max(1, math.ceil(len(gpus) / gpus_per_host))
    hosts = []
    for i in range(n_hosts):
        hid = f"h{i + 1}"
        chunk = gpus[i * gpus_per_host:(i + 1) * gpus_per_host]
        hosts.append({
            "id": hid, "cpu": template["cpu"], "threads": template["threads"],
            "memory_gib": host_ram_gib if host_ram_gib is not None else template["memory_gib"],
            "gpus": [{"id": f"{hid}-gpu{j}", "type": t, "memory_gib": table[t]["memory_gib"]}
                     for j, t in enumerate(chunk)],
        })
    return {"hosts": hosts}


def apply_load(requests: list[dict[str, Any]], boosts: dict[str, float], scale: float,
               seed: int) -> list[dict[str, Any]]:
    """More (or less) of a model's traffic, then arrival times divided by ``scale``.

    A factor F keeps each of the model's requests floor(F) times and once more
    with probability F - floor(F) (seeded); each copy gets a fresh id
    (``<id>~b<k>``) and an arrival jittered forward by up to the model's mean
    gap between arrivals, so copies spread rather than stack.
    """
    rng = np.random.default_rng(seed)
    gaps: dict[str, float] = {}
    for model in boosts:
        times = sorted(float(r["arrival_s"]) for r in requests if r["model"] == model)
        gaps[model] = (times[-1] - times[0]) / len(times) if len(times) > 1 else 1.0
    out: list[dict[str, Any]] = []
    for r in requests:
        f = boosts.get(r["model"])
        copies = 1 if f is None else math.floor(f) + int(rng.random() < f - math.floor(f))
        for k in range(copies):
            c = dict(r)
            if k:
                c["id"] = f"{r['id']}~b{k}"
                c["arrival_s"] = float(r["arrival_s"]) + float(rng.uniform(0, gaps[r["model"]]))
            out.append(c)
    for c in out:
        c["arrival_s"] = round(float(c["arrival_s"]) / scale, 6)
    out.sort(key=lambda c: c["arrival_s"])
    return out


def _absolute_paths(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Model and profile paths made absolute, so a scenario file works from any folder."""
    data = copy.deepcopy(data)
    for m in data.get("models", []):
        if isinstance(m, dict) and isinstance(m.get("gguf"), str):
            p = Path(m["gguf"]).expanduser()
            m["gguf"] = str(p if p.is_absolute() else (base_dir / p).resolve())
    if isinstance(data.get("profiles"), list):
        data["profiles"] = [str(Path(p) if Path(p).is_absolute() else (base_dir / p).resolve())
                            for p in data["profiles"]]
    return data


def _fmt_scale(s: float) -> str:
    return f"{s:g}"


def scenario_id(counts: dict[str, int], scale: float, many_scales: bool) -> str:
    sid = "_".join(f"{n}-{t}" for t, n in counts.items() if n)
    return f"{sid}_load{_fmt_scale(scale)}" if many_scales else sid


def objective_for(target: Target, instance_objective: str) -> str:
    """What each scenario is solved for: the target's own measure where the solver has it.

    An SLO target is solved for SLO attainment and a makespan target for
    makespan; response-time targets keep the instance's objective (mean response
    unless it says otherwise).
    """
    if target.metric == "slo_attainment":
        return "slo_attainment"
    if target.metric == "makespan":
        return "makespan"
    return instance_objective


def solver_settings(spec: StudySpec) -> dict[str, Any]:
    return {"solver": spec.solver, "time_limit_s": float(spec.time_limit_s), "workers": 1,
            "seed": 0, "cost_model": spec.cost_model,
            "pcie_gen": None if spec.pcie_gen is None else int(spec.pcie_gen)}


def cache_key(data: dict[str, Any], settings: dict[str, Any]) -> str:
    blob = json.dumps({"instance": data, "settings": settings, "planner": planner_version()},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def build_scenarios(spec: StudySpec) -> list[Scenario]:
    """Every cluster of the sweep (the all-zero one left out), at every load scale."""
    base, _ = read_json(spec.instance)
    if not isinstance(base, dict) or not isinstance(base.get("cluster"), dict) \
            or not base["cluster"].get("hosts"):
        raise InputError([f"{spec.instance}: cluster.hosts: a study needs the instance's "
                          "first host as the template of its hosts"])
    # validate the instance as given, once, with the usual messages
    from planner.io import load_instance

    inst = load_instance(spec.instance)
    if spec.target.metric == "slo_attainment" and not any(r.slo_s is not None
                                                           for r in inst.requests):
        raise InputError([f"{spec.instance}: no request has an slo_s, so "
                          f"--target {spec.target} cannot be measured"])
    parse_boosts([f"{m}={f}" for m, f in spec.boosts.items()], [m.id for m in inst.models])
    base = _absolute_paths(base, spec.instance.resolve().parent)
    base["objective"] = spec.objective or objective_for(spec.target, inst.objective)
    template = base["cluster"]["hosts"][0]
    settings = solver_settings(spec)
    types = list(spec.gpus)
    out: list[Scenario] = []
    many = len(spec.scales) > 1
    for scale in spec.scales:
        requests = apply_load(base["requests"], spec.boosts, scale, spec.seed)
        for combo in itertools.product(*(spec.gpus[t] for t in types)):
            counts = {t: n for t, n in zip(types, combo, strict=True) if n}
            if not counts:
                continue
            cluster = build_cluster(template, counts, spec.gpus_per_host, spec.host_ram_gib)
            sid = scenario_id(counts, scale, many)
            knobs = [f"{counts_label(counts)}, {spec.gpus_per_host} GPUs per host",
                     f"solved for {base['objective']}"]
            if scale != 1:
                knobs.append(f"load x{_fmt_scale(scale)}")
            knobs += [f"{m} traffic x{f:g}" for m, f in spec.boosts.items()]
            if spec.host_ram_gib is not None:
                knobs.append(f"host RAM {spec.host_ram_gib:g} GiB")
            if spec.pcie_gen is not None:
                knobs.append(f"PCIe Gen{spec.pcie_gen} (cost model only)")
            data = dict(base)
            data["name"] = f"{base.get('name', spec.instance.stem)}-{sid}"
            data["description"] = (f"planner study scenario of {spec.instance.name}: "
                                   + "; ".join(knobs))
            data["cluster"] = cluster
            data["requests"] = requests
            out.append(Scenario(sid, counts, scale, len(cluster["hosts"]), data,
                                cache_key(data, settings)))
    return out
