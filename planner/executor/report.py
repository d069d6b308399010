"""The replay report (SPEC section 3): each action's record, the errors of the predictions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from planner.checker import memory_peaks
from planner.domain import Action, Instance, Schedule
from planner.executor.memory import MemorySampler
from planner.metrics import compute_metrics


@dataclass
class ActionRecord:
    index: int
    action: Action
    deps: set[int]
    status: str = "pending"  # pending | running | done | failed | not_run
    #: of ``deps``, those it waits for only because they share its lane: their failure
    #: frees the lane and does not stop this action (another engine's, say)
    lane_deps: set[int] = field(default_factory=set)
    measured_start_s: float | None = None
    measured_end_s: float | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    #: a file to delete once the action's clock has stopped (a restored state's)
    cleanup: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = self.action.to_json()
        d.update(index=self.index, status=self.status,
                 measured_start_s=_r(self.measured_start_s),
                 measured_end_s=_r(self.measured_end_s))
        if self.error:
            d["error"] = self.error
        d.update(self.detail)
        return d


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def relative_errors(pairs: list[tuple[float, float]]) -> dict[str, Any]:
    """Median, 90th percentile and maximum of |measured - predicted| / measured."""
    errs = [abs(m - p) / m for p, m in pairs if m > 0]
    if not errs:
        return {"n": 0, "median": None, "p90": None, "max": None}
    return {"n": len(errs), "median": round(float(np.median(errs)), 4),
            "p90": round(float(np.percentile(errs, 90)), 4), "max": round(float(max(errs)), 4)}


def measured_report(inst: Instance, schedule: Schedule, recs: list[ActionRecord],
                    sampler: MemorySampler | None) -> dict[str, Any]:
    """The report's measurements: each action and request, each device's memory
    peaks, the errors of the predictions, and the plan's metrics, predicted and measured."""
    predicted_completion: dict[str, float] = {}
    measured_completion: dict[str, float] = {}
    request_ok: dict[str, bool] = {}
    for r in recs:
        a = r.action
        if a.kind != "run" or a.request is None:
            continue
        predicted_completion[a.request] = max(predicted_completion.get(a.request, 0.0),
                                              a.end_s)
        request_ok[a.request] = request_ok.get(a.request, True) and r.status == "done"
        if r.measured_end_s is not None and r.status == "done":
            measured_completion[a.request] = max(measured_completion.get(a.request, 0.0),
                                                 r.measured_end_s)
    measured_done = {k: v for k, v in measured_completion.items() if request_ok.get(k)}
    arrival = {q.id: q.arrival_s for q in inst.requests}

    def response(t: float | None, q: str) -> float | None:
        return None if t is None else _r(t - arrival[q])

    requests = [{"id": q.id, "predicted_completion_s": _r(predicted_completion.get(q.id)),
                 "measured_completion_s": _r(measured_done.get(q.id)),
                 "predicted_response_s": response(predicted_completion.get(q.id), q.id),
                 "measured_response_s": response(measured_done.get(q.id), q.id),
                 "status": "done" if request_ok.get(q.id) else "not_done"}
                for q in inst.requests]
    # response time (completion minus arrival) first: it is what users feel
    summary: dict[str, Any] = {"response": relative_errors(
        [(predicted_completion[k] - arrival[k], v - arrival[k])
         for k, v in measured_done.items()])}
    for kind in ("load", "unload", "run", "kv_save", "kv_restore"):
        pairs = [(r.action.end_s - r.action.start_s,
                  (r.measured_end_s or 0) - (r.measured_start_s or 0))
                 for r in recs if r.action.kind == kind and r.status == "done"]
        summary[kind] = relative_errors(pairs)
    summary["completion"] = relative_errors(
        [(predicted_completion[k], v) for k, v in measured_done.items()])
    peaks = memory_peaks(inst, schedule)
    devices = []
    for dev_id, p in sorted(peaks.items()):
        entry: dict[str, Any] = {"id": dev_id, "predicted_peak_gpu_bytes": p.get("gpu_bytes"),
                                 "predicted_peak_host_bytes": p.get("host_bytes")}
        if "host_bytes" in p and sampler is not None:
            entry["measured_peak_host_bytes"] = sampler.peak_host
        if "gpu_bytes" in p and sampler is not None:
            # NVML per process, summed over this machine's GPUs (one GPU replays one device)
            entry["measured_peak_gpu_bytes"] = sampler.peak_gpu
        devices.append(entry)
    hosts = {h.id: h.memory_bytes for h in inst.cluster.hosts}
    for entry in devices:
        if entry["id"] in hosts:
            entry["budget_host_bytes"] = hosts[entry["id"]]
    measured = compute_metrics(inst, schedule.actions, measured_done).to_json() \
        if measured_done else None
    return {
        "actions": [r.to_json() for r in recs],
        "requests": requests,
        "devices": devices,
        "summary": summary,
        "metrics": {"predicted": compute_metrics(inst, schedule.actions).to_json(),
                    "measured": measured},
    }


def engine_options(schedule: Schedule, engines: dict[str, Any]) -> list[dict[str, Any]]:
    """Per engine: the llama.cpp extra-buffer-types setting the plan recorded, the one
    the replay used (this machine's rule or PLANNER_EXTRA_BUFTS) and any crash fallback."""
    out = []
    for e in schedule.engines:
        opts = getattr(engines.get(e.id), "options", None)
        entry: dict[str, Any] = {"id": e.id, "model": e.model, "planned_extra_bufts":
                                 e.extra_bufts}
        if isinstance(opts, dict):
            entry.update(opts)
        out.append(entry)
    return out
