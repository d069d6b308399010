"""Running the sweep: the cache, the process pool or Ray, one row per scenario."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from planner.io import InputError, write_json_atomic
from planner.study.analysis import summarize
from planner.study.report import write_outputs
from planner.study.scenarios import build_scenarios, counts_label, solver_settings
from planner.study.solve import run_scenario
from planner.study.spec import Progress, Scenario, StudyResult, StudySpec

METRIC_COLUMNS = ("mean_response_s", "weighted_mean_response_s", "p95_response_s",
                  "makespan_s", "slo_attainment", "n_loads", "n_kv_saves", "n_recomputes",
                  "n_unserved")


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
