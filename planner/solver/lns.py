"""Large-neighbourhood search over layer splits (one CP-SAT model for the instance).

The split pool (every split per (model, device), see
:mod:`planner.solver.candidates`) is too large to hand to one CP-SAT model at
once: search degrades with the number of candidate engines. So the model starts
from a thinned working set, and each round rebuilds it around the current
solution: every configuration the solution uses, its neighbours on the pool's
curve at distance 1, 2, 4, ... (so intermediate splits are reached in a few
rounds), and the first working set (placement stays open). The new model is
warm-started from the current solution (matched by configuration) and its
solution replaces the current one when better. The radius grows when a round does not improve.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from planner.domain import EngineConfig
from planner.interrupt import stop_requested
from planner.solver.data import ProblemData, request_options
from planner.solver.model import CPModel, Frozen, Hint, SolveHooks, SolveParams, WindowSolution

RADII = (1, 2, 4, 8)
MIN_ROUND_S = 1.0
ROUND_SHARE = 0.2  # of the whole time limit, per round at most
#: once the split search has nothing new to add and CP-SAT has solved its model, rounds
#: give every engine up to this many more load periods than the plan uses (one more per
#: round): the model's other restriction. A plan whose engine is loaded as often as
#: the warm start's was could otherwise never swap more, however much time is left.
MAX_EXTRA_PERIODS = 3

Key = tuple[str, str, int, int, tuple[tuple[str, float], ...]]


def _key(cfg: EngineConfig) -> Key:
    return (cfg.model, cfg.device, cfg.n_gpu_layers, cfg.n_parallel, cfg.split)


def used_configs(data: ProblemData, sol: WindowSolution) -> list[EngineConfig]:
    eng = {e.key: e for e in data.engines}
    keys = {pc.engine for pieces in sol.runs.values() for pc in pieces}
    return [eng[k].cfg for k in sorted(keys)]


def neighbourhood(data: ProblemData, sol: WindowSolution, radius: int,
                  start: list[EngineConfig]) -> list[EngineConfig]:
    out: dict[Key, EngineConfig] = {_key(c): c for c in start}
    for cfg in used_configs(data, sol):
        out[_key(cfg)] = cfg
        curve = data.pool.get((cfg.model, cfg.device), [])
        # the pool's curves hold one-slot configurations; build() adds the slot variants
        idx = next((i for i, c in enumerate(curve)
                    if c.n_gpu_layers == cfg.n_gpu_layers and not cfg.split), None)
        if idx is None:
            continue
        for r in RADII:
            if r > radius:
                break
            for j in (idx - r, idx + r):
                if 0 <= j < len(curve):
                    out[_key(curve[j])] = curve[j]
    return list(out.values())


def remap_hint(sol: WindowSolution, old: ProblemData, new: ProblemData) -> Hint:
    """A hint for ``new`` from a solution of ``old`` (engines matched by configuration)."""
    old_cfg = {e.key: _key(e.cfg) for e in old.engines}
    new_key = {_key(e.cfg): e.key for e in new.engines}
    periods: dict[int, list[tuple[int, int]]] = {}
    for ek, ps in sol.periods.items():
        k2 = new_key.get(old_cfg[ek])
        if k2 is not None:
            periods[k2] = [(ls, us) for ls, _le, us, _ue, _c in ps]
    runs: dict[str, tuple[int, int, int]] = {}
    for rid, pieces in sol.runs.items():
        if len(pieces) == 1:
            k2 = new_key.get(old_cfg[pieces[0].engine])
            if k2 is not None:
                runs[rid] = (k2, pieces[0].period, pieces[0].start)
    return Hint(periods, runs)


def refine_splits(data: ProblemData, sol: WindowSolution, objective: str, periods: int,
                  horizon: int, build: Callable[[list[EngineConfig]], ProblemData],
                  splits: Callable[[ProblemData], frozenset[str]], params: SolveParams,
                  deadline: float,
                  reached: Callable[[ProblemData, WindowSolution], bool] | None = None,
                  ) -> tuple[ProblemData, WindowSolution, int, int]:
    """Rounds until ``deadline`` (perf_counter); returns (data, solution, rounds, better).
    ``reached``: whether a solution's plan reaches the instance's bound (the rounds end
    there: no configuration can do better)."""
    rounds = better = 0
    if reached is not None and reached(data, sol):
        return data, sol, rounds, better
    ri = 0
    extra = 0  # load periods per engine beyond what the current plan uses
    start = [e.cfg for e in data.engines]
    stop = params.hooks.stop if params.hooks is not None else None
    # a round's model reaches its first solution (the hint) no sooner than the first model
    # did, in proportion to its options: a round without twice that time ends in CP-SAT's
    # presolve or at the hint (292 requests on four GPUs: three rounds of 2-6 s, each
    # "stopped after presolve"). The rounds end there, and the polish after them has the
    # time; a round that found nothing at all raises what the next one needs to its share.
    per_option = (sol.first_s or 0.0) / max(1, request_options(data))
    while deadline - time.perf_counter() > MIN_ROUND_S and not stop_requested(stop):
        ri %= len(RADII)
        configs = neighbourhood(data, sol, RADII[ri], start)
        if {_key(c) for c in configs} <= {_key(e.cfg) for e in data.engines}:
            if ri + 1 < len(RADII):
                ri += 1
                continue
            if sol.status == "OPTIMAL":
                # no configuration left to add and this model is solved: what still
                # restricts it is how often each engine may be loaded (its periods)
                if extra >= MAX_EXTRA_PERIODS:
                    break
                extra += 1
        new = build(configs)
        need = per_option * request_options(new)
        left = deadline - time.perf_counter()
        if left <= max(MIN_ROUND_S, 2.0 * need):
            break
        hint = remap_hint(sol, data, new)
        n_periods = {e.key: periods + extra for e in new.engines}
        for ek, ps in hint.periods.items():
            n_periods[ek] = max(n_periods[ek], len(ps) + extra)
        reqs = sorted(new.requests, key=lambda rd: (rd.arrival, rd.req.id))
        cp = CPModel(new, reqs, objective, n_periods, Frozen(), horizon, splits(new))
        cp.add_hint(hint)
        left = deadline - time.perf_counter()
        share = min(left, max(MIN_ROUND_S, 2.0 * need, ROUND_SHARE * params.time_limit_s))
        # a stop request is honoured; progress plans come from the first model only
        hooks = SolveHooks(None, params.hooks.stop) if params.hooks is not None else None
        got = cp.solve(SolveParams(share, params.workers, params.seed + rounds + 1, params.log,
                                   hooks))
        rounds += 1
        if got is not None and got.status != "INFEASIBLE" and got.objective < sol.objective - 1e-9:
            data, sol = new, got
            better += 1
            ri = 0
            if reached is not None and reached(data, sol):
                break
        else:
            ri += 1
            if got is None:  # no solution at all in its share: the next needs more
                per_option = max(per_option, share / max(1, request_options(new)))
    return data, sol, rounds, better
