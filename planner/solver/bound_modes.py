"""Swap-aware bound on one GPU: the interval-indexed LP with the GPU's engines in memory
groups, and per window of time which groups run there (a MIP).

Derivation in ``docs/solver.md`` ("Swaps in the bound"). In short: engines are put in
groups by the bytes they hold on the GPU so that any two engines of different groups do
not fit on it together:

- ``big``: for a model whose fastest split holds ``B > cap / 2`` bytes, its engines (and
  those of any model whose fastest split holds as much) holding at least ``B`` (two of
  different models never fit together);
- ``mid``: every other engine holding more than ``cap - B`` (none fits beside a big one);
- the rest are free: their runs are not part of the argument.

There is one such *system* of groups per model whose fastest split holds more than half
the GPU (``B`` being that split's bytes; its engines holding at least ``B`` are ``big``),
each with binaries of its own: a swap between the 32B model (19 GiB) and the 8B F16 one
(14.7 GiB) is charged by the 32B model's system, while the largest model's (the 14B F16,
23.8 GiB) puts both in ``mid``. All systems constrain the same work variables (a split's
work counts in its group of each system).

Beside each of those, a second system for the same models (``LOWER_SYSTEMS``), its big
group their splits holding at least ``T = max(cap / 2, cap - b_min)`` (``b_min``: the
smallest model's fastest split; the rest, as above, ``mid`` above ``cap - T``): a split a
little slower than the largest model's fastest (the 14B F16 model at 44 layers, 22 % slower
per unit than at 46) is in the first system's ``mid`` with the small models and changes
with them for free; here it is big (`1gpu-4models` seeds 41, 52, 54, 61, 29 s of MIP:
7.73 -> 7.88, 17.23 -> 17.35, 13.39 -> 13.56, 12.59 -> 12.86 s; pareto seeds 41, 53, 55:
16.28 -> 16.40, 15.51 -> 15.38, 17.76 -> 18.01; `1gpu-6models` seed 41 44.41 -> 45.23;
2026-12-06).

When every model's fastest split holds more than half the GPU, there is one system with
a group per model, of its engines holding more than half (a shared ``mid`` group would
let two models' large splits, which do not fit together, take turns for free). Where small
models' fastest splits hold a fifth of the GPU (the one-GPU benchmark workloads), such
groups would leave the small models free, and the bound lost its grip; a system per large
model did best (seed 5 pareto, 16 s of MIP: 19.93 s, against 19.45 s with the largest
model's system alone, 18.33 s for the LP).

Memory is held from the start of a load to the end of an unload (SPEC rule 4), so after
a run of a group-``g`` engine, a run of a group-``h`` engine (``h != g``) can start only
once the first engine's unload and the second's load are done: the GPU runs no group's
work for at least ``S_gh = U_g + L_h`` (least unload of ``g``, least load of ``h``).
Cut time into windows; ``y[g, k] = 1`` when group ``g``'s engines run in window ``k``:

- group work in a window is at most its length times ``y``;
- two groups in one window: a change lies inside it, so the groups' work there is at
  most its length less ``S`` per group beyond the first (``S`` the least change);
- group ``g`` in window ``k`` and another, ``h``, in a later window ``k2``: a change
  lies between, so the groups' work in windows ``k`` to ``k2`` is at most their length
  less ``max(S_out(g), S_in(h))`` (the least change out of ``g`` and into ``h``); rows
  for each ``k2`` whose windows strictly between are shorter than the longest change.

Each request has a window: its work after the window's end is its tail, counted at that
end without capacity (as the LP's horizon; any end is valid). The windows come from the
MIP's LP relaxation on a coarse grid (solved first): a request's ends a little after its
last work there, so the MIP's grid of the same size has slots several times shorter than
with one horizon for all (each request's work counted at its slot's start loses less).

Slow options: ``C_j >= M_j + p_j / 2`` is the least ``C - M`` of a request run whole at its
fastest. With shares ``y_o`` on options (place and phase) of ``p_o`` seconds per unit
share, each at a rate of at most ``1 / p_o``, one device at a time, the least ``C - M``
over all orders and rates is ``f(y) = 1/2 sum_o sum_o' min(p_o, p_o') y_o y_o'`` (fastest
last, each at full rate), convex, so any tangent is a valid row: for each request whose
shares ``y^`` in the coarse relaxation (below) put ``f`` more than POINT_GAIN above the
fastest value, ``C_j >= M_j + grad f(y^) . y - f(y^)``, its tail counted at its fastest
option (moving a share to a faster option only lowers ``f``).

Every plan gives a feasible point (its LP point as in ``bound_lp``, each request's work
per group at the group's fastest run time, and its ``y``), so the MIP's optimum, and any
dual bound of it, bounds every plan. The fractional LP cannot charge a change (a mix of
"group g only" and "group h only" time-shares the GPU for free), which is why the MIP
branches on ``y``. The value returned is HiGHS's dual bound, less a relative 1e-6 for
its tolerances.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from planner.baselines.sim import context_sizes
from planner.costmodel.base import CostModel
from planner.domain import EngineConfig, Instance, Request
from planner.solver.bound_lp import slot_grid
from planner.solver.bound_phases import TwoPhases
from planner.solver.candidates import curves, solver_devices
from planner.solver.highs_child import mip_dual_bound

VAR_BUDGET = 40_000  # slot length grows until the MIP has about this many x variables
#: ... given BUDGET_TIME_S or less (with a 30 % polish, the ~17 s it had within a 60 s
#: solve: its root LP and a cut round fit at 40,000, not at 50,000; since the polish has
#: half the limit on one GPU, about 29 s, so 48,000); given more time,
#: VAR_BUDGET times (time / BUDGET_TIME_S) ** BUDGET_GROWTH (HiGHS's bound here comes
#: from its root, which a finer grid raises: given 89 s, 118,000 variables gave 3.5-7 %
#: more than 50,000 on three one-GPU workloads; its time grows faster than the grid, so
#: the exponent stays below 1)
BUDGET_TIME_S = 20.0
BUDGET_GROWTH = 0.5
MIN_SLOT_S = 0.25
#: each request's window ends this many slots of the coarse grid, or this many of the
#: longest changes of group (the MIP's swaps may put its work later than the relaxation
#: does), whichever is longer, after its last work in that grid's LP relaxation (solved
#: first, with about COARSE_BUDGET work variables); WINDOW_SLOTS 0: every window ends at
#: the horizon
WINDOW_SLOTS = 2.0
WINDOW_CHANGES_AFTER = 2.0
COARSE_BUDGET = 15_000
#: a request gets the slow options' tangent row (module docstring) at its shares in the
#: coarse relaxation where they put f this much above its fastest value
POINT_GAIN = 0.02
#: a MIP with more columns than this is solved in a child process (``highs_child``: killed
#: at its deadline); smaller ones (the tests' tiny instances) here, by SciPy's HiGHS
IN_PROCESS_COLS = 5_000
WINDOW_CHANGES = 0.5  # a window lasts this many of the longest group changes
HORIZON_CHANGES = 4  # the horizon leaves room for this many longest changes
#: a second system per big level, its big group from a lower threshold (``systems``);
#: off in a test only
LOWER_SYSTEMS = True
SAFETY = 1e-6  # relative: HiGHS's dual bound is within its tolerances


@dataclass(frozen=True)
class Option:
    groups: tuple[int, ...]  # the groups (global ids) its engines are in; () elsewhere
    device: str
    seconds: float  # per unit share of its phase's work
    release: float
    phase: int  # 0: the prefill's work, 1: the decode's
    part: float  # the prefill's share of the request (the decode's: 1 - part)


@dataclass(frozen=True)
class System:
    """A partition of the GPU's splits into groups that never fit together."""
    group_of: dict[tuple[str, int], int]  # (model, n_gpu_layers) -> group; absent: free
    changes: list[tuple[float, float]]  # per group: (least unload, least load) seconds


def systems(instance: Instance, cost: CostModel, gpu: str) -> tuple[
        dict[str, list[EngineConfig]], list[System]] | None:
    """Every split of each model on ``gpu`` that fits, and the group systems (module
    docstring): one per model whose fastest split holds more than half the GPU, or, when
    every model's does, one with a group per model. None when no system has two
    groups."""
    dev = instance.cluster.device(gpu)
    cap = dev.memory_bytes
    if cap is None:
        return None
    host_cap = instance.cluster.host(dev.host).memory_bytes
    n_ctx = context_sizes(instance)
    cfgs: dict[str, list[EngineConfig]] = {}
    for m in sorted({r.model for r in instance.requests}):
        every = [EngineConfig(m, gpu, g, n_ctx[m]) for g in range(cost.max_gpu_layers(m) + 1)]
        cfgs[m] = [c for c in every if cost.fits(c, cap, host_cap)]
    # B_m: the bytes of the model's fastest split, when more than half the GPU
    fastest = {m: min(cs, key=lambda c: (cost.run_s(c, 128, 0, 128), -cost.gpu_bytes(c)))
               for m, cs in cfgs.items() if cs}
    held = {m: cost.gpu_bytes(c) for m, c in fastest.items()}
    top = max(held.values(), default=0)
    if 2 * top <= cap:
        return None
    if all(2 * b > cap for b in held.values()):
        # every model's fastest split holds more than half the GPU: a group per model of
        # its splits holding more than half (no mid group, whose splits of different
        # models could not fit together yet would change group for free)
        bigs = [{m: cap // 2 + 1 for m in held}]
    else:
        levels = sorted({b for b in held.values() if 2 * b > cap}, reverse=True)
        bigs = [{m: b for m, b in held.items() if b == level} for level in levels]
        if LOWER_SYSTEMS:
            # the same models' splits from where the smallest model's fastest split no
            # longer fits beside them: their slightly slower splits (in ``mid`` above,
            # changing with the small models for free) are big here
            t = max(cap // 2 + 1, cap - min(held.values()) + 1)
            bigs += [{m: t for m, b in held.items() if b == level}
                     for level in levels if t < level]
    out: list[System] = []
    for big_b in bigs:
        least = min(big_b.values())
        big_ids = {m: i for i, m in enumerate(sorted(big_b))}
        mid = len(big_ids)
        group_of: dict[tuple[str, int], int] = {}
        for m, cs in cfgs.items():
            for c in cs:
                b = cost.gpu_bytes(c)
                if m in big_b and b >= big_b[m]:
                    group_of[(m, c.n_gpu_layers)] = big_ids[m]
                elif b > cap - least:
                    group_of[(m, c.n_gpu_layers)] = mid
        if len(set(group_of.values())) < 2:
            continue
        changes = []
        for g in range(mid + 1):
            cs = [c for m, row in cfgs.items() for c in row
                  if group_of.get((m, c.n_gpu_layers)) == g]
            changes.append((min((cost.unload_s(c) for c in cs), default=math.inf),
                            min((cost.load_s(c) for c in cs), default=math.inf)))
        out.append(System(group_of, changes))
    return (cfgs, out) if out else None


def grid_budget(time_limit_s: float) -> int:
    """About how many work variables the grid gets for ``time_limit_s`` of MIP (module
    constants). (HiGHS checks its time limit only between cut rounds; its child is killed
    at the deadline and the last bound it sent stands, so no time is kept back for that.)"""
    return int(VAR_BUDGET * max(1.0, time_limit_s / BUDGET_TIME_S) ** BUDGET_GROWTH)


def mode_bound(instance: Instance, cost: CostModel, per_device: dict[str, dict[str, float]],
               load: dict[tuple[str, str], float], per_request: dict[str, float],
               time_limit_s: float) -> float:
    """A lower bound on ``sum_j w_j C_j`` (module docstring) for an instance with one GPU;
    0.0 when it does not apply (no GPU, several, fewer than two groups, no time).
    ``per_device``: per request, the devices it may run on (``bound_requests.request_bounds``'s
    keys; the other devices' times come from their configurations here);
    ``load``: least load per (model, device); ``per_request``: a lower bound on each
    request's completion time. Work is counted in units, prefill and decode apart
    (:class:`planner.solver.bound_phases.TwoPhases`)."""
    started = time.perf_counter()
    gpus = [d for d in instance.cluster.devices if d.kind == "gpu"]
    if len(gpus) != 1 or time_limit_s <= 0.5:
        return 0.0
    gpu = gpus[0].id
    got = systems(instance, cost, gpu)
    if got is None:
        return 0.0
    cfgs, systs = got
    offset = [0]
    for sy in systs:
        offset.append(offset[-1] + len(sy.changes))
    n_grp = offset[-1]
    reqs = list(instance.requests)
    others = {(m, d): cs for (m, d), cs in curves(
        instance, cost, solver_devices(instance, True)).items() if d != gpu and cs}
    dec = TwoPhases(cost, reqs, [*cfgs.items(), *((m, cs) for (m, _), cs in others.items())])
    opts: list[list[Option]] = []
    units: list[float] = []
    for r in reqs:
        cells: dict[tuple[int, ...], list[EngineConfig]] = defaultdict(list)
        for cfg in cfgs.get(r.model, []):
            if r.total_tokens <= cfg.n_ctx:
                at = (r.model, cfg.n_gpu_layers)
                key = tuple(base + sy.group_of[at] for base, sy in zip(offset, systs, strict=False)
                            if at in sy.group_of)
                cells[key].append(cfg)
        places = [(key, gpu, cs, max(r.arrival_s, min(cost.load_s(x) for x in cs)))
                  for key, cs in sorted(cells.items())]
        for d in per_device[r.id]:
            cs = [c for c in others.get((r.model, d), []) if r.total_tokens <= c.n_ctx]
            if cs:
                places.append(((), d, cs, max(r.arrival_s, load[(r.model, d)])))
        if not places:
            return 0.0
        u, part, secs = dec.seconds(r, [cs for _, _, cs, _ in places])
        row = [Option(key, dev, sec, rel, ph, part)
               for (key, dev, _, rel), both in zip(places, secs, strict=True)
               for ph, sec in enumerate(both) if sec is not None]
        opts.append(row)
        units.append(u)
    s_max = max(_spread(sy.changes)[1] for sy in systs)
    # any horizon is valid (work after it is counted at it, without capacity); this one
    # leaves room for the last requests and HORIZON_CHANGES changes of group
    horizon = max(o.release for row in opts for o in row) + sum(units) + HORIZON_CHANGES * s_max
    budget = grid_budget(time_limit_s)
    setup = _Setup(reqs, opts, units, systs, offset, n_grp, s_max, horizon, per_request)
    deadline = started + time_limit_s
    ends = [horizon] * len(opts)
    tangents: list[Tangent | None] | None = None
    if WINDOW_SLOTS > 0:
        # the LP relaxation on a coarse grid: where each request's work lies (a third of
        # the time at most: the MIP's is the bound)
        coarse = _solve(setup, ends, COARSE_BUDGET, False, started + time_limit_s / 3)
        if isinstance(coarse, tuple):
            last, coarse_dt, shares = coarse
            margin = max(WINDOW_SLOTS * coarse_dt, WINDOW_CHANGES_AFTER * s_max)
            ends = [min(horizon, w + margin) for w in last]
            if POINT_GAIN > 0:
                tangents = [_tangent(y, row, u) for y, row, u in zip(shares, opts, units,
                                                                    strict=True)]
    value = _solve(setup, ends, budget, True, deadline, tangents)
    return value if isinstance(value, float) else 0.0


@dataclass(frozen=True)
class _Setup:
    """What :func:`_solve` builds the MIP from (``mode_bound``'s)."""
    reqs: list[Request]
    opts: list[list[Option]]
    p: list[float]  # each request's units of work (at most one a second)
    systs: list[System]
    offset: list[int]  # the first global group id of each system
    n_grp: int
    s_max: float  # the longest change of group
    horizon: float
    per_request: dict[str, float]


def _solve(setup: _Setup, ends: list[float], budget: int, mip: bool,
           deadline: float, tangents: list[Tangent | None] | None = None
           ) -> float | tuple[list[float], float, list[np.ndarray]] | None:
    """The MIP (module docstring) with each request's window ending at ``ends`` (its work
    after it is its tail, counted there without capacity: any ends are valid) on a grid of
    about ``budget`` work variables, solved until ``deadline``: HiGHS's dual bound (0.0
    where it has none); ``tangents``: per request, its slow options' tangent row (None:
    no row). ``mip`` False: its LP relaxation instead,
    and (each request's last work, the end of the last slot with its work or its window
    end where some is in its tail; the grid's slot length; each request's shares per
    option); None where it did not end."""
    started = time.perf_counter()
    reqs, opts, p, systs, offset, n_grp = (setup.reqs, setup.opts, setup.p, setup.systs,
                                          setup.offset, setup.n_grp)
    s_max, horizon = setup.s_max, setup.horizon
    span = sum(max(0.0, e - o.release) for e, row in zip(ends, opts, strict=True) for o in row)
    dt = max(MIN_SLOT_S, span / budget)
    # a regular grid plus every release time (as the LP's: resolution where it matters),
    # to the last window's end
    starts, lens = slot_grid(0.0, dt, max(ends), [o.release for row in opts for o in row])
    win_len = max(dt, WINDOW_CHANGES * s_max)
    win_of = (starts // win_len).astype(int)
    n_win = int(win_of[-1]) + 1
    win_lens = np.bincount(win_of, weights=lens, minlength=n_win)

    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    hi: list[float] = []
    lo: list[float] = []

    def add(entries: list[tuple[int, float]], upper: float, lower: float = -np.inf) -> None:
        r = len(hi)
        for c, v in entries:
            rows.append(r)
            cols.append(c)
            vals.append(v)
        hi.append(upper)
        lo.append(lower)

    col = 0
    x_ub: list[float] = []
    cap_rows: dict[tuple[str, int], list[tuple[int, float]]] = defaultdict(list)
    group_work: dict[tuple[int, int], list[tuple[int, float]]] = defaultdict(list)
    job_slot: dict[tuple[int, int], list[tuple[int, float]]] = defaultdict(list)
    mean_row: list[list[tuple[int, float]]] = []
    slot_of: list[int] = []  # the slot and request of each work variable
    job_of: list[int] = []
    opt_of: list[int] = []
    share_row: list[list[tuple[int, float]]] = []
    phase_of: list[list[int]] = []
    for jn, row in enumerate(opts):
        mine: list[tuple[int, float]] = []
        shares: list[tuple[int, float]] = []
        phases_here: list[int] = []
        for oi, o in enumerate(row):
            for s in range(int(np.searchsorted(starts, o.release - 1e-9)),
                           int(np.searchsorted(starts, ends[jn] - 1e-9))):
                cap_rows[(o.device, s)].append((col, o.seconds))
                for g in o.groups:
                    group_work[(g, int(win_of[s]))].append((col, o.seconds))
                job_slot[(jn, s)].append((col, o.seconds))
                mine.append((col, float(starts[s])))
                slot_of.append(s)
                job_of.append(jn)
                opt_of.append(oi)
                shares.append((col, 1.0))
                phases_here.append(o.phase)
                x_ub.append(min(1.0, float(lens[s]) / o.seconds))
                col += 1
        mean_row.append(mine)
        share_row.append(shares)
        phase_of.append(phases_here)
        if time.perf_counter() > deadline - 0.75 * (deadline - started):
            return None  # building it took a quarter of the time left
    n_x = col
    n_job = len(reqs)
    tail0, c0, y0 = n_x, n_x + n_job, n_x + 2 * n_job
    v0 = y0 + n_grp * n_win  # v[g, k]: group g's work in window k (device seconds)
    n = v0 + n_grp * n_win
    for (_d, s), entries in cap_rows.items():
        add(entries, float(lens[s]))  # one compute lane per device
    for (_j, s), entries in job_slot.items():
        if len(entries) > 1:
            add(entries, float(lens[s]))  # a request on one device at a time
    for jn in range(n_job):
        add([*share_row[jn], (tail0 + jn, 1.0)], 1.0, 1.0)
        for ph in (0, 1):  # each phase's work at most its part of the request
            mine_ph = [e for e, o in zip(share_row[jn], phase_of[jn], strict=True) if o == ph]
            if mine_ph:
                add(mine_ph, opts[jn][0].part if ph == 0 else 1.0 - opts[jn][0].part)
        add([*mean_row[jn], (tail0 + jn, ends[jn]), (c0 + jn, -1.0)], -p[jn] / 2)
        tan = tangents[jn] if tangents else None
        if tan is not None:  # slow options: C >= M + grad . y - f(y^) (module docstring)
            add([*((cc, st + tan.grad[opt_of[cc]]) for cc, st in mean_row[jn]),
                 (tail0 + jn, ends[jn] + tan.tail), (c0 + jn, -1.0)], tan.value)

    def y(g: int, k: int) -> int:
        return y0 + g * n_win + k

    def v(g: int, k: int) -> int:
        return v0 + g * n_win + k

    cum = np.concatenate([[0.0], np.cumsum(win_lens)])
    for base, sy in zip(offset, systs, strict=False):
        ch = sy.changes
        ids = range(base, base + len(ch))
        s_min, s_far = _spread(ch)
        out_of = [min(ch[g][0] + ch[f][1] for f in range(len(ch)) if f != g)
                  for g in range(len(ch))]
        into = [min(ch[f][0] + ch[h][1] for f in range(len(ch)) if f != h) for h in range(len(ch))]
        pairs = [(base + g, base + h, max(out_of[g], into[h]))
                 for g in range(len(ch)) for h in range(len(ch)) if g != h]
        for k in range(n_win):
            length = float(win_lens[k])
            for g in ids:
                add([*group_work.get((g, k), []), (v(g, k), -1.0)], 0.0, 0.0)
                add([(v(g, k), 1.0), (y(g, k), -length)], 0.0)
            # two groups in one window: a change inside it
            add([*((v(g, k), 1.0) for g in ids), *((y(g, k), s_min) for g in ids)],
                length + s_min)
            # g in window k, h in a later window k2: a change between them
            for k2 in range(k + 1, n_win):
                span_len = float(cum[k2 + 1] - cum[k])
                inner = float(cum[k2] - cum[k + 1])  # the windows strictly between
                if inner >= s_far:
                    break  # the windows between can hold the change (no grip)
                work = [(v(g, kk), 1.0) for g in ids for kk in range(k, k2 + 1)]
                for g, h, gap in pairs:
                    if gap < math.inf:
                        add([*work, (y(g, k), gap), (y(h, k2), gap)], span_len + gap)
    weights = np.array([r.weight for r in reqs])
    c = np.zeros(n)
    c[c0:c0 + n_job] = weights
    lb = np.zeros(n)
    ub = np.ones(n)
    ub[:n_x] = x_ub
    lb[c0:c0 + n_job] = [setup.per_request[r.id] for r in reqs]
    ub[c0:c0 + n_job] = horizon + max(p) + max(setup.per_request.values()) + 1.0
    integer = np.zeros(n, dtype=bool)
    integer[y0:v0] = True
    ub[v0:] = win_lens.max()
    a = coo_matrix((vals, (rows, cols)), shape=(len(hi), n)).tocsc()
    left = deadline - time.perf_counter()
    if left <= 0.2:
        return None
    if mip and n > IN_PROCESS_COLS:
        value = mip_dual_bound(c, a, np.array(lo), np.array(hi), lb, ub, integer, left)
        return 0.0 if value is None else value * (1.0 - SAFETY)
    # a small MIP (ends in milliseconds) or the LP relaxation: SciPy's HiGHS, here
    res = milp(c, constraints=LinearConstraint(a, lo, hi), integrality=integer if mip else None,
               bounds=Bounds(lb, ub), options={"time_limit": left, "disp": False})
    if mip:
        value = getattr(res, "mip_dual_bound", None)
        if value is None or not math.isfinite(value) or res.status not in (0, 1):
            return 0.0
        return float(value) * (1.0 - SAFETY)
    if res.status != 0 or res.x is None:
        return None
    jobs = np.array(job_of, dtype=int)
    last = np.zeros(n_job)
    used = res.x[:n_x] > 1e-7
    np.maximum.at(last, jobs[used], (starts + lens)[np.array(slot_of, dtype=int)[used]])
    in_tail = res.x[tail0:tail0 + n_job] > 1e-7
    # each request's shares per option (where its tangent row goes: module docstring)
    first = np.concatenate([[0], np.cumsum([len(row) for row in opts])]).astype(int)
    flat = np.zeros(int(first[-1]))
    np.add.at(flat, first[jobs] + np.array(opt_of, dtype=int), res.x[:n_x])
    return ([e if t else float(w) for w, e, t in zip(last, ends, in_tail, strict=True)], dt,
            [flat[first[j]:first[j + 1]] for j in range(n_job)])


@dataclass(frozen=True)
class Tangent:
    """A request's slow options' row (module docstring): ``C >= M + grad . y + tail * t -
    value``, ``grad`` per option, ``tail`` the tail's coefficient (at its fastest)."""
    grad: np.ndarray
    tail: float
    value: float  # f(y^)


def _tangent(y_hat: np.ndarray, row: list[Option], units: float) -> Tangent | None:
    """``f``'s tangent at a request's shares ``y_hat`` (module docstring), where ``f``
    there is more than POINT_GAIN above its value with every share at the fastest."""
    sec = np.array([o.seconds for o in row])
    grad = np.minimum.outer(sec, sec) @ y_hat  # f = y' min(p_o, p_o') y / 2
    value = 0.5 * float(y_hat @ grad)
    if value <= (1 + POINT_GAIN) * units / 2 * float(y_hat.sum()) ** 2:
        return None
    return Tangent(grad, min(units, float(sec.min())) * float(y_hat.sum()), value)


def _spread(ch: list[tuple[float, float]]) -> tuple[float, float]:
    """(least, longest finite) change between two groups of a system"""
    both = [ch[g][0] + ch[h][1] for g in range(len(ch)) for h in range(len(ch)) if g != h]
    return min(both), max(x for x in both if x < math.inf)

