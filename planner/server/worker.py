"""The worker process: solves one job at a time and reports improving plans.

A worker reads ``(job_id, instance bytes, options)`` from its task queue and puts
messages on the shared result queue:

- ``("plan", job_id, plan)``: an improving plan that passed the checker;
- ``("done", job_id, plan, stopped)``: the final plan (checked); ``stopped`` when the
  search was ended by a cancel (the plan is then the best found so far);
- ``("failed", job_id, message)``: one line saying why.

A cancel sets the worker's event; the search stops and keeps its best plan.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import traceback
from typing import Any

from planner.checker import check_plan


def solve_options(options: dict[str, Any], stop: Any, on_plan: Any) -> Any:
    from planner.service import SolveOptions

    return SolveOptions(options["solver"], options.get("objective"),
                        float(options["time_limit_s"]), int(options["search_workers"]),
                        int(options["seed"]), False, bool(options["preemption"]),
                        on_plan=on_plan, stop=stop)


def run_job(job_id: str, body: bytes, options: dict[str, Any], results: Any, stop: Any) -> None:
    from planner.baselines.sim import BaselineError
    from planner.costmodel.base import CostModelError
    from planner.io import InputError, plan_to_json
    from planner.service import SolveError, prepare_data, solve

    try:
        instance, cost = prepare_data(json.loads(body), body, "instance",
                                      options.get("cost_model", "auto"))

        def on_plan(plan: Any) -> None:
            data = plan_to_json(plan, instance)
            if not check_plan(instance, plan.schedule, data):  # only valid plans are kept
                results.put(("plan", job_id, data))

        plan = solve(instance, cost, solve_options(options, stop, on_plan))
        data = plan_to_json(plan, instance)
        violations = check_plan(instance, plan.schedule, data)
        if violations:
            results.put(("failed", job_id, "the plan failed the checker (a bug): "
                         + "; ".join(str(v) for v in violations[:5])))
            return
        results.put(("done", job_id, data, stop.is_set()))
    except (InputError, SolveError, BaselineError, CostModelError) as exc:
        results.put(("failed", job_id, " / ".join(str(exc).splitlines())))
    except Exception as exc:  # an internal error: one line to the job, the trace to stderr
        traceback.print_exc()
        results.put(("failed", job_id, f"internal error: {type(exc).__name__}: {exc}"))


def _exit_with_parent(parent: int) -> None:
    """A worker whose server died (even by SIGKILL) ends too, within a second."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def worker_main(tasks: Any, results: Any, stop: Any) -> None:
    """Entry point of a worker process; ends on ``None``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    import planner.service
    import planner.solver  # noqa: F401  (imported once, before the first job)

    while True:
        task = tasks.get()
        if task is None:
            return
        job_id, body, options = task
        run_job(job_id, body, options, results, stop)
        results.put(("idle", job_id))
