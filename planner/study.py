"""Capacity studies: solve one workload on every cluster of a sweep and price each.

``planner study`` builds, from an instance and a range of GPU counts per GPU
type, one scenario per cluster (and per load scale), solves every scenario
independently (a process pool here, or Ray tasks on a cluster), and reports
the cheapest cluster that meets a target and the Pareto front of cost against
mean response and SLO attainment.

Each finished scenario is cached under a hash of what determines its result
(the instance after the what-if knobs, the cluster, the cost model and the
solver settings, the planner's version), so an interrupted or extended study
only solves what is new. Prices and the target are applied afterwards: a
change of either re-uses every solve.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from planner.io import InputError, read_json, write_atomic, write_json_atomic
from planner.reference import gpu_types

STUDY_FORMAT = "planner.study/1"

# target name -> plan metric key
TARGET_METRICS = {
    "slo_attainment": "slo_attainment",
    "mean_response": "mean_response_s",
    "weighted_mean_response": "weighted_mean_response_s",
    "p95_response": "p95_response_s",
    "makespan": "makespan_s",
}
METRIC_COLUMNS = ("mean_response_s", "weighted_mean_response_s", "p95_response_s",
                  "makespan_s", "slo_attainment", "n_loads", "n_kv_saves", "n_recomputes",
                  "n_unserved")


def planner_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("planner")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


# --- parsing the command's arguments ------------------------------------------------


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


# --- prices ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Prices:
    gpus: dict[str, float]  # GPU type -> price per GPU-hour
    host: float  # price per host-hour, beyond its GPUs
    currency: str
    where: str

    def cluster_cost(self, counts: dict[str, int], n_hosts: int) -> float:
        return round(sum(self.gpus[t] * n for t, n in counts.items())
                     + self.host * n_hosts, 6)


def _price(v: Any, where: str) -> float:
    p = v.get("per_hour") if isinstance(v, dict) else v
    if isinstance(p, bool) or not isinstance(p, (int, float)) or p < 0:
        raise InputError([f"{where}: expected a price per hour >= 0 (a number, or an "
                          "object with \"per_hour\")"])
    return float(p)


def load_prices(path: str | Path | None) -> Prices:
    """A price table: ``{"gpus": {TYPE: PRICE | {"per_hour": PRICE, ...}}, "host": ...}``.

    Without a path, the example table shipped in ``planner/data/prices.json``.
    """
    if path is None:
        text = resources.files("planner.data").joinpath("prices.json").read_text("utf-8")
        data, where = json.loads(text), "planner/data/prices.json"
    else:
        data, _ = read_json(path)
        where = str(path)
    if not isinstance(data, dict) or not isinstance(data.get("gpus"), dict):
        raise InputError([f"{where}: gpus: missing required field (an object: GPU type -> "
                          "price per hour)"])
    if "host" not in data:
        raise InputError([f"{where}: host: missing required field (price per host-hour; "
                          "0 when GPU prices include their host)"])
    gpus = {str(k): _price(v, f"{where}: gpus.{k}") for k, v in data["gpus"].items()
            if not str(k).startswith("_")}
    return Prices(gpus, _price(data["host"], f"{where}: host"),
                  str(data.get("currency", "USD")), where)


# --- scenarios ------------------------------------------------------------------------


@dataclass
class StudySpec:
    instance: Path
    gpus: dict[str, list[int]]
    target: Target
    prices: Prices
    scales: list[float] = field(default_factory=lambda: [1.0])
    time_limit_s: float = 20.0
    solver: str = "cp-sat"
    cost_model: str = "auto"
    gpus_per_host: int = 2
    host_ram_gib: float | None = None
    pcie_gen: int | None = None
    boosts: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    objective: str | None = None  # None: the target's (see objective_for)
    jobs: int = 2
    ray_address: str | None = None
    out: Path = Path("studies")
    cache: Path | None = Path(".cache/study")


@dataclass
class Scenario:
    id: str
    counts: dict[str, int]  # GPU type -> count (zeros left out)
    scale: float
    n_hosts: int
    data: dict[str, Any]  # the instance, as written to <out>/scenarios/<id>.json
    key: str  # cache key


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


# --- solving one scenario (in a worker process or a Ray task) --------------------------


def instance_bytes(data: dict[str, Any]) -> bytes:
    """The bytes ``write_json_atomic`` writes for ``data`` (so the plan's sha256 matches)."""
    return (json.dumps(data, indent=1) + "\n").encode()


def _cost_model(instance: Any, kind: str, pcie_gen: int | None) -> Any:
    from planner.costmodel import cost_model_for

    return cost_model_for(instance, kind, pcie_gen)


def run_scenario(task: dict[str, Any]) -> dict[str, Any]:
    """Solve one scenario. Returns ``{"result": {...}, "plan": plan JSON or None}``.

    Top-level and free of shared state, so a process pool or Ray can run it.
    Expected failures (a model that fits nowhere, no plan found) are results
    with ``status`` ``infeasible``; anything else is ``error`` and not cached.
    """
    from planner.baselines.sim import BaselineError
    from planner.checker import check_plan
    from planner.costmodel.base import CostModelError
    from planner.io import parse_instance, plan_to_json
    from planner.service import SolveError, SolveOptions, sizing_faults, solve

    data, settings = task["data"], task["settings"]
    raw = instance_bytes(data)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"status": "solved", "solver_status": None, "reason": None,
                              "wall_s": None, "metrics": None, "cache": True}
    plan_json = None
    try:
        where = f"scenario {task['id']}"
        inst = parse_instance(data, where, Path("."), hashlib.sha256(raw).hexdigest())
        cost = _cost_model(inst, settings["cost_model"], settings["pcie_gen"])
        faults = sizing_faults(inst, cost, where)
        if faults:
            result.update(status="infeasible",
                          reason="; ".join(f.split(": ", 1)[1] for f in faults))
        else:
            opts = SolveOptions(settings["solver"], inst.objective, settings["time_limit_s"],
                                settings["workers"], settings["seed"], False)
            plan = solve(inst, cost, opts)
            plan_json = plan_to_json(plan, inst)
            violations = check_plan(inst, plan.schedule, plan_json)
            if violations:
                result.update(status="error", cache=False,
                              reason=f"plan failed the checker: {violations[0]}")
                plan_json = None
            else:
                result.update(solver_status=plan.solver.status, metrics=plan_json["metrics"])
    except (InputError, SolveError, BaselineError, CostModelError) as exc:
        result.update(status="infeasible", reason=" ".join(str(exc).split()))
    except Exception as exc:  # a bug must not end a long sweep; reported, not cached
        result.update(status="error", cache=False, reason=f"{type(exc).__name__}: {exc}")
    result["wall_s"] = round(time.perf_counter() - t0, 3)
    return {"result": result, "plan": plan_json}


# --- running the sweep ----------------------------------------------------------------


@dataclass
class StudyResult:
    spec: StudySpec
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    reused: int
    solved: int
    wall_s: float
    written: list[Path]


Progress = Callable[[int, int, str], None]


def _cache_path(cache: Path, key: str) -> Path:
    return cache / key[:2] / f"{key}.json"


def _read_cache(cache: Path | None, key: str) -> dict[str, Any] | None:
    if cache is None:
        return None
    p = _cache_path(cache, key)
    try:
        entry: dict[str, Any] = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if entry.get("key") != key or "result" not in entry:
        return None
    return entry


def _run_pool(tasks: list[dict[str, Any]], jobs: int,
              done: Callable[[dict[str, Any], dict[str, Any]], None]) -> None:
    if jobs <= 1 or len(tasks) <= 1:
        for t in tasks:
            done(t, run_scenario(t))
        return
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks))) as pool:
        futures: dict[Future[dict[str, Any]], dict[str, Any]] = {
            pool.submit(run_scenario, t): t for t in tasks}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    done(futures[f], f.result())
        except BaseException:
            for f in pending:
                f.cancel()
            raise


def _run_ray(tasks: list[dict[str, Any]], address: str, jobs: int,
             done: Callable[[dict[str, Any], dict[str, Any]], None]) -> None:
    try:
        import ray
    except ImportError:
        raise InputError(["--ray: Ray is not installed here (pip install ray)"]) from None
    started = False
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=1)(run_scenario)
        refs = {remote.remote(t): t for t in tasks}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for r in ready:
                done(refs[r], ray.get(r))
    finally:
        if started:
            ray.shutdown()


def run_study(spec: StudySpec, progress: Progress | None = None) -> StudyResult:
    """Solve every scenario (re-using cached ones), then write the outputs under ``spec.out``.

    Outputs: ``results.csv`` (one row per scenario), ``summary.json`` (the
    cheapest cluster meeting the target per load scale, the Pareto fronts),
    ``pareto.png``, and ``scenarios/<id>.json`` (+ ``<id>.plan.json``) so that
    any scenario can be solved again on its own with ``planner solve``.
    """
    t_start = time.perf_counter()
    missing = [t for t in spec.gpus if t not in spec.prices.gpus]
    if missing:
        raise InputError([f"{spec.prices.where}: gpus: no price for {', '.join(missing)} "
                          f"(priced: {', '.join(spec.prices.gpus)})"])
    scenarios = build_scenarios(spec)
    settings = solver_settings(spec)
    outcomes: dict[str, dict[str, Any]] = {}
    reused = 0
    todo: list[dict[str, Any]] = []
    for sc in scenarios:
        entry = _read_cache(spec.cache, sc.key)
        if entry is not None:
            outcomes[sc.id] = {"result": entry["result"], "plan": entry.get("plan"),
                               "cached": True}
            reused += 1
        else:
            todo.append({"id": sc.id, "data": sc.data, "settings": settings, "key": sc.key})
    total = len(scenarios)
    n_done = reused
    if progress:
        progress(n_done, total, f"{reused} reused from the cache" if reused else "")

    def done(task: dict[str, Any], out: dict[str, Any]) -> None:
        nonlocal n_done
        res = out["result"]
        if spec.cache is not None and res.get("cache", True):
            write_json_atomic(_cache_path(spec.cache, task["key"]),
                              {"key": task["key"], "scenario": task["id"],
                               "result": res, "plan": out["plan"]})
        outcomes[task["id"]] = {**out, "cached": False}
        n_done += 1
        if progress:
            progress(n_done, total, task["id"])

    if todo:
        if spec.ray_address:
            _run_ray(todo, spec.ray_address, spec.jobs, done)
        else:
            _run_pool(todo, spec.jobs, done)

    rows = [make_row(sc, outcomes[sc.id], spec) for sc in scenarios]
    rows.sort(key=lambda r: (r["scale"], r["cost_per_hour"], r["scenario"]))
    wall = time.perf_counter() - t_start
    summary = summarize(rows, spec, reused, len(todo), wall)
    written = write_outputs(spec, scenarios, outcomes, rows, summary)
    return StudyResult(spec, rows, summary, reused, len(todo), wall, written)


def make_row(sc: Scenario, outcome: dict[str, Any], spec: StudySpec) -> dict[str, Any]:
    res = outcome["result"]
    metrics = res.get("metrics") or {}
    row: dict[str, Any] = {"scenario": sc.id, "scale": sc.scale,
                           "gpus": counts_label(sc.counts)}
    for t in spec.gpus:
        row[f"n_{t}"] = sc.counts.get(t, 0)
    row.update({
        "hosts": sc.n_hosts,
        "cost_per_hour": spec.prices.cluster_cost(sc.counts, sc.n_hosts),
        "status": res["status"],
        "solver_status": res.get("solver_status"),
        "target_met": res["status"] == "solved" and spec.target.met(metrics),
    })
    for k in METRIC_COLUMNS:
        row[k] = metrics.get(k)
    row.update({"wall_s": res.get("wall_s"), "cached": bool(outcome.get("cached")),
                "reason": res.get("reason")})
    return row


# --- analysis -------------------------------------------------------------------------


def pareto_front(rows: list[dict[str, Any]], metric: str,
                 maximize: bool = False) -> list[dict[str, Any]]:
    """Rows no other row beats on both cost (lower) and ``metric`` (lower, or higher).

    Ties: among rows of equal cost only the best metric stays; a row of higher
    cost stays only if its metric is strictly better than every cheaper row's.
    """
    pts = [r for r in rows if r.get(metric) is not None and r.get("status") == "solved"]
    sign = -1.0 if maximize else 1.0
    pts.sort(key=lambda r: (r["cost_per_hour"], sign * r[metric], r["scenario"]))
    front: list[dict[str, Any]] = []
    best: float | None = None
    for r in pts:
        v = sign * r[metric]
        if best is None or v < best:
            front.append(r)
            best = v
    return front


def cheapest_meeting(rows: list[dict[str, Any]], target: Target) -> dict[str, Any] | None:
    ok = [r for r in rows if r["target_met"]]
    if not ok:
        return None
    sign = -1.0 if target.metric == "slo_attainment" else 1.0
    return min(ok, key=lambda r: (r["cost_per_hour"], sign * r[target.key],
                                  r["mean_response_s"], r["scenario"]))


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    keys = ("scenario", "gpus", "hosts", "cost_per_hour", "solver_status", "target_met",
            "mean_response_s", "weighted_mean_response_s", "p95_response_s", "makespan_s",
            "slo_attainment")
    return {k: r[k] for k in keys}


def rows_objective(spec: StudySpec) -> str:
    if spec.objective:
        return spec.objective
    from planner.io import load_instance

    return objective_for(spec.target, load_instance(spec.instance).objective)


def summarize(rows: list[dict[str, Any]], spec: StudySpec, reused: int, solved: int,
              wall_s: float) -> dict[str, Any]:
    by_scale = []
    for scale in spec.scales:
        rs = [r for r in rows if r["scale"] == scale]
        best = cheapest_meeting(rs, spec.target)
        n_ok = sum(r["status"] == "solved" for r in rs)
        if best is not None:
            statement = (f"load x{_fmt_scale(scale)}: the cheapest cluster meeting "
                         f"{spec.target} is {best['gpus']} on {best['hosts']} host(s) at "
                         f"{best['cost_per_hour']:.2f} {spec.prices.currency}/h "
                         f"({spec.target.metric} = {best[spec.target.key]:.3f})")
        else:
            bests = [r for r in rs if r["status"] == "solved"
                     and r.get(spec.target.key) is not None]
            closest = ""
            if bests:
                b = bests[0]
                for r in bests[1:]:
                    if spec.target.better(r[spec.target.key], b[spec.target.key]):
                        b = r
                closest = (f"; the best reached {spec.target.metric} = "
                           f"{b[spec.target.key]:.3f} ({b['gpus']})")
            statement = (f"load x{_fmt_scale(scale)}: no cluster of the sweep meets "
                         f"{spec.target} ({n_ok} of {len(rs)} solved{closest})")
        by_scale.append({
            "scale": scale,
            "cheapest_meeting_target": _brief(best) if best else None,
            "statement": statement,
            "pareto_mean_response": [_brief(r) for r in pareto_front(rs, "mean_response_s")],
            "pareto_slo_attainment": [_brief(r) for r in
                                      pareto_front(rs, "slo_attainment", maximize=True)],
        })
    # a cluster that meets the target at every scale
    all_scales = None
    by_cluster: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_cluster.setdefault(r["gpus"], []).append(r)
    ok = [rs for rs in by_cluster.values()
          if len(rs) == len(spec.scales) and all(r["target_met"] for r in rs)]
    if ok:
        rs = min(ok, key=lambda rs: (rs[0]["cost_per_hour"], rs[0]["gpus"]))
        all_scales = {"gpus": rs[0]["gpus"], "hosts": rs[0]["hosts"],
                      "cost_per_hour": rs[0]["cost_per_hour"],
                      "scenarios": [r["scenario"] for r in rs]}
    return {
        "format": STUDY_FORMAT,
        "instance": str(spec.instance),
        "target": str(spec.target),
        "prices": spec.prices.where,
        "currency": spec.prices.currency,
        "settings": {**solver_settings(spec), "gpus": spec.gpus,
                     "gpus_per_host": spec.gpus_per_host, "host_ram_gib": spec.host_ram_gib,
                     "boosts": spec.boosts, "scales": spec.scales, "seed": spec.seed,
                     "objective": rows_objective(spec),
                     "backend": f"ray ({spec.ray_address})" if spec.ray_address
                     else f"process pool ({spec.jobs})"},
        "n_scenarios": len(rows),
        "n_solved": sum(r["status"] == "solved" for r in rows),
        "n_infeasible": sum(r["status"] == "infeasible" for r in rows),
        "n_errors": sum(r["status"] == "error" for r in rows),
        "reused_from_cache": reused,
        "solved_now": solved,
        "wall_s": round(wall_s, 1),
        "by_scale": by_scale,
        "cheapest_meeting_target_at_all_scales": all_scales,
    }


# --- outputs --------------------------------------------------------------------------


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    import pandas as pd

    return write_atomic(path, lambda p: pd.DataFrame(rows).to_csv(p, index=False))


def plot_pareto(rows: list[dict[str, Any]], spec: StudySpec, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = [("mean_response_s", "mean response (s)", False),
              ("slo_attainment", "SLO attainment", True)]
    for ax, (metric, label, maximize) in zip(axes, panels, strict=True):
        for i, scale in enumerate(spec.scales):
            c = colors[i % len(colors)]
            rs = [r for r in rows if r["scale"] == scale and r.get(metric) is not None
                  and r["status"] == "solved"]
            if not rs:
                continue
            tag = f"load x{_fmt_scale(scale)}"
            ax.scatter([r["cost_per_hour"] for r in rs], [r[metric] for r in rs], s=18,
                       color=c, alpha=0.35, label=f"{tag}: all clusters")
            front = pareto_front(rs, metric, maximize)
            ax.step([r["cost_per_hour"] for r in front], [r[metric] for r in front],
                    where="post", color=c, lw=1.5)
            ax.scatter([r["cost_per_hour"] for r in front], [r[metric] for r in front], s=46,
                       color=c, edgecolor="black", zorder=3, label=f"{tag}: Pareto front")
            best = cheapest_meeting(rs, spec.target)
            if best is not None:
                ax.scatter([best["cost_per_hour"]], [best[metric]], marker="*", s=260,
                           color="gold", edgecolor="black", zorder=4,
                           label=f"{tag}: cheapest meeting target")
                ax.annotate(best["gpus"], (best["cost_per_hour"], best[metric]),
                            textcoords="offset points", xytext=(6, 6), fontsize=8)
        if spec.target.key == metric:
            ax.axhline(spec.target.value, color="gray", ls="--", lw=1,
                       label=f"target {spec.target}")
        vals = [r[metric] for r in rows if r.get(metric) and r["status"] == "solved"]
        if not maximize and vals and max(vals) > 20 * min(vals):
            ax.set_yscale("log")
        ax.set_xlabel(f"cluster cost ({spec.prices.currency}/h)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{spec.instance.name}: cost against service ({spec.solver}, "
                 f"{spec.time_limit_s:g} s per solve)")
    fig.tight_layout()

    def save(p: Path) -> None:
        fig.savefig(p, dpi=110, format="png")

    try:
        return write_atomic(path, save)
    finally:
        plt.close(fig)


def write_outputs(spec: StudySpec, scenarios: list[Scenario],
                  outcomes: dict[str, dict[str, Any]], rows: list[dict[str, Any]],
                  summary: dict[str, Any]) -> list[Path]:
    out = spec.out
    written: list[Path] = []
    for sc in scenarios:
        write_json_atomic(out / "scenarios" / f"{sc.id}.json", sc.data)
        plan = outcomes[sc.id].get("plan")
        if plan is not None:
            write_json_atomic(out / "scenarios" / f"{sc.id}.plan.json", plan)
    written.append(out / "scenarios")
    written.append(write_csv(rows, out / "results.csv"))
    written.append(plot_pareto(rows, spec, out / "pareto.png"))
    written.append(write_json_atomic(out / "summary.json", summary))
    return written


def study_table(result: StudyResult) -> Any:
    """A rich table of the scenarios, cheapest first, the targets met in green.

    Solver statuses and every metric are in results.csv; the table keeps to 80 columns.
    """
    from rich import box
    from rich.table import Table

    spec = result.spec
    table = Table(title=f"{spec.instance.name}: {len(result.rows)} scenarios, "
                        f"target {spec.target}", box=box.SIMPLE_HEAD, pad_edge=False)
    cols = ["cluster", "hosts", f"{spec.prices.currency}/h", "mean (s)", "p95 (s)", "SLO",
            "met"]
    if len(spec.scales) > 1:
        cols.insert(0, "load")
    for c in cols:
        table.add_column(c, justify="left" if c == "cluster" else "right", no_wrap=True)

    def f(v: Any, nd: int = 1) -> str:
        return "-" if v is None else f"{v:.{nd}f}"

    for r in result.rows:
        if r["status"] != "solved":
            met = f"[yellow]{r['status']}[/]"
        else:
            met = "[green]yes[/]" if r["target_met"] else "[red]no[/]"
        cells = [r["gpus"].replace("x ", "x").replace(" + ", "+"), str(r["hosts"]),
                 f"{r['cost_per_hour']:.2f}",
                 f(r["mean_response_s"]), f(r["p95_response_s"]), f(r["slo_attainment"], 3),
                 met]
        if len(spec.scales) > 1:
            cells.insert(0, f"x{_fmt_scale(r['scale'])}")
        table.add_row(*cells)
    return table
