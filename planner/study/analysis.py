"""Analysis: Pareto fronts, the cheapest cluster meeting the target, the summary."""

from __future__ import annotations

from typing import Any

from planner.study.args import Target
from planner.study.scenarios import _fmt_scale, objective_for, solver_settings
from planner.study.spec import StudySpec

STUDY_FORMAT = "planner.study/1"


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
