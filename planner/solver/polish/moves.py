"""Single moves of the polish: one request's run put in its best place, after an action of
an engine of its model or in a period of its own, and the helpers the other moves share
(engines the plan does not have yet, the runs that may move, periods left empty)."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import replace

from planner.costmodel.base import CostModel
from planner.domain import Action, Engine, EngineConfig, Instance, Schedule
from planner.executor.deps import Spans, spans_of
from planner.solver.polish.timing import Prefix, Score, first_valid


def new_engines(instance: Instance, cost: CostModel, schedule: Schedule,
                extra: Sequence[EngineConfig]) -> tuple[Engine, ...]:
    """Engines for the configurations of ``extra`` the plan does not have, with ids
    it does not use."""
    have = {(e.model, e.device, e.n_gpu_layers, e.n_ctx) for e in schedule.engines
            if not e.shares and e.n_parallel == 1}
    ids = {e.id for e in schedule.engines}
    out: list[Engine] = []
    for cfg in extra:
        k = (cfg.model, cfg.device, cfg.n_gpu_layers, cfg.n_ctx)
        if k in have or cfg.split or cfg.n_parallel != 1:
            continue
        have.add(k)
        n = len(ids) + 1
        while f"x{n}" in ids:
            n += 1
        ids.add(f"x{n}")
        gpu = instance.cluster.device(cfg.device).kind == "gpu"
        out.append(Engine(f"x{n}", cfg.model, cfg.device, cfg.n_gpu_layers, cfg.n_ctx,
                          cost.gpu_bytes(cfg) if gpu else 0, cost.host_bytes(cfg)))
    return tuple(out)


def best_move(instance: Instance, cost: CostModel, schedule: Schedule,
              order: list[Action], at: int, by_model: dict[str, list[Engine]],
              arrival: dict[str, float], score: Score, best_key: tuple[float, ...],
              deadline: float
              ) -> tuple[list[Action], tuple[float, ...]] | None:
    """The best place for ``order[at]`` (a whole run) that beats ``best_key``."""
    run = order[at]
    rest = order[:at] + order[at + 1:]
    mine = [a for a in order if a.engine == run.engine]
    k = next(i for i, a in enumerate(mine) if a is run)
    alone = 0 < k < len(mine) - 1 and mine[k - 1].kind == "load" and \
        mine[k + 1].kind == "unload"
    cands = placements(instance, cost, rest, run, by_model, arrival, score, best_key,
                       deadline, skip=at - 1, spans=spans_of(schedule),
                       until=None if alone else run.end_s)
    return first_valid(instance, schedule, arrival, cands)


def placements(instance: Instance, cost: CostModel, rest: list[Action], run: Action,
               by_model: dict[str, list[Engine]], arrival: dict[str, float],
               score: Score, bar: tuple[float, ...], deadline: float, skip: int = -2,
               spans: Spans | None = None, until: float | None = None
               ) -> list[tuple[tuple[float, ...], list[Action]]]:
    """``rest`` with ``run`` (a whole run, taken out of it) put back in places it may go
    whose keys beat ``bar``, with the keys, best first: the best of them all, and the others
    timed before the bounds showed that none left could beat it (``Prefix.run_bounds``);
    ``skip``: the index it came from (after that action, on its own engine, is its own
    place)."""
    assert run.request is not None
    req = instance.request(run.request)
    model = next(e.model for es in by_model.values() for e in es if e.id == run.engine)
    # every place is ``rest`` (or, where the run leaves its period empty, ``rest`` without
    # that period: ``base``) with actions put in, so timed from its change and bounded
    # (Prefix); with a lower bound on its key (Prefix.run_bounds), then timed best bound
    # first until the bounds show that no place left can beat the best so far
    base = drop_empty(rest, run.engine)
    timing: dict[bool, Prefix] = {}  # on rest (True) and on base (False), as needed
    shift = [0] * len(rest)  # actions of rest up to each that base lacks
    kept: set[int] = set()
    if base is not rest:
        kept = {id(a) for a in base}
        shift = list(itertools.accumulate(id(a) not in kept for a in rest))

    def prefix(keep: bool) -> Prefix:
        got = timing.get(keep)
        if got is None:
            got = timing[keep] = Prefix(rest if keep else base, arrival, spans)
        return got

    places: list[tuple[tuple[float, ...], int, tuple[bool, int], tuple[Action, ...]]] = []
    # an engine's places, bounded together: (in rest, actions put in) -> where, when the
    # run may start besides its lane and arrival, the place's number
    pending: dict[tuple[bool, int], tuple[list[int], list[float], list[int]]] = {}
    count = itertools.count()

    def place(j: int, keep: bool, load_s: float | None = None) -> None:
        """After rest[j], in rest (``keep``) or in base: the run (waiting for rest[j], an
        action of its engine), or (``load_s``) a period of its own (the run waiting for
        its load, which waits for the unload at rest[j] where the list has it)."""
        at = j if keep or j < 0 else j - shift[j]
        if load_s is None:
            ready = prefix(keep).end[at]
        else:
            unload = j >= 0 and rest[j].kind == "unload" and (keep or id(rest[j]) in kept)
            ready = load_s + (prefix(keep).end[at] if unload else 0.0)
        group = pending.setdefault((keep, 1 if load_s is None else 3), ([], [], []))
        group[0].append(at)
        group[1].append(ready)
        group[2].append(next(count))

    def bound_pending(moved: Action, puts: dict[int, tuple[Action, ...]]) -> None:
        for (keep, n), (ats, ready, numbers) in pending.items():
            got = prefix(keep).run_bounds(score, ats, moved, ready) or [_UNKNOWN] * len(ats)
            places.extend((b, i, (keep, at), puts[n])
                          for b, i, at in zip(got, numbers, ats, strict=True))
        pending.clear()

    for e in by_model.get(model, []):
        if req.total_tokens > e.n_ctx:
            continue
        if e.id == run.engine:
            moved = run
        else:
            dur = cost.run_s(e.config, req.prompt_tokens, 0, req.output_tokens)
            moved = replace(run, engine=e.id, device=e.device, start_s=0.0, end_s=dur)
        for j, x in enumerate(rest):
            if x.engine != e.id or x.kind not in ("load", "run"):
                continue
            if e.id == run.engine and j == skip:
                continue  # its own place
            if until is not None and x.end_s >= until:
                continue  # it would end later than it does now
            nxt = _next_on(rest, j, e.id)
            if nxt is not None and rest[nxt].kind == "unload" and \
                    rest[nxt].end_s < arrival[req.id]:
                continue  # the engine is gone before the request arrives
            # after rest[j], an action of its engine; after the load of the period it
            # left, that period stays (rest), elsewhere it goes (base)
            place(j, base is rest or id(x) not in kept)
        # or a period of its own: e loaded for it where its device's lane frees memory
        # (after an unload) or ends, when e is not resident there
        load = Action("load", e.id, e.device, 0.0, cost.load_s(e.config))
        unload = Action("unload", e.id, e.device, 0.0, cost.unload_s(e.config))
        for j in period_slots(rest, e):
            if until is not None and j >= 0 and rest[j].end_s >= until:
                continue
            place(j, base is rest, load.end_s)
        bound_pending(moved, {1: (moved,), 3: (load, moved, unload)})
    places.sort(key=lambda p: p[0])
    best = bar
    cands: list[tuple[tuple[float, ...], int, list[Action]]] = []
    for bound, i, (keep, j), put in places:
        if time.perf_counter() >= deadline or _beyond(bound, best):
            break  # (sorted by bound: no place after it can beat the best either)
        pre = timing[keep]
        cand = [*pre.rest[:j + 1], *put, *pre.rest[j + 1:]]
        key = pre.key(score, cand, j + 1, inserted=len(put))
        if key < bar:
            cands.append((key, i, cand))
            best = min(best, key)
    cands.sort(key=lambda c: (c[0], c[1]))  # equal keys in the order of the places
    return [(key, cand) for key, _i, cand in cands]


#: the bound of a place whose key has none
_UNKNOWN = (-math.inf, -math.inf)


def _beyond(bound: tuple[float, ...], bar: tuple[float, ...]) -> bool:
    """Whether a candidate whose key is at least ``bound`` cannot beat ``bar`` (with room
    for the float error of the bound's running sums)."""
    if bound[0] != bar[0]:
        return bound[0] > bar[0]
    return bound[1] > bar[1] + 1e-9 * max(1.0, abs(bar[1]))


def period_slots(actions: list[Action], engine: Engine) -> list[int]:
    """Indices after which a new period of ``engine`` may start: an unload on its device,
    or the device's last action (-1: a device with none), where the engine is not
    loaded."""
    out: list[int] = []
    resident = False
    last = -1
    for j, a in enumerate(actions):
        if a.engine == engine.id:
            resident = a.kind != "unload"
        if a.device == engine.device:
            last = j
            if a.kind == "unload" and not resident:
                out.append(j)
    if not resident and last not in out:
        out.append(last)
    return out


def by_request(actions: list[Action]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Per request, the indices of its runs and of its other actions (KV copies), in
    plan order."""
    runs: dict[str, list[int]] = {}
    copies: dict[str, list[int]] = {}
    for i, a in enumerate(actions):
        if a.request is not None:
            (runs if a.kind == "run" else copies).setdefault(a.request, []).append(i)
    return runs, copies


def movable_runs(order: list[Action], by_model: dict[str, list[Engine]],
                 paused: bool = False) -> dict[str, Action]:
    """Request -> its run, for requests served by one run on an engine of one device
    and no KV copy (a preempted request stays as it is). ``paused``: also requests
    paused on one such engine (its runs there, with KV copies between, none
    recomputed), each as one whole run from its first run's start (the runs' seconds
    added: the same tokens at the same contexts), so that a ruin may take a pause back."""
    run_at, copies = by_request(order)
    one = {e.id for es in by_model.values() for e in es}
    out: dict[str, Action] = {}
    for q, ix in run_at.items():
        rs = [order[i] for i in ix]
        if rs[0].engine not in one:
            continue
        if len(rs) == 1 and q not in copies:
            out[q] = rs[0]
        elif paused and len(rs) > 1 and all(
                a.engine == rs[0].engine and not a.recompute for a in rs) and \
                all(order[c].engine == rs[0].engine for c in copies.get(q, [])):
            out[q] = replace(rs[0], tokens_to=rs[-1].tokens_to, end_s=rs[0].start_s + sum(
                a.end_s - a.start_s for a in rs))
    return out


def drop_empty(actions: list[Action], engine: str) -> list[Action]:
    """``actions`` without ``engine``'s loads that are followed (on the engine) by its
    unload with nothing between: a period that no longer serves anything."""
    mine = [i for i, a in enumerate(actions) if a.engine == engine]
    drop = {k for i, j in itertools.pairwise(mine)
            if actions[i].kind == "load" and actions[j].kind == "unload" for k in (i, j)}
    return [a for i, a in enumerate(actions) if i not in drop] if drop else actions


def _next_on(actions: list[Action], j: int, engine: str) -> int | None:
    for k in range(j + 1, len(actions)):
        if actions[k].engine == engine:
            return k
    return None
