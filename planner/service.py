"""Library entry points behind the CLI: read and size an instance, run the baselines,
solve (CP-SAT or a baseline), and put plans on the executor's footing.

Each CLI command parses its arguments, calls one function here (or in
``planner.plan_files``: writing, finding and validating plan files, replay), and writes.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from planner.baselines.policies import BASELINES
from planner.baselines.sim import context_sizes
from planner.costmodel import CostModel, cost_model_for
from planner.domain import (
    Device,
    EngineConfig,
    Instance,
    Plan,
    Schedule,
    SolverInfo,
)
from planner.errors import BaselineError, InputError, SolveError
from planner.io import load_instance
from planner.metrics import Metrics, compute_metrics, objective_value
from planner.retime import retime


def sizing_faults(instance: Instance, cost: CostModel, where: str) -> list[str]:
    """Models that fit on no device of the cluster at any layer split."""
    faults = []
    n_ctx = context_sizes(instance)
    for m in instance.models:
        fits = False
        for d in instance.cluster.devices:
            host_mem = instance.cluster.host(d.host).memory_bytes
            splits = range(cost.max_gpu_layers(m.id) + 1) if d.kind == "gpu" else [0]
            for g in splits:
                cfg = EngineConfig(m.id, d.id, g, n_ctx[m.id])
                if cost.fits(cfg, d.memory_bytes if d.kind == "gpu" else None, host_mem):
                    fits = True
                    break
            if fits:
                break
        if not fits:  # all layers split over the GPUs of one host
            from planner.solver.data import split_config

            fits = any(split_config(instance, cost, m.id, h.id, n_ctx[m.id]) is not None
                       for h in instance.cluster.hosts)
        if not fits:
            faults.append(f"{where}: models[{m.id}]: fits on no device at any layer split "
                          f"({_least_host_need(instance, cost, m.id, n_ctx[m.id])})")
    return faults


def _least_host_need(instance: Instance, cost: CostModel, model: str, n_ctx: int) -> str:
    """Why a model fits nowhere, in the terms of the device that comes closest: the host
    memory it needs beside the most layers a GPU holds, or with no GPU layers."""
    cfg = EngineConfig(model, instance.cluster.devices[0].id, 0, n_ctx)
    best: tuple[int, Device | None, int] = (cost.host_bytes(cfg), None, 0)
    for d in instance.cluster.devices:
        if d.kind != "gpu":
            continue
        for g in range(cost.max_gpu_layers(model), 0, -1):
            c = EngineConfig(model, d.id, g, n_ctx)
            if cost.gpu_bytes(c) <= d.memory_bytes:
                if cost.host_bytes(c) < best[0]:
                    best = (cost.host_bytes(c), d, g)
                break
    need, dev, layers = best
    if dev is None:
        return (f"needs {need / 2**30:.1f} GiB of host memory with n_ctx {n_ctx} and no GPU "
                "layers")
    host = instance.cluster.host(dev.host)
    return (f"needs {need / 2**30:.1f} GiB of host memory at best, with {layers} layers on "
            f"{dev.id} and n_ctx {n_ctx}; host {host.id} has "
            f"{host.memory_bytes / 2**30:.0f} GiB")


def prepare(instance_path: str | Path, cost_kind: str = "auto") -> tuple[Instance, CostModel]:
    """Load an instance, build its cost model, and reject models that fit nowhere."""
    instance = load_instance(instance_path)
    cost = cost_model_for(instance, cost_kind)
    faults = sizing_faults(instance, cost, str(instance_path))
    if faults:
        raise InputError(faults)
    return instance, cost


def parse_data(data: Any, raw: bytes, where: str) -> Instance:
    """An instance given as parsed JSON (its bytes hashed for the plan); relative paths in
    it are relative to the current folder. InputError on faults."""
    import hashlib

    from planner.io import INSTANCE_FORMAT, parse_instance

    if not isinstance(data, dict):
        raise InputError([f"{where}: (top level): wrong type, expected object"])
    if data.get("format") not in (None, INSTANCE_FORMAT):
        raise InputError([f"{where}: format: expected {INSTANCE_FORMAT!r}, "
                          f"got {data.get('format')!r}"])
    return parse_instance(data, where, Path.cwd(), hashlib.sha256(raw).hexdigest())


def prepare_data(data: Any, raw: bytes, where: str,
                 cost_kind: str = "auto") -> tuple[Instance, CostModel]:
    """``prepare`` for an instance given as parsed JSON (:func:`parse_data`)."""
    instance = parse_data(data, raw, where)
    cost = cost_model_for(instance, cost_kind)
    faults = sizing_faults(instance, cost, where)
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


def run_baselines(instance: Instance, cost: CostModel, slots: int = 1
                  ) -> dict[str, BaselineResult]:
    """Every baseline; ``slots``: their engines' parallel slots (Ollama's
    OLLAMA_NUM_PARALLEL, llama-swap's concurrencyLimit)."""
    out = {}
    for name, fn in BASELINES.items():
        t0 = time.perf_counter()
        try:
            sched = fn(instance, cost, slots=slots) if slots > 1 else fn(instance, cost)
            if slots > 1:  # at the concurrency the baseline gives its runs
                from planner.slots import retime_slot_runs

                sched = retime_slot_runs(instance, cost, sched)
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
    #: n_parallel values CP-SAT may give an engine (parallel slots, continuous batching)
    slots: tuple[int, ...] = (1,)
    #: called with each improving plan while solving (the best baseline first); the plans
    #: are not yet checked. Observing never changes the result.
    on_plan: Callable[[Plan], None] | None = field(default=None, compare=False, repr=False)
    #: once set, the search ends and keeps its best plan so far
    stop: threading.Event | None = field(default=None, compare=False, repr=False)
    cpu_engines: bool = True  # CP-SAT may place engines on host CPUs beside the GPUs
    #: keep 30 % of the time limit for local moves on the plan (solver/polish/)
    polish: bool = True


def solve(instance: Instance, cost: CostModel, opts: SolveOptions,
          progress: Callable[[str], None] | None = None) -> Plan:
    """Solve with the chosen solver; baselines are always computed for comparison.

    ``progress`` hears what starts (``'cp-sat'`` when the search begins). A stop
    request (:mod:`planner.interrupt`) ends CP-SAT's search early with its best plan.
    """
    objective = opts.objective or instance.objective
    baselines = run_baselines(instance, cost, max(opts.slots))
    if not instance.requests:  # nothing to serve: the empty plan, optimal by definition
        empty = Schedule((), ())
        value = objective_value(compute_metrics(instance, ()), objective)
        info = SolverInfo(opts.solver, "OPTIMAL", value, value, 0.0, 0.0,
                          notes="no requests: the empty plan (no engines, no actions)")
        return Plan(instance.name, instance.sha256, info, empty,
                    {k: v.to_json(objective) for k, v in baselines.items()}, objective)
    if opts.solver in BASELINES:
        res = baselines[opts.solver]
        if res.schedule is None or res.metrics is None:
            raise SolveError(f"{opts.solver}: {res.error or 'found no plan'}")
        info = SolverInfo(opts.solver, "FEASIBLE", objective_value(res.metrics, objective),
                          None, None, res.wall_s)
        schedule = res.schedule
    else:
        from planner.solver import solve_cpsat

        if progress is not None:
            progress("cp-sat")
        # the time limit covers the baselines too (seconds on 1,000 requests), so that a
        # solve ends near the limit a person gave it
        spent = sum(b.wall_s for b in baselines.values())
        opts = dataclasses.replace(opts, time_limit_s=max(0.2, opts.time_limit_s - spent))
        ok = {k: v for k, v in baselines.items() if v.schedule is not None}
        hints = {k: v.schedule for k, v in ok.items() if v.schedule is not None}
        run_opts: Any = opts
        batch_note = ""  # how the batched one-slot plan, a start plan, was made
        one: Schedule | None = None  # the one-slot CP-SAT plan, batching tried on it
        if max(opts.slots) > 1:
            # the slot plans' bound (an LP, seconds) inside the time limit, as the one-slot
            # search does with its own; the batching pass below reads it from the cache
            from planner.solver.bound import slot_plan_bound
            from planner.solver.bound_lp import TIME_LIMIT_S as LP_TIME_S

            t0 = time.perf_counter()
            slot_plan_bound(instance, cost, objective, max(opts.slots),
                            lp_time_s=min(LP_TIME_S, opts.time_limit_s / 6))
            left = max(0.2, opts.time_limit_s - (time.perf_counter() - t0))
            opts = dataclasses.replace(opts, time_limit_s=left)
            # slots widen the search: first the one-slot model for half the time, whose
            # plan then seeds (and bounds) the search with slots
            half = dataclasses.replace(opts, time_limit_s=opts.time_limit_s / 2, slots=(1,),
                                       on_plan=None)
            one_base = {k: v.schedule for k, v in run_baselines(instance, cost).items()
                        if v.schedule is not None}
            one, one_info = solve_cpsat(instance, cost, objective, half, one_base)
            hints[ONE_SLOT] = one
            # and batched: a start plan with slots, which the slot search, with its
            # pairwise compute lanes, may not reach in its time
            batched, b_info = _batched(instance, cost, one, replace(one_info, notes=""),
                                       objective, opts.slots)
            if batched is not one:
                hints[BATCHED] = batched
                batch_note = b_info.notes
            run_opts = dataclasses.replace(opts, time_limit_s=opts.time_limit_s / 2)
        observe = _Observe(run_opts, instance, cost, objective, baselines) \
            if opts.on_plan else None
        schedule, info = solve_cpsat(instance, cost, objective, observe or run_opts, hints,
                                     cp_sat_starts=frozenset({ONE_SLOT, BATCHED}))
        if batch_note and BATCHED in info.status:  # that start plan kept: how it was made
            info = replace(info, notes=f"{info.notes}{batch_note}")
        if max(opts.slots) > 1:
            if schedule is not one and not any(e.n_parallel > 1 for e in schedule.engines):
                # (the one-slot plan returned as it was: batching it gained nothing above)
                schedule, info = _batched(instance, cost, schedule, info, objective,
                                          opts.slots)
            # the bound holds for every plan the user allowed, with or without slots (the
            # search's own may be for one-slot engines: it left them out, or a start plan
            # with slots was better than its plan)
            info = _slot_bound(instance, cost, objective, max(opts.slots), info)
    if any(e.n_parallel > 1 for e in schedule.engines):
        from dataclasses import replace as _replace

        from planner.slots import retime_slot_runs

        # runs on slot engines at the concurrency the plan gives them (ends move earlier)
        schedule = retime_slot_runs(instance, cost, schedule)
        info = _replace(info, objective=objective_value(
            compute_metrics(instance, schedule.actions), objective))
    schedule = with_engine_options(instance, cost, schedule)
    schedule, info = as_executed(instance, cost, schedule, info, objective)
    timed_base = baselines_as_executed(instance, cost, baselines)  # on the same footing
    if opts.solver not in BASELINES:
        schedule, info = _never_worse(instance, cost, schedule, info, objective, baselines,
                                      timed_base)
        info = swap_caveat(schedule, info)
        info = _proven(info, objective)
    return Plan(instance.name, instance.sha256, info, schedule,
                {k: v.to_json(objective) for k, v in baselines.items()}, objective)


class _Observe:
    """The solver's view of SolveOptions with a progress observer that turns each improving
    schedule into a Plan; the best baseline is passed on first, as the incumbent."""

    def __init__(self, opts: SolveOptions, instance: Instance, cost: CostModel, objective: str,
                 baselines: dict[str, BaselineResult]) -> None:
        self.time_limit_s, self.workers, self.seed = opts.time_limit_s, opts.workers, opts.seed
        self.log, self.preemption, self.stop = opts.log, opts.preemption, opts.stop
        self.cpu_engines = opts.cpu_engines
        self.slots = opts.slots
        self._on_plan = opts.on_plan
        self._instance, self._cost, self._objective = instance, cost, objective
        self._baselines = {k: v.to_json(objective) for k, v in baselines.items()}
        done = [b for b in baselines.values() if b.schedule is not None and b.metrics]
        if done and self._on_plan is not None:
            from planner.metrics import objective_key

            best = min(done, key=lambda b: objective_key(b.metrics, objective))  # type: ignore[arg-type]
            assert best.schedule is not None and best.metrics is not None
            obj = objective_value(best.metrics, objective)
            self.progress(best.schedule, SolverInfo(
                "cp-sat", "RUNNING", obj, None, None, sum(b.wall_s for b in baselines.values()),
                opts.time_limit_s, opts.workers,
                notes=f"the best baseline ({best.name}) while CP-SAT searches"))

    def progress(self, schedule: Schedule, info: SolverInfo) -> None:
        if self._on_plan is not None:
            schedule = with_engine_options(self._instance, self._cost, schedule)
            # the times the final plan will carry (as the executor dispatches), so a
            # streamed plan and the final one are compared on the same footing
            schedule, info = as_executed(self._instance, self._cost, schedule, info,
                                         self._objective)
            self._on_plan(Plan(self._instance.name, self._instance.sha256, info, schedule,
                               self._baselines, self._objective))


def mark_interrupted(plan: Plan, reason: str) -> Plan:
    """The plan a stopped search returned, with the stop in its notes (its status is
    the solver's: FEASIBLE, or the baseline it kept)."""
    note = f"interrupted ({reason}) after {plan.solver.wall_s:.1f} s: the best plan found by then"
    notes = f"{note}; {plan.solver.notes}" if plan.solver.notes else note
    return replace(plan, solver=replace(plan.solver, notes=notes))


#: the one-slot CP-SAT plan, a start plan of a slot search; and that plan re-dispatched on
#: slot engines. Both are CP-SAT's plans (`solve_cpsat(..., cp_sat_starts=...)`)
ONE_SLOT = "cp-sat (one slot)"
BATCHED = "cp-sat (one slot, batched)"


def _batched(instance: Instance, cost: CostModel, schedule: Schedule, info: SolverInfo,
             objective: str, slots: tuple[int, ...]) -> tuple[Schedule, SolverInfo]:
    """The plan with its GPU engines' runs re-dispatched on slot engines (continuous
    batching, planner/solver/batching.py), where that is better at some slot count."""
    from planner.solver.batching import batch_slots

    got = batch_slots(instance, cost, schedule, slots, objective)
    if got is None:
        return schedule, info
    best, n = got
    before = objective_value(compute_metrics(instance, schedule.actions), objective)
    after = objective_value(compute_metrics(instance, best.actions), objective)
    return best, replace(
        info, objective=after,
        notes=(f"{info.notes}; slots: the plan's GPU runs re-dispatched on {n}-slot engines "
               f"with continuous batching (batching.py), objective {before:.3f} -> "
               f"{after:.3f}"))


def _proven(info: SolverInfo, objective: str) -> SolverInfo:
    """``info`` with status OPTIMAL where the plan written, as the executor dispatches it,
    reaches the bound reported beside it (a slot plan at the slot bound, a baseline kept
    at the bound, a start plan written when CP-SAT found none): no plan can do better,
    whatever the search itself could prove."""
    from planner.solver.bound import meets_bound

    word = next((w for w in ("FEASIBLE", "UNKNOWN") if info.status.startswith(w)), None)
    if word is None or info.objective is None or info.bound is None \
            or not meets_bound(info.objective, info.bound, objective):
        return info
    return replace(info, status="OPTIMAL" + info.status.removeprefix(word),
                   notes=f"{info.notes}; the plan written reaches the bound: no plan can do "
                         "better")


def _slot_bound(instance: Instance, cost: CostModel, objective: str, slots: int,
                info: SolverInfo) -> SolverInfo:
    """``info`` with the bound (and gap) for every plan whose engines have up to ``slots``
    slots, named in its notes: the one-slot bounds assume one request at a time per
    device, so a plan where the user allowed slots is judged by this one."""
    from planner.solver.bound import gap_of, slot_plan_bound

    bound, name = slot_plan_bound(instance, cost, objective, slots)
    gap = gap_of(info.objective, bound, objective) if info.objective is not None else None
    return replace(info, bound=bound, gap=gap,
                   notes=f"{info.notes}; bound for plans with up to {slots} slots per "
                         f"engine: {name}")


def _never_worse(instance: Instance, cost: CostModel, schedule: Schedule, info: SolverInfo,
                 objective: str, baselines: dict[str, BaselineResult],
                 timed: dict[str, Schedule]) -> tuple[Schedule, SolverInfo]:
    """The best baseline's plan in place of CP-SAT's when it is better as the executor
    dispatches both. The search compares them on the solver's grid; re-timing (first and
    busy loads, slot steps) can turn the order round, and a user should never be handed
    a plan that the table beside it shows to be worse than Ollama's or llama-swap's.
    The bound stays ``info``'s: for the plans the user allowed (with up to as many slots per
    engine as the baselines were given, where that is more than one: ``_slot_bound``)."""
    from planner.metrics import objective_key
    from planner.solver.bound import gap_of

    own = compute_metrics(instance, schedule.actions)
    done = [b for b in baselines.values() if b.metrics is not None and b.name in timed]
    if not done:
        return schedule, info
    best = min(done, key=lambda b: objective_key(b.metrics, objective))  # type: ignore[arg-type]
    assert best.metrics is not None
    if not objective_key(best.metrics, objective) < objective_key(own, objective):
        return schedule, info
    chosen = with_engine_options(instance, cost, timed[best.name])
    obj = objective_value(best.metrics, objective)
    mine = objective_value(own, objective)
    return chosen, replace(
        info, status=f"FEASIBLE (baseline {best.name} kept)", objective=obj,
        gap=gap_of(obj, info.bound, objective) if info.bound is not None else None,
        notes=(f"{info.notes}; the {best.name} plan kept: as `planner execute` dispatches "
               f"them it is better ({obj:.3f}) than CP-SAT's ({mine:.3f})"))


#: gaps from this up, on a plan that swaps, get a word on what the bound leaves out
CAVEAT_GAP = 0.3


def swap_caveat(schedule: Schedule, info: SolverInfo) -> SolverInfo:
    """``info`` with a note where its gap may be mostly swaps: the bounds (all but the
    swap-aware one on one GPU) charge each model's first load on a device only, so on a
    plan that loads models again the gap includes whatever those swaps cost (2,919 requests
    on four GPUs: 923 loads, gap 0.93; docs/solver.md, "Missing")."""
    from planner.solver.bound import SWAP_BOUND_NAME

    if info.gap is None or info.gap < CAVEAT_GAP or SWAP_BOUND_NAME in info.notes:
        return info
    loads = sum(1 for a in schedule.actions if a.kind == "load")
    again = loads - len({(e.model, e.devices) for e in schedule.engines})
    if again <= 0:
        return info
    return replace(info, notes=f"{info.notes}; the bound charges only each model's first load "
                               f"on a device, not the plan's {again} loads after those (swaps): "
                               "on a workload that must swap, the gap includes what swapping "
                               "costs any plan")


def baselines_as_executed(instance: Instance, cost: CostModel,
                          baselines: dict[str, BaselineResult]) -> dict[str, Schedule]:
    """Each baseline's plan re-timed as the executor dispatches it (planner.retime), its
    metrics set from those times (in place); the re-timed plans by name."""
    timed: dict[str, Schedule] = {}
    for res in baselines.values():
        if res.schedule is not None:
            timed[res.name] = retime(instance, cost, res.schedule)
            res.metrics = compute_metrics(instance, timed[res.name].actions)
    return timed


def as_executed(instance: Instance, cost: CostModel, schedule: Schedule, info: SolverInfo,
                objective: str) -> tuple[Schedule, SolverInfo]:
    """Times re-predicted as the executor dispatches the plan (planner.retime), and the
    gap from the objective at those times (slot runs re-timed before this move it too)."""
    timed = retime(instance, cost, schedule)
    if timed is not schedule:
        value = objective_value(compute_metrics(instance, timed.actions), objective)
        note = (f"times as `planner execute` dispatches them (first and busy loads): "
                f"objective {info.objective:.3f} on the solver's grid"
                if info.objective is not None else "")
        info = replace(info, objective=value,
                       notes="; ".join(n for n in (info.notes, note) if n))
    if info.objective is not None and info.bound is not None:
        from planner.solver.bound import gap_of

        info = replace(info, gap=gap_of(info.objective, info.bound, objective))
    return timed, info


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
