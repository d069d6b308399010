"""A counting lower bound for weighted mean response, tried against the LP bound (issue 11).

For any plan and any time t, the requests done by t form a set that *could* be done
by t: on each device the work released after any time rho fits between rho and t,
a request runs on one device at a time and only after its arrival and its model's
first load there. So the weight done by t is at most MDW(t), the most weight such a
set can have (a small MIP: one binary per request, its work shares per device), and

    sum_j w_j C_j = integral of (W - weight done by t) dt >= integral of (W - MDW(t)) dt.

MDW is non-decreasing, so evaluating it at the right end of each grid step keeps
the sum a bound; the MIP's dual bound (not its incumbent) is used. One GPU alone,
this is at least layered SRPT (it is exact for unit weights on one machine). The
results (docs/solver.md, "Tried (2026-12-03)"): it does not beat the LP bound once the
host CPU is a device, because each t may pick its own set, and the CPU finishes the
requests with the most slack at every t.

    .venv/bin/python benchmarks/counting_bound.py 1gpu-4models --seed 1
    .venv/bin/python benchmarks/counting_bound.py 1gpu-5models-pareto --seed 2 --gpu-only

``--gpu-only`` drops the host CPU (not a valid bound then: the CPU is a device).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from planner.costmodel import cost_model_for
from planner.domain import Instance, Request
from planner.io import load_instance, parse_instance
from planner.solver.bound import lower_bound, request_bounds

ROOT = Path(__file__).resolve().parent.parent


def most_weight_done(t: float, reqs: list[Request], pd: dict[str, dict[str, float]],
                     load: dict[tuple[str, str], float], ready: dict[str, float]) -> float:
    """MDW(t): an upper bound on the weight of requests any plan completes by ``t``."""
    cand = [r for r in reqs if ready[r.id] <= t + 1e-9]
    if not cand:
        return 0.0
    col: dict[tuple[int, str], int] = {}
    n = len(cand)
    for i, r in enumerate(cand):
        for d, v in pd[r.id].items():
            if v < math.inf and max(r.arrival_s, load[(r.model, d)]) < t:
                col[(i, d)] = n
                n += 1
    rows: list[tuple[dict[int, float], float, float]] = []
    for i, r in enumerate(cand):
        share = {i: -1.0}
        busy = {}
        for d, v in pd[r.id].items():
            k = col.get((i, d))
            if k is not None:
                share[k] = 1.0
                busy[k] = v
        rows.append((share, 0.0, 0.0))  # its shares add up to "done"
        rows.append((busy, -np.inf, t - r.arrival_s))  # one device at a time
    for d in sorted({d for _i, d in col}):
        items = [(max(cand[i].arrival_s, load[(cand[i].model, d)]), k, pd[cand[i].id][d])
                 for (i, dd), k in col.items() if dd == d]
        for rho in sorted({x[0] for x in items}):  # work released after rho fits
            rows.append(({k: v for rr, k, v in items if rr >= rho - 1e-12}, -np.inf, t - rho))
    a = lil_matrix((len(rows), n))
    lo, hi = np.zeros(len(rows)), np.zeros(len(rows))
    for i, (row, lb, ub) in enumerate(rows):
        for k, v in row.items():
            a[i, k] = v
        lo[i], hi[i] = lb, ub
    c = np.zeros(n)
    for i, r in enumerate(cand):
        c[i] = -r.weight
    integ = np.zeros(n)
    integ[:len(cand)] = 1
    res = milp(c, constraints=LinearConstraint(a.tocsr(), lo, hi), integrality=integ,
               bounds=Bounds(0, 1), options={"time_limit": 10})
    dual = getattr(res, "mip_dual_bound", None)
    if dual is None or not math.isfinite(dual):
        return float(sum(r.weight for r in cand))  # nothing proved: the trivial bound
    return -float(dual)


def counting_bound(inst: Instance, gpu_only: bool, points: int) -> float:
    cost = cost_model_for(inst, "analytic")
    p, pd, load = request_bounds(inst, cost)
    reqs = list(inst.requests)
    if gpu_only:
        gpus = {g.id for h in inst.cluster.hosts for g in h.gpus}
        pd = {k: {d: v for d, v in row.items() if d in gpus} for k, row in pd.items()}
        p = {k: min(row.values()) for k, row in pd.items()}
    first = {r.id: min(load[(r.model, d)] + s for d, s in pd[r.id].items()) for r in reqs}
    ready = {r.id: max(r.arrival_s + p[r.id], first[r.id]) for r in reqs}
    w_all = sum(r.weight for r in reqs)
    t0 = min(ready.values())
    ts = np.linspace(t0, max(ready.values()) + sum(p.values()), points)
    total, prev = w_all * t0, t0
    for t in ts[1:]:
        done = most_weight_done(float(t), reqs, pd, load, ready)
        total += (t - prev) * max(0.0, w_all - done)
        prev = float(t)
        if done >= w_all - 1e-6:
            break
    return (total - sum(r.weight * r.arrival_s for r in reqs)) / w_all


def main() -> None:
    from solver import make_instance  # benchmarks/solver.py's workloads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--points", type=int, default=800, help="grid points in time")
    ap.add_argument("--gpu-only", action="store_true")
    args = ap.parse_args()
    if args.workload == "mixed":
        inst = load_instance(ROOT / "instances" / "mixed.json")
    else:
        inst = parse_instance(make_instance(args.workload, args.seed),
                              f"{args.workload}-s{args.seed}", Path("."), "")
    cost = cost_model_for(inst, "analytic")
    t = time.perf_counter()
    lb, name = lower_bound(inst, cost, None, inst.objective)
    print(f"reported bound {lb:.3f} s ({name.split(' (')[0]}, {time.perf_counter() - t:.1f} s)")
    t = time.perf_counter()
    cb = counting_bound(inst, args.gpu_only, args.points)
    print(f"counting bound{' (GPU only, not valid)' if args.gpu_only else ''} {cb:.3f} s "
          f"({time.perf_counter() - t:.1f} s)")


if __name__ == "__main__":
    main()
