"""Solving one scenario, in a worker process or a Ray task."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from planner.io import InputError


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
