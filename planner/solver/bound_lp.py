"""Interval-indexed LP bound on weighted completion time (unrelated devices).

Derivation in ``docs/solver.md`` ("The bound"). In short, every plan the SPEC allows
maps to a feasible point of this LP with an objective no larger than its own
``sum w_j C_j``:

- ``x[j, i, t]``: the share of request ``j``'s work done on device class ``i``
  (devices with identical speeds and load times, ``n_i`` of them) in slot ``t``
  of a time grid; a share ``x`` takes at least ``x * p_ji`` seconds there.
- capacity: ``sum_j x[j,i,t] p_ji <= n_i * len_t`` (one compute lane per device);
  with slot engines ``w_ji <= p_ji`` (``LPJob.work``) in place of ``p_ji`` here: the
  device time a request's tokens take at the best batching;
- a request runs on one device at a time (its runs never overlap, SPEC rule 5):
  ``sum_i x[j,i,t] p_ji <= len_t``;
- nothing of ``j`` runs on ``i`` before ``r_ji = max(a_j, L_mi)`` (its arrival and
  the least load time of its model there: engines start unloaded);
- work after the request's window end ``E_j`` goes to ``tail[j]`` (no capacity
  row: a relaxation), counted at ``E_j``;
- mean busy time ``M_j >= sum x[j,i,t] start_t + tail[j] E_j``, and
  ``C_j >= M_j + p_j / 2`` (rate at most ``1 / p_j``, ``p_j = min_i p_ji``), and
  ``C_j >= `` the per-request bound.

The value returned is a *dual* bound computed from the solver's duals (weak
duality), so it is valid whatever the LP solver's tolerances.

The first grid is solved twice: first without the one-device-at-a-time rows (one per
request and slot, most of the rows; dropping rows relaxes the LP, so its value is a
bound too), then whole when the time left allows. HiGHS took 1.8-2.4x longer on the
whole LP (``mixed.json``: 15.2 s against 6.6 s on a slow VM, where the whole LP alone
ran out of its 10 s and the bound fell to the per-request one, 8.39 s; the relaxed
value is 3.5% below the whole one: 10.01 against 10.37 s), so a slow machine still
gets an LP bound.

Two families of grids (:class:`_Grids`): with every release time on the grid, and the
regular grid alone, a request's variables from the slot its release falls in (that
slot's share at most what fits after the release, its work counted from the release on:
as valid, and LPs a quarter the size where releases are many, as on ``mixed.json``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

VAR_BUDGET = 40_000  # slot length grows until the LP has about this many x variables
REFINE = 4  # then, while time is left, grids with this many times more variables
MIN_SLOT_S = 0.25
#: With every release time on the grid (it gives the LP its resolution where it matters)
#: a request has a variable per class and slot after its release, and the grid at
#: least as many slots as there are distinct releases. An LP with more variables than
#: this is not tried, and a grid that would pass it is not refined to: HiGHS solved
#: 116,000 variables in 4.5 s and 187,000 in 6.8 s here, while on
#: 1,026 requests the LP (several times larger) ran out of its 10 s, which the search
#: then lacked. The other bounds stand alone.
MAX_VARS = 400_000
TIME_LIMIT_S = 10.0  # HiGHS; past it the other bounds stand alone
#: the whole first LP is tried when the time left is at least this many times what the
#: relaxed one (without the one-device-at-a-time rows) took (measured: 1.8-2.4x)
WHOLE_OVER_RELAXED = 3.0
#: an LP's predicted seconds: the last one's times (its variables' ratio) ** GROWTH
#: (HiGHS here, from 40,000 variables to 160,000: 1.4 on one GPU, 1.9-2.1 on several)
GROWTH = 1.5
#: the regular grids are tried where the first grid with the releases on it has more
#: than this many times their variables (mixed.json: 2.9; one GPU: 1.1)
ROUNDED_WHEN = 1.5


@dataclass(frozen=True)
class LPJob:
    weight: float
    p: float  # fastest run over all devices
    per_request: float  # a lower bound on its completion time from elsewhere
    times: tuple[float, ...]  # p_ji per device class (inf: cannot run there)
    release: tuple[float, ...]  # r_ji per device class
    #: device seconds a whole request takes from a device of each class, where that is
    #: less than its own duration (slot engines: a step serves several requests); None:
    #: ``times``
    work: tuple[float, ...] | None = None
    #: the time after which it is late (arrival + SLO); used by ``lp_bound(tardiness=True)``,
    #: None: never late
    due: float | None = None
    #: work in two phases (``bound_phases.TwoPhases``): ``times`` are then the seconds per
    #: unit share of decode work per class, these of prefill work (inf: not there), and
    #: ``part`` the prefill's share of the request; None: one phase
    pre: tuple[float, ...] | None = None
    part: float = 0.0


def lp_bound(jobs: list[LPJob], capacity: list[int], uses: list[dict[int, int]],
             horizon: float, time_limit_s: float = TIME_LIMIT_S,
             tardiness: bool = False, phased: list[LPJob] | None = None) -> float:
    """A lower bound on ``sum_j w_j C_j`` (see the module docstring). ``capacity``: the
    number of devices per class; option ``k`` of a job (``times[k]``, ``release[k]``)
    occupies ``uses[k][i]`` devices of class ``i`` while it runs (an engine split over
    several GPUs occupies each of them); ``horizon``: the end of every request's
    window (any value is valid; later is tighter, and larger).

    ``tardiness``: a lower bound on ``sum_j w_j max(0, C_j - due_j)`` instead, over the
    same LP (a variable ``T_j >= 0`` with ``T_j >= C_j - due_j`` per job with a due time:
    any plan's completions give a feasible point, so its tardiness is at least the
    LP's).

    ``phased``: the same jobs with their work in two phases (``LPJob.pre``), used after the
    first (relaxed) solve: a tighter LP where phases scale unlike across devices, and
    about twice as large."""
    if not jobs:
        return 0.0
    deadline = time.perf_counter() + time_limit_s
    solves: list[tuple[int, float, bool]] = []  # (variables, seconds, whole) of each LP
    rounded, exact = (_Grids(jobs, capacity, uses, horizon, tardiness, phased, r, solves)
                      for r in (True, False))
    # the regular grid, releases inside slots: small LPs, where releases are many the
    # only ones that finish in time; then the grids with every release on them, ever
    # finer; then finer regular grids with the time left
    if exact.first_size() > ROUNDED_WHEN * rounded.first_size():
        rounded.step(deadline)
        rounded.step(deadline)
    else:  # releases add little to the grid: the grids with them only
        rounded.done = True
    while exact.step(deadline):
        pass
    # a regular grid no finer than the finest whole one with the releases on it gives
    # about as much as that one (it has those slots but the releases): not tried
    rounded.finer_than = exact.last_dt
    while rounded.step(deadline):
        pass
    return max(rounded.best, exact.best)


class _Grids:
    """One family of grids for :func:`lp_bound`, with every release time on them or
    (``rounded``) without: the first grid without the one-device-at-a-time rows (module
    docstring), then whole (with the ``phased`` jobs where given), then grids about
    REFINE times larger. A step solves the next one when its predicted time fits (a
    solve that runs out of time is lost), from the family's last solve where it has one
    (the other family's LPs take longer per variable), as a power ``GROWTH`` of the
    variables."""

    def __init__(self, jobs: list[LPJob], capacity: list[int], uses: list[dict[int, int]],
                 horizon: float, tardiness: bool, phased: list[LPJob] | None, rounded: bool,
                 solves: list[tuple[int, float, bool]]) -> None:
        self.jobs, self.phased, self.capacity, self.uses = jobs, phased, capacity, uses
        self.horizon, self.tardiness, self.rounded, self.solves = \
            horizon, tardiness, rounded, solves
        self.rel = [min(r for r, p in zip(j.release, j.times, strict=True) if p < math.inf)
                    for j in jobs]
        self.mine: list[tuple[int, float, bool]] = []  # this family's solves
        self.stage = 0  # 0: first grid relaxed, 1: whole, 2...: refinements
        self.finer_than = math.inf  # refinements only to grids finer than this
        self.last_dt = math.inf
        self.best = 0.0
        self.done = False
        #: the last grid built: (its jobs, slot length, the grid), as first_size leaves it
        #: for the first step
        self._last: tuple[list[LPJob], float, tuple[np.ndarray, np.ndarray, int]] | None = None

    def _dt(self, jobs: list[LPJob], stage: int) -> float:
        """The slot length of the family's grid at ``stage``."""
        return max(MIN_SLOT_S, _span(jobs, self.rel, self.horizon)
                   / (VAR_BUDGET * REFINE ** max(0, stage - 1)))

    def _grid(self, jobs: list[LPJob], dt: float) -> tuple[np.ndarray, np.ndarray, int]:
        """:func:`_grid` of the family for ``jobs`` and slot length ``dt``."""
        if self._last is None or self._last[0] is not jobs or self._last[1] != dt:
            self._last = jobs, dt, _grid(jobs, min(self.rel), dt, self.horizon, self.rounded)
        return self._last[2]

    def first_size(self) -> int:
        """Share variables of the family's first grid."""
        return self._grid(self.jobs, self._dt(self.jobs, 0))[2]

    def step(self, deadline: float) -> bool:
        """Solve the next LP of the family if it is predicted to end by ``deadline``;
        False (and the family done) where it is not, or none is left."""
        if self.done:
            return False
        self.done = True
        jobs = self.jobs if self.stage == 0 or self.phased is None else self.phased
        whole = self.stage > 0
        while True:
            dt = self._dt(jobs, self.stage)
            if self.stage >= 2 and dt >= self.last_dt:
                return False
            if self.stage < 2 or dt < self.finer_than:
                break
            if dt <= MIN_SLOT_S:
                return False
            self.stage += 1
        grid = self._grid(jobs, dt)
        n = grid[2]
        if n > MAX_VARS:
            return False
        left = deadline - time.perf_counter()
        if self.solves:  # from this family's last solve, or the other's
            n0, took, whole0 = self.mine[-1] if self.mine else self.solves[-1]
            factor = 1.0
            if whole and not whole0:
                factor = WHOLE_OVER_RELAXED
            elif whole0 and not whole and WHOLE_OVER_RELAXED > 0:
                factor = 1.0 / WHOLE_OVER_RELAXED
            if took * (n / n0) ** GROWTH * factor > left:
                return False
        started = time.perf_counter()
        value = _grid_bound(jobs, self.capacity, self.uses, self.horizon, min(self.rel), dt,
                            left, one_device=whole, tardiness=self.tardiness,
                            rounded=self.rounded, grid=grid)
        took = time.perf_counter() - started
        if value is None:
            return False
        self.solves.append((n, took, whole))
        self.mine.append((n, took, whole))
        self.best = max(self.best, value)
        if whole:
            self.last_dt = dt
        self.stage += 1
        self.done = took >= left  # out of time
        return not self.done


def slot_grid(t0: float, dt: float, horizon: float, releases: list[float]
              ) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the slots of a regular grid of ``dt`` from ``t0`` plus every
    release time before ``horizon``. The horizon closes the last slot: work after it is
    the tail, counted at the horizon; work before it must be in a slot (counted at the
    slot's start)."""
    pts = {t0 + k * dt for k in range(math.ceil((horizon - t0) / dt) + 1)}
    pts.update(r for r in releases if r < horizon)
    grid = np.array(sorted({t for t in pts if t < horizon - 1e-9} | {horizon}))
    return grid[:-1], np.diff(grid)


def _grid_bound(jobs: list[LPJob], capacity: list[int], uses: list[dict[int, int]],
                horizon: float, t0: float, dt: float, time_limit_s: float,
                one_device: bool = True, tardiness: bool = False,
                rounded: bool = False,
                grid: tuple[np.ndarray, np.ndarray, int] | None = None) -> float | None:
    """The LP on a regular grid of ``dt`` from ``t0`` plus every release time; None
    when it would have more than ``MAX_VARS`` variables. ``one_device=False`` leaves
    out the rows that keep a request on one device at a time (a relaxation);
    ``tardiness``: the objective is ``sum w_j T_j`` (``lp_bound``). ``rounded``: the
    regular grid alone, a request's variables from the slot its release falls in, that
    slot's share at most what fits after the release and its work counted from the
    release on (as valid: any plan's work there lies between the two). ``grid``: what
    :func:`_grid` gives for these arguments, where the caller has it already."""
    n_cls = len(capacity)
    starts, lens, n_vars = grid if grid is not None else _grid(jobs, t0, dt, horizon, rounded)
    n_slot = len(starts)
    if n_vars > MAX_VARS:
        return None

    n_jobs = len(jobs)
    n_cap = n_cls * n_slot
    # rows: capacity (class, slot) | per job and slot | the M/C row of each job
    job_row0 = n_cap
    m_row0 = n_cap + n_jobs * n_slot
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    ub_parts: list[np.ndarray] = []
    eq_parts: list[np.ndarray] = []
    col = 0
    phase_ids: dict[tuple[int, int], list[np.ndarray]] = {}  # (job, phase) -> its shares
    for jn, job in enumerate(jobs):
        for i, p, r, ph in _phases(job):
            w = p if job.work is None or ph == 0 else job.work[i]
            ts = np.arange(_first_slot(starts, r, rounded), n_slot)
            k = len(ts)
            ids = np.arange(col, col + k)
            col += k
            phase_ids.setdefault((jn, ph), []).append(ids)
            for ci, cnt in uses[i].items():
                rows.append(ci * n_slot + ts)
                cols.append(ids)
                vals.append(np.full(k, w * cnt))
            if one_device:
                rows.append(job_row0 + jn * n_slot + ts)
                cols.append(ids)
                vals.append(np.full(k, p))
            rows.append(np.full(k, m_row0 + jn))
            cols.append(ids)
            # work in a slot lies after its start and after the release
            vals.append(np.maximum(starts[ts], r))
            ub_parts.append(np.minimum(1.0, np.maximum(
                0.0, np.minimum(lens[ts], starts[ts] + lens[ts] - r)) / p))
            eq_parts.append(np.full(k, jn))
    n_x = col
    tail = np.arange(n_x, n_x + n_jobs)  # tail[j], counted at the horizon
    cj = np.arange(n_x + n_jobs, n_x + 2 * n_jobs)  # C_j
    rows += [m_row0 + np.arange(n_jobs), m_row0 + np.arange(n_jobs)]
    cols += [tail, cj]
    vals += [np.full(n_jobs, horizon), np.full(n_jobs, -1.0)]
    n = n_x + 2 * n_jobs
    big = horizon + max(max(j.p, j.per_request) for j in jobs) + 1.0
    weights = np.array([j.weight for j in jobs])
    c = np.concatenate([np.zeros(n_x + n_jobs), weights])
    lb = np.concatenate([np.zeros(n_x + n_jobs), [min(j.per_request, big) for j in jobs]])
    ub = np.concatenate([*ub_parts, np.ones(n_jobs), np.full(n_jobs, big)])
    due_rhs: list[float] = []
    if tardiness:  # T_j >= C_j - due_j, T_j >= 0; the objective moves from C_j to T_j
        late = [jn for jn, j in enumerate(jobs) if j.due is not None]
        tj = np.arange(n, n + len(late))
        r0 = m_row0 + n_jobs
        rows += [r0 + np.arange(len(late)), r0 + np.arange(len(late))]
        cols += [cj[late], tj]
        vals += [np.ones(len(late)), np.full(len(late), -1.0)]
        due_rhs = [float(jobs[jn].due) for jn in late]  # type: ignore[arg-type]
        n += len(late)
        c = np.concatenate([np.zeros(n_x + 2 * n_jobs), weights[late]])
        lb = np.concatenate([lb, np.zeros(len(late))])
        ub = np.concatenate([ub, np.full(len(late), big)])
    # each phase's work at most its part of the request
    r0 = m_row0 + n_jobs + len(due_rhs)
    part_rhs: list[float] = []
    for (jn, ph), parts in phase_ids.items():
        if jobs[jn].pre is None:
            continue
        ids = np.concatenate(parts)
        rows.append(np.full(len(ids), r0 + len(part_rhs)))
        cols.append(ids)
        vals.append(np.ones(len(ids)))
        part_rhs.append(jobs[jn].part if ph == 0 else 1.0 - jobs[jn].part)
    bu = np.concatenate([(np.array(capacity, dtype=float)[:, None] * lens[None, :]).ravel(),
                         np.tile(lens, n_jobs), [-j.p / 2 for j in jobs], due_rhs, part_rhs])
    a_ub = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(len(bu), n)).tocsr()
    eq_rows = np.concatenate([*eq_parts, np.arange(n_jobs)])
    a_eq = coo_matrix((np.ones(len(eq_rows)), (eq_rows, np.arange(n_x + n_jobs))),
                      shape=(n_jobs, n)).tocsr()
    b_eq = np.ones(n_jobs)
    res = linprog(c, A_ub=a_ub, b_ub=bu, A_eq=a_eq, b_eq=b_eq,
                  bounds=np.column_stack([lb, ub]), method="highs-ds",
                  options={"time_limit": max(0.1, time_limit_s)})
    if res.status != 0 or res.ineqlin is None or res.eqlin is None:
        return 0.0
    return dual_value(c, a_ub, bu, a_eq, b_eq, lb, ub,
                      np.minimum(res.ineqlin.marginals, 0.0), res.eqlin.marginals)


def _grid(jobs: list[LPJob], t0: float, dt: float, horizon: float, rounded: bool
          ) -> tuple[np.ndarray, np.ndarray, int]:
    """(starts, lengths, share variables) of :func:`_grid_bound`'s grid."""
    starts, lens = slot_grid(t0, dt, horizon, [] if rounded else [
        r for j in jobs for r, p in zip(j.release, j.times, strict=True) if p < math.inf])
    n = sum(len(starts) - _first_slot(starts, r, rounded)
            for j in jobs for _, _, r, _ in _phases(j))
    return starts, lens, n


def _first_slot(starts: np.ndarray, release: float, rounded: bool) -> int:
    """The first slot a request released at ``release`` may work in: the first that starts
    at or after it, or (``rounded``) the one it falls in."""
    if rounded:
        return max(0, int(np.searchsorted(starts, release + 1e-9, side="right")) - 1)
    return int(np.searchsorted(starts, release - 1e-9))


def _span(jobs: list[LPJob], rel: list[float], horizon: float) -> float:
    """Seconds from each job's first release to the horizon, once per variable set of it
    (class and phase): what sets the grid's slot length for a budget of variables."""
    return sum(max(0.0, horizon - r) * len(_phases(j)) for j, r in zip(jobs, rel, strict=True))


def _phases(job: LPJob) -> list[tuple[int, float, float, int]]:
    """(class, seconds per unit share, release, phase) of each of ``job``'s variable sets:
    phase 1 the decode (or the whole request, with one phase), phase 0 the prefill."""
    out = [(i, p, r, 1) for i, (p, r) in enumerate(zip(job.times, job.release, strict=True))
           if p < math.inf]
    if job.pre is not None:
        out += [(i, p, r, 0) for i, (p, r) in enumerate(zip(job.pre, job.release, strict=True))
                if p < math.inf]
    return out


def dual_value(c: np.ndarray, a_ub: object, b_ub: np.ndarray, a_eq: object, b_eq: np.ndarray,
               lb: np.ndarray, ub: np.ndarray, lam: np.ndarray, y: np.ndarray) -> float:
    """Weak duality for ``min c x, A_ub x <= b_ub, A_eq x = b_eq, lb <= x <= ub`` (all
    bounds finite): for any ``lam <= 0`` and any ``y`` the value is a lower bound."""
    red = c - a_ub.T @ lam - a_eq.T @ y  # type: ignore[attr-defined]
    return float(b_ub @ lam + b_eq @ y + np.where(red > 0, red * lb, red * ub).sum())
