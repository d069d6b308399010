"""The SPEC metrics (rule 7), computed from a plan's actions alone.

One module for everyone: the baselines, the CP-SAT solver's output, the plan
checker and the execution report (on measured times) all call these functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from planner.domain import Action, Instance

EPS = 1e-6


@dataclass(frozen=True)
class RequestOutcome:
    id: str
    completion_s: float | None
    response_s: float | None
    slo_met: bool | None

    def to_json(self) -> dict[str, Any]:
        r = None if self.response_s is None else round(self.response_s, 6)
        c = None if self.completion_s is None else round(self.completion_s, 6)
        return {"id": self.id, "completion_s": c, "response_s": r, "slo_met": self.slo_met}


# the metrics a person compares plans by, in the order tables show them (solve's summary,
# the plan page)
METRIC_LABELS: tuple[tuple[str, str], ...] = (
    ("weighted_mean_response_s", "weighted mean response (s)"),
    ("mean_response_s", "mean response (s)"), ("p95_response_s", "p95 response (s)"),
    ("makespan_s", "makespan (s)"), ("slo_attainment", "SLO attainment"),
    ("weighted_tardiness_s", "weighted tardiness (s)"), ("n_loads", "loads"),
    ("n_kv_saves", "KV saves"), ("n_recomputes", "recomputes"))


def counted(n: int, noun: str) -> str:
    """``1 kv_save``, ``2 kv_saves``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class Metrics:
    makespan_s: float
    mean_response_s: float
    p95_response_s: float
    weighted_mean_response_s: float
    slo_attainment: float | None
    weighted_tardiness_s: float
    n_loads: int
    n_kv_saves: int
    n_recomputes: int
    n_unserved: int

    def hand_overs(self) -> str:
        """How the plan hands preempted requests over, for a solver's notes."""
        return (f"{counted(self.n_kv_saves, 'kv_save')} and "
                f"{counted(self.n_recomputes, 'recompute')} used")

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            d[k] = round(v, 6) if isinstance(v, float) else v
        return d


def completions(actions: Iterable[Action]) -> dict[str, float]:
    """Completion time of each request: the end of its last run."""
    out: dict[str, float] = {}
    for a in actions:
        if a.kind == "run" and a.request is not None:
            out[a.request] = max(out.get(a.request, a.end_s), a.end_s)
    return out


def request_outcomes(instance: Instance, actions: Iterable[Action],
                     completion_override: dict[str, float] | None = None) -> list[RequestOutcome]:
    comp = completion_override if completion_override is not None else completions(actions)
    out = []
    for r in instance.requests:
        c = comp.get(r.id)
        if c is None:
            out.append(RequestOutcome(r.id, None, None, None))
            continue
        resp = c - r.arrival_s
        met = None if r.slo_s is None else bool(resp <= r.slo_s + EPS)
        out.append(RequestOutcome(r.id, c, resp, met))
    return out


def compute_metrics(instance: Instance, actions: Iterable[Action],
                    completion_override: dict[str, float] | None = None) -> Metrics:
    """SPEC rule 7 metrics; ``completion_override`` serves measured completions."""
    acts = list(actions)
    outcomes = request_outcomes(instance, acts, completion_override)
    reqs = {r.id: r for r in instance.requests}
    served = [o for o in outcomes if o.response_s is not None]
    resp = np.array([o.response_s for o in served], dtype=float)
    weights = np.array([reqs[o.id].weight for o in served], dtype=float)
    with_slo = [o for o in outcomes if reqs[o.id].slo_s is not None]
    slo = (sum(1 for o in with_slo if o.slo_met) / len(with_slo)) if with_slo else None
    tardiness = 0.0
    for o in served:
        s = reqs[o.id].slo_s
        if s is not None and o.response_s is not None:
            tardiness += reqs[o.id].weight * max(0.0, o.response_s - s)
    return Metrics(
        makespan_s=float(max((o.completion_s or 0.0) for o in served)) if served else 0.0,
        mean_response_s=float(resp.mean()) if len(resp) else 0.0,
        p95_response_s=float(np.percentile(resp, 95)) if len(resp) else 0.0,
        weighted_mean_response_s=float((resp * weights).sum() / weights.sum()) if len(resp)
        else 0.0,
        slo_attainment=slo,
        weighted_tardiness_s=tardiness,
        n_loads=sum(1 for a in acts if a.kind == "load"),
        n_kv_saves=sum(1 for a in acts if a.kind == "kv_save"),
        n_recomputes=sum(1 for a in acts if a.kind == "run" and a.recompute),
        n_unserved=len(outcomes) - len(served),
    )


def objective_key(m: Metrics, objective: str) -> tuple[float, ...]:
    """Sort key (smaller is better) for comparing plans under an objective."""
    unserved = float(m.n_unserved)
    if objective == "makespan":
        return (unserved, m.makespan_s, m.weighted_mean_response_s)
    if objective == "slo_attainment":
        missed = 1.0 - (m.slo_attainment if m.slo_attainment is not None else 1.0)
        return (unserved, round(missed, 9), m.weighted_mean_response_s)
    if objective == "tardiness":
        return (unserved, m.weighted_tardiness_s, m.weighted_mean_response_s)
    return (unserved, m.weighted_mean_response_s)


def objective_value(m: Metrics, objective: str) -> float:
    """The headline number of an objective, as reported in a plan's ``solver.objective``."""
    if objective == "makespan":
        return m.makespan_s
    if objective == "slo_attainment":
        return m.slo_attainment if m.slo_attainment is not None else 1.0
    if objective == "tardiness":
        return m.weighted_tardiness_s
    return m.weighted_mean_response_s


def fmt_value(v: Any, unit: str = "") -> str:
    """A metric for a table or a line: '-' for None, 3 decimals below 1000, one above."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}{unit}" if abs(v) < 1000 else f"{v:.1f}{unit}"
    return f"{v}{unit}"


def headroom(plan: dict[str, Any]) -> str | None:
    """What a plan file's bound says about every plan, against its best baseline: the most
    any plan could gain over it (None without a bound or a baseline to compare with)."""
    s = plan["solver"]
    bound = s.get("bound")
    objs = {n: b["objective"] for n, b in plan.get("baselines", {}).items()
            if isinstance(b.get("objective"), int | float)}
    if not isinstance(bound, int | float) or bound <= 0 or not objs:
        return None
    higher = s.get("objective_name") == "slo_attainment"  # the bound is an upper one
    name = (max if higher else min)(objs, key=lambda n: objs[n])
    if objs[name] <= 0:
        return None
    what = "attain more" if higher else "do better"
    return (f"no plan can {what} than {fmt_value(bound)} ({bound / objs[name]:.3f}x the best "
            f"baseline, {name}: {fmt_value(objs[name])})")
