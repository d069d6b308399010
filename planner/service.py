"""Library entry points behind the CLI: solve an instance, check a plan.

Each CLI command parses its arguments, calls one function here, and writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from planner.baselines.policies import BASELINES
from planner.baselines.sim import BaselineError, context_sizes
from planner.checker import Violation, check_plan
from planner.costmodel import CostModel, cost_model_for
from planner.domain import LOCAL_CPU, EngineConfig, Instance, Plan, Schedule, SolverInfo
from planner.io import InputError, load_instance, load_plan, plan_to_json, write_json_atomic
from planner.metrics import Metrics, compute_metrics, objective_value


class SolveError(Exception):
    """The instance cannot be solved; the message says which model, device or request."""


def sizing_faults(instance: Instance, cost: CostModel, where: str) -> list[str]:
    """Models that fit on no device of the cluster at any layer split."""
    faults = []
    n_ctx = context_sizes(instance)
    for m in instance.models:
        fits = False
        for d in instance.cluster.devices:
            host_mem = instance.cluster.host(d.host).memory_bytes
            splits = range(cost.n_layers(m.id) + 1) if d.kind == "gpu" else [0]
            for g in splits:
                cfg = EngineConfig(m.id, d.id, g, n_ctx[m.id])
                if cost.fits(cfg, d.memory_bytes if d.kind == "gpu" else None, host_mem):
                    fits = True
                    break
            if fits:
                break
        if not fits:
            cfg = EngineConfig(m.id, instance.cluster.devices[0].id, 0, n_ctx[m.id])
            faults.append(f"{where}: models[{m.id}]: fits on no device at any layer split "
                          f"(needs {cost.host_bytes(cfg) / 2**30:.1f} GiB of host memory with "
                          f"n_ctx {n_ctx[m.id]} and no GPU layers)")
    return faults


def prepare(instance_path: str | Path, cost_kind: str = "auto") -> tuple[Instance, CostModel]:
    """Load an instance, build its cost model, and reject models that fit nowhere."""
    instance = load_instance(instance_path)
    cost = cost_model_for(instance, cost_kind)
    faults = sizing_faults(instance, cost, str(instance_path))
    if faults:
        raise InputError(faults)
    return instance, cost


@dataclass
class BaselineResult:
    name: str
    schedule: Schedule | None
    metrics: Metrics | None
    error: str | None
    wall_s: float

    def to_json(self, objective: str) -> dict[str, Any]:
        if self.metrics is None:
            return {"error": self.error}
        return {"objective": objective_value(self.metrics, objective),
                "metrics": self.metrics.to_json(), "wall_s": round(self.wall_s, 3)}


def run_baselines(instance: Instance, cost: CostModel) -> dict[str, BaselineResult]:
    out = {}
    for name, fn in BASELINES.items():
        t0 = time.perf_counter()
        try:
            sched = fn(instance, cost)
            out[name] = BaselineResult(name, sched, compute_metrics(instance, sched.actions),
                                       None, time.perf_counter() - t0)
        except BaselineError as exc:
            out[name] = BaselineResult(name, None, None, str(exc), time.perf_counter() - t0)
    return out


@dataclass
class SolveOptions:
    solver: str = "cp-sat"
    objective: str | None = None
    time_limit_s: float = 60.0
    workers: int = 2
    seed: int = 0
    log: bool = False
    preemption: bool = True  # CP-SAT may split long requests (kv_save/restore or recompute)
    cpu_engines: bool = True  # CP-SAT may place engines on host CPUs beside the GPUs


def solve(instance: Instance, cost: CostModel, opts: SolveOptions) -> Plan:
    """Solve with the chosen solver; baselines are always computed for comparison."""
    objective = opts.objective or instance.objective
    baselines = run_baselines(instance, cost)
    if opts.solver in BASELINES:
        res = baselines[opts.solver]
        if res.schedule is None or res.metrics is None:
            raise SolveError(f"{opts.solver}: {res.error or 'found no plan'}")
        info = SolverInfo(opts.solver, "FEASIBLE", objective_value(res.metrics, objective),
                          None, None, res.wall_s)
        schedule = res.schedule
    else:
        from planner.solver import solve_cpsat

        ok = {k: v for k, v in baselines.items() if v.schedule is not None}
        schedule, info = solve_cpsat(instance, cost, objective, opts,
                                     {k: v.schedule for k, v in ok.items()
                                      if v.schedule is not None})
    schedule = with_engine_options(instance, cost, schedule)
    return Plan(instance.name, instance.sha256, info, schedule,
                {k: v.to_json(objective) for k, v in baselines.items()}, objective)


def with_engine_options(instance: Instance, cost: CostModel, schedule: Schedule) -> Schedule:
    """Record each engine's llama.cpp extra-buffer-types setting: the host's, if the
    instance sets one, else what the profile behind (model, device) was measured with,
    else None (decided where it runs: off on CPUs with AMX)."""
    engines = []
    for e in schedule.engines:
        host = instance.cluster.host(instance.cluster.device(e.device).host)
        value = host.extra_bufts if host.extra_bufts is not None else \
            cost.extra_bufts(e.model, e.device)
        engines.append(replace(e, extra_bufts=value))
    return replace(schedule, engines=tuple(engines))


def write_plan(plan: Plan, instance: Instance, out: str | Path) -> dict[str, Any]:
    """Check the plan, then write it atomically; an invalid plan is never written."""
    data = plan_to_json(plan, instance)
    violations = check_plan(instance, plan.schedule, data)
    if violations:
        raise SolveError("the plan failed the checker (a bug; nothing written):\n"
                         + "\n".join(str(v) for v in violations[:20]))
    write_json_atomic(out, data)
    return data


def validate_file(path: str | Path, instance_path: str | Path | None) -> list[Violation]:
    """Check an instance (no violations means valid) or a plan against its instance.

    A plan's instance defaults to ``instances/<its instance name>.json``.
    """
    from planner.io import read_json

    data, _ = read_json(path)
    if isinstance(data, dict) and data.get("format") == "planner.plan/1":
        data, schedule = load_plan(path)
        instance = _plan_instance(data, path, instance_path)
        return check_plan(instance, schedule, data)
    prepare(path)
    return []


# --- replay --------------------------------------------------------------------

MAP_TARGETS = ("host", "local")  # --device-map values meaning "this machine's CPU"


def local_device_map(instance: Instance, schedule: Schedule,
                     device_map: dict[str, str]) -> tuple[dict[str, int], list[str]]:
    """Which plan devices this machine can replay; returns n_gpu_layers overrides and warnings.

    A host is local when its ``cpu`` is ``local`` or this machine's CPU type; a
    GPU is local when this machine has a GPU of its type and llama.cpp can
    offload. ``device_map`` (plan device -> ``host``) replays the rest on this
    machine's CPU, with a warning.
    """
    from profiler.devices import discover_build, discover_gpus, gpu_type_slug, host_type_slug

    here = host_type_slug()
    gpus = {gpu_type_slug(g.name) for g in discover_gpus()}
    offload = discover_build().gpu_offload
    devices = {d.id: d for d in instance.cluster.devices}
    for k, v in device_map.items():
        if k not in devices:
            raise InputError([f"--device-map: the plan has no device {k!r} "
                              f"(devices: {', '.join(devices)})"])
        if v not in MAP_TARGETS:
            raise InputError([f"--device-map {k}={v}: only this machine's host ('host') "
                              "can be mapped to"])
    overrides: dict[str, int] = {}
    warnings: list[str] = []
    refused: list[str] = []
    for e in schedule.engines:
        d = devices[e.device]
        local = (d.kind == "cpu" and d.type in (LOCAL_CPU, here)) or \
            (d.kind == "gpu" and offload and d.type in gpus)
        if local:
            continue
        if e.device in device_map:
            if e.n_gpu_layers:
                overrides[e.id] = 0
            msg = (f"{e.device} ({d.type}) replayed on this machine's CPU ({here}): "
                   "the predictions were made for other hardware")
            if msg not in warnings:
                warnings.append(msg)
        elif e.device not in refused:
            refused.append(e.device)
    if refused:
        raise InputError([f"the plan uses {', '.join(refused)}, which this machine does not "
                          f"have (this host is {here}, GPUs: {', '.join(sorted(gpus)) or 'none'})"
                          f"; replay it anyway with --device-map {refused[0]}=host"])
    return overrides, warnings


def _plan_instance(data: dict[str, Any], plan_path: str | Path,
                   instance_path: str | Path | None) -> Instance:
    """The instance a plan was made for: given, or instances/<name>.json; same sha256."""
    name = data["instance"]["name"]
    ipath = Path(instance_path) if instance_path else Path("instances") / f"{name}.json"
    if not ipath.is_file():
        raise InputError([f"{plan_path}: its instance {ipath} was not found; "
                          "give it with --instance FILE"])
    instance = load_instance(ipath)
    if data["instance"].get("sha256") not in (None, "", instance.sha256):
        raise InputError([f"{plan_path}: made for another version of {ipath} (sha256 differs)"])
    return instance


def plan_and_instance(plan_path: str | Path,
                      instance_path: str | Path | None) -> tuple[Instance, Schedule]:
    """A plan's schedule and its instance, checked against each other (SPEC rules 1-7)."""
    data, schedule = load_plan(plan_path)
    instance = _plan_instance(data, plan_path, instance_path)
    violations = check_plan(instance, schedule, data)
    if violations:
        raise InputError([f"{plan_path}: {v}" for v in violations[:10]])
    return instance, schedule


def prepare_replay(plan_path: str | Path, instance_path: str | Path | None,
                   device_map: dict[str, str]) -> tuple[Instance, Schedule, dict[str, Path],
                                                        dict[str, int], list[str]]:
    """Read and check a plan for replay: instance, models on disk, devices here."""
    instance, schedule = plan_and_instance(plan_path, instance_path)
    ipath = instance_path or f"instances/{instance.name}.json"
    # load_instance has read every model's GGUF metadata: a missing or corrupt
    # file has already been reported, before anything runs
    used = {e.model for e in schedule.engines}
    faults = [f"{ipath}: models[{m.id}]: no GGUF file to run (give \"gguf\")"
              for m in instance.models if m.id in used and m.gguf_path is None]
    if faults:
        raise InputError(faults)
    paths = {m.id: Path(m.gguf_path) for m in instance.models if m.gguf_path}
    overrides, warnings = local_device_map(instance, schedule, device_map)
    return instance, schedule, paths, overrides, warnings
