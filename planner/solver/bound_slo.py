"""Queueing-aware upper bound on SLO attainment: the pooled machine with deadlines.

On the pooled machine of ``bound.py`` (request ``j`` needs work ``p_j``, its fastest run;
device ``d`` advances any request at rate at most ``S_d``, from its first possible load),
the work a plan does in ``[rho, D]`` is at most ``cap(rho, D)``, the integral of the pooled
speed over it. A request released at or after ``rho`` (``r_j = max(a_j, least first
load)``) does none of its work before ``rho``; one that meets its SLO does all of it by its
due time ``d_j = a_j + slo_j``. So for every ``rho < D`` the requests of any plan that meet
their SLO satisfy

    sum of p_j over met j with r_j >= rho and d_j <= D  <=  cap(rho, D).

With ``z_j`` in [0, 1] for "j meets its SLO" (0 where even alone it cannot: the per-request
bound), the most ``sum z_j`` under these rows (an LP: a fractional knapsack per window)
bounds the count of met requests of every plan; the count being an integer, its floor
does too. The LP's value is taken from its duals (weak duality, as ``bound_lp``), so it
holds whatever the solver's tolerances. Only a subset of the (rho, D) pairs is used (the
releases and due times at up to ``MAX_POINTS`` quantiles each): any subset of valid rows
gives a valid bound.
"""

from __future__ import annotations

import bisect
import itertools
import math

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from planner.solver.bound_lp import dual_value

MAX_POINTS = 80  # release times and due times each, at most (quantiles beyond)
#: rows stop being added past this many nonzeros (any subset of the rows is valid): an
#: overloaded instance of 1,000 requests would otherwise give tens of millions
MAX_NONZEROS = 1_500_000
TIME_LIMIT_S = 10.0  # HiGHS; past it the per-request count stands


def _points(values: list[float]) -> list[float]:
    vs = sorted(set(values))
    if len(vs) <= MAX_POINTS:
        return vs
    idx = np.linspace(0, len(vs) - 1, MAX_POINTS).round().astype(int)
    return sorted({vs[i] for i in idx})


def _integral(capacity: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Breakpoints and the speed's integral from the first breakpoint at each."""
    ts = [t for t, _s in capacity]
    acc = [0.0]
    for (t0, s0), (t1, _s1) in itertools.pairwise(capacity):
        acc.append(acc[-1] + s0 * (t1 - t0))
    return ts, acc


def _cum(ts: list[float], acc: list[float], speeds: list[float], t: float) -> float:
    """The integral of the speed from -inf to ``t`` (zero before the first step)."""
    i = bisect.bisect_right(ts, t) - 1
    if i < 0:
        return 0.0
    return acc[i] + speeds[i] * (t - ts[i])


def slo_count_bound(work: list[float], release: list[float], due: list[float],
                    feasible: list[bool],
                    machines: list[tuple[list[int], list[tuple[float, float]]]],
                    time_limit_s: float = TIME_LIMIT_S) -> int:
    """The most requests (of these, every one with an SLO) any plan can serve within their
    SLOs (module docstring). ``machines``: pooled machines, each (the requests it covers,
    its speed as sorted (from time, speed) steps; ``release`` must hold for it), e.g. all
    requests on every device, and each model's on the devices' speeds for it after its own
    loads; ``feasible``: whether each can meet its SLO at all (alone)."""
    cand = [i for i, ok in enumerate(feasible) if ok]
    if not cand:
        return 0
    col = {j: k for k, j in enumerate(cand)}
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    rhs: list[float] = []
    for covered, capacity in machines:
        mine = [j for j in covered if feasible[j]]
        if not mine or not capacity:
            continue
        ts, acc = _integral(capacity)
        speeds = [s for _t, s in capacity]
        for rho in _points([release[j] for j in mine]):
            after = [j for j in mine if release[j] >= rho - 1e-9]
            for d_end in _points([due[j] for j in after]):
                if d_end <= rho:
                    continue
                inside = [j for j in after if due[j] <= d_end + 1e-9]
                cap = _cum(ts, acc, speeds, d_end) - _cum(ts, acc, speeds, rho)
                if sum(work[j] for j in inside) <= cap + 1e-9:
                    continue  # every one of them fits: the row cuts nothing
                if len(vals) + len(inside) > MAX_NONZEROS:
                    break
                r = len(rhs)
                rows += [r] * len(inside)
                cols += [col[j] for j in inside]
                vals += [work[j] for j in inside]
                rhs.append(cap)
    if not rhs:
        return len(cand)
    n = len(cand)
    c = -np.ones(n)  # max sum z == min -sum z
    a_ub = coo_matrix((vals, (rows, cols)), shape=(len(rhs), n)).tocsr()
    b_ub = np.array(rhs)
    a_eq = coo_matrix((0, n)).tocsr()
    lb, ub = np.zeros(n), np.ones(n)
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=np.column_stack([lb, ub]),
                  method="highs-ds", options={"time_limit": max(0.1, time_limit_s)})
    if res.status != 0 or res.ineqlin is None:
        return len(cand)
    low = dual_value(c, a_ub, b_ub, a_eq, np.zeros(0), lb, ub,
                     np.minimum(res.ineqlin.marginals, 0.0), np.zeros(0))
    return min(len(cand), math.floor(-low + 1e-6))
