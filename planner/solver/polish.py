"""Polish: local moves on a finished plan, each kept only when the plan gets better.

CP-SAT's plan at the time limit is often not locally optimal: on a one-GPU workload
with heavy-tailed lengths (``1gpu-5models-pareto``, seed 2) its GPU idled for 10 s with
the 14B model resident and four of its requests waiting, which then waited 70 s more
for the model's next load. A move takes one request's run out of its place and puts
it right after another action of an engine of the same model (a load or a run, so
the engine is resident there), on the same engine or another one (its duration then
comes from the cost model for that engine), or into a period of its own: an engine of
its model loaded for it where its device's transfer lane frees memory (after an
unload) or ends, and unloaded after it. That engine may be one the plan does not
have yet (``extra``: e.g. the fastest split of the model on a GPU the plan never gave
it, so that a request waiting for a busy fast GPU can run on an idle one). The plan
is then *compacted*: every action starts as soon as the actions it waits for end (the
previous one in its lane, on its engine and of its request, as the executor
dispatches them; runs not before their arrival), keeping each lane's, engine's and
request's order. A move is kept when the objective improves, the executor would wait
for the same actions (plan order = the order moved to) and the plan checker accepts
it (the checker shares no code with this module; memory, residency and lanes are its
to judge).

When no single move helps, several runs move at once (*ruin and recreate*): a costly
request and runs of one device that overlap its stay are taken out and put back one
by one, each in its best place; the result is kept when the whole plan is better.

Moves only touch requests served by one run on an engine of one device, and ruins also
requests paused on one engine (preempted requests otherwise, and engines split over
GPUs, keep their places); a plan with slot engines is left as it is (their runs'
durations depend on what runs beside them).
Best-improvement over the requests that cost the objective most first, then ruins:
the listed ones (the costliest requests with the runs nearest their arrival; then the
runs of each period of an engine, and of each two periods in a row on a device, so
that a period can move whole or two can trade places), then
random ones (a request drawn by its weighted response, 2 to 24 runs of a random device
near a random instant of its stay, put back by arrival or in random order), until
``RANDOM_STALL`` random ruins per movable request in a row failed or the deadline
passes. Once ``PAUSE_WAIT`` random ruins per movable request in a row failed, *pauses*
are tried on each new plan: a request runs until a heavier one arrives, which runs on the
same device (on its engine, with the state saved and restored or recomputed; on an
engine resident beside it, nothing copied; or, on a GPU, with the paused engine unloaded
and the other's loaded for it and the requests of its model that arrive meanwhile, then
back), then the paused one goes on. A ruin may take a pause back (it puts the request
back whole). With preemption off (``pauses=False``) no pause is added.

A paused request whose first part ends before its device's next run could start (a
move started it sooner than its pause was timed for) makes more tokens before the pause
(``_fills``), when that pays.

Two clean-ups are kept at an equal objective too, since they only spare the machine
work: an engine unloaded and loaded again with nothing of it between stays loaded, and a
request's state saved and restored on one engine with nothing else on it between is not
saved (its two runs become one).
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

from planner.checker import check_plan
from planner.costmodel.base import CostModel
from planner.domain import Action, Engine, EngineConfig, Instance, Schedule
from planner.executor.deps import (
    Ends,
    Spans,
    dependencies,
    earliest_times,
    plan_order,
    same_dependencies,
    spans_of,
)
from planner.metrics import compute_metrics, objective_key
from planner.solver.preempt import MIN_PART

PREFIX_STRIDE = 16  # a candidate is timed from at most this many actions before its change
RUIN_SEEDS = 10  # a ruin starts from one of this many costliest requests
RUIN_SIZE = 8  # runs of one device taken out with it, at most
#: once every listed ruin failed, random ones until the deadline: up to this many runs
#: of one device taken out with the request (RUIN_SIZE times 3)
RANDOM_RUIN_SIZE = 3 * RUIN_SIZE
RANDOM_RUINS = True  # off in a test only, to show what they add
#: random ruins stop after this many in a row failed, per request the plan can move
#: (plus one): a small plan is done in moments, a large one goes on to the deadline
RANDOM_STALL = 10
PAUSES = True  # pauses (off in a test only, to show what they add)
#: pauses are tried once this many random ruins per movable request failed in a row (a
#: pause fixes two requests in place; tried earlier, its small gains blocked the ruins'
#: bigger ones on some plans)
PAUSE_WAIT = 1
PERIOD_RUINS = True  # the runs of each period (and of two in a row) as ruins; off in a test
RESPLITS = True  # a pause timed too early made longer (_fills); off in a test


def compact(actions: list[Action], arrival: dict[str, float],
            spans: Spans | None = None) -> list[Action] | None:
    """``actions`` (in the order the executor should see them; no slot engines) at their
    earliest times with their durations, in plan order; None when the executor, reading
    them in plan order, would wait for other actions. ``spans``: the devices of engines
    split over GPUs (:func:`planner.executor.deps.spans_of`)."""
    start, end = earliest_times(actions, arrival, spans=spans)
    out = [replace(a, start_s=round(s, 6), end_s=round(e, 6))
           for a, s, e in zip(actions, start, end, strict=True)]
    timed = Schedule((), tuple(out))
    order = plan_order(timed)
    if order == out:
        return out
    return order if same_dependencies(out, dependencies(out, spans=spans), timed,
                                      spans=spans) else None


class _Score:
    """The objective's sort key of a plan from its actions' end times (rounded: a move is
    kept for a real gain, not for float noise in the same times)."""

    def __init__(self, instance: Instance, objective: str) -> None:
        self.instance = instance
        self.objective = objective
        self.weight = {r.id: r.weight for r in instance.requests}
        self.arrival = {r.id: r.arrival_s for r in instance.requests}

    def __call__(self, actions: list[Action], end: list[float]) -> tuple[float, ...]:
        done: dict[str, float] = {}
        for a, e in zip(actions, end, strict=True):
            if a.kind == "run" and a.request is not None:
                done[a.request] = max(done.get(a.request, e), e)
        key: tuple[float, ...]
        if self.objective == "mean_response":  # objective_key's, directly
            w = self.weight
            total = sum(w[q] for q in done)
            mean = sum(w[q] * (e - self.arrival[q]) for q, e in done.items()) / total \
                if total else 0.0
            key = (float(len(self.instance.requests) - len(done)), mean)
        else:
            key = objective_key(compute_metrics(self.instance, (), done), self.objective)
        return tuple(round(x, 9) for x in key)


class _Prefix:
    """Earliest times of ``rest`` (a plan less the run being moved) and the waiting state
    before every PREFIX_STRIDE-th of its actions, so that a candidate (``rest`` changed
    from index k on) is timed from the last kept state at or before k only."""

    def __init__(self, rest: list[Action], arrival: dict[str, float],
                 spans: Spans | None = None) -> None:
        self.rest = rest
        self.arrival = arrival
        self.spans = spans
        self.states: list[Ends] = []
        ends = Ends()
        self.end: list[float] = []
        for i in range(0, len(rest), PREFIX_STRIDE):
            self.states.append(ends.copy())
            self.end += earliest_times(rest[i:i + PREFIX_STRIDE], arrival, ends, spans)[1]
        self.states.append(ends)

    def ends_of(self, cand: list[Action]) -> list[float]:
        k = 0
        n = min(len(cand), len(self.rest))
        while k < n and cand[k] is self.rest[k]:
            k += 1
        base = k // PREFIX_STRIDE  # cand[:k] is rest's: its times are known
        k = base * PREFIX_STRIDE
        return self.end[:k] + earliest_times(cand[k:], self.arrival,
                                             self.states[base].copy(), self.spans)[1]

    def state_at(self, k: int) -> Ends:
        """The waiting state before ``rest[k]`` (a copy of its own)."""
        base = k // PREFIX_STRIDE
        ends = self.states[base].copy()
        earliest_times(self.rest[base * PREFIX_STRIDE:k], self.arrival, ends, self.spans)
        return ends


def polish(instance: Instance, cost: CostModel, schedule: Schedule, objective: str,
           deadline: float, extra: Sequence[EngineConfig] = (), pauses: bool = True
           ) -> tuple[Schedule, int]:
    """(the polished plan, moves kept); ``schedule`` itself when nothing helped.

    ``extra``: engine configurations (one device, one slot) a run may also move to, in
    a period of its own; those the plan already has are skipped, those used join the
    plan's engines. ``pauses``: whether pauses may be added (off with preemption off).
    """
    if any(e.n_parallel > 1 for e in schedule.engines):
        # a slot engine's runs last longer side by side (planner.slots): moving or
        # compacting them would keep durations that no longer hold
        return schedule, 0
    score = _Score(instance, objective)
    arrival, weight = score.arrival, score.weight
    declared = schedule
    schedule = replace(schedule, engines=schedule.engines
                       + _new_engines(instance, cost, schedule, extra))
    by_model: dict[str, list[Engine]] = {}
    for e in schedule.engines:
        if not e.shares:
            by_model.setdefault(e.model, []).append(e)
    engines = {e.id: e for e in schedule.engines}
    order = plan_order(schedule)
    best_key = score(list(schedule.actions), [a.end_s for a in schedule.actions])
    changed = False
    spans = spans_of(schedule)
    key = score(order, earliest_times(order, arrival, spans=spans)[1])
    got = _first_valid(instance, schedule, arrival, [(key, order)] if key < best_key else [])
    if got is not None:  # the plan as it is, at earliest times
        order = got[0]
        best_key = score(order, [a.end_s for a in order])
        changed = True
    kept = 0
    improved = True
    ruins: Iterator[tuple[str, list[str]]] | None = None
    paused_on: list[Action] | None = None  # the plan the pauses were last tried on
    relist = True
    rng = random.Random(0)  # the random ruins: the same plan polishes the same way
    stalled = 0  # random ruins in a row that failed
    while time.perf_counter() < deadline:
        if not improved:  # no one move helps: several at once (ruin and recreate)
            ruins = ruins or _ruins(order, by_model, score)
            ruin = next(ruins, None)
            paused = None
            # what a random ruin may take, once every listed ruin failed on this plan
            takeable = _movable(order, by_model, paused=True) if ruin is None else {}
            if ruin is None and pauses and PAUSES and paused_on is not order and \
                    stalled >= PAUSE_WAIT * len(takeable):
                # the listed ruins failed on this plan, and random ones for a while: a
                # pause? (a kept one leaves the count of failed random ruins as it is)
                paused_on = order
                paused = _pause_moves(instance, cost, schedule, order, by_model, score,
                                      best_key, deadline)
            if paused is not None:
                order, best_key = paused
                kept += 1
                relist = False  # the listed ruins just failed: not again for a pause
            else:
                shuffle = None
                drawn = ruin is None  # every listed ruin failed on this plan: random ones
                if ruin is None and RANDOM_RUINS and \
                        stalled < RANDOM_STALL * (1 + len(takeable)):
                    ruin = _random_ruin(takeable, score, rng)
                    shuffle = rng if rng.random() < 0.5 else None
                if ruin is None:
                    break  # nothing left to try
                q, victims = ruin
                got = _ruin_recreate(instance, cost, schedule, order, by_model, score,
                                     best_key, q, victims, deadline, shuffle)
                if got is None:
                    stalled += drawn
                    continue
                stalled = 0
                order, best_key = got
                kept += 1 + len(victims)
        if relist:  # the next ruins start from the plan as the moves leave it
            ruins = None
        relist = True
        improved = False
        movable = _movable(order, by_model)
        for q in sorted(movable, key=lambda q: -weight[q] * (movable[q].end_s - arrival[q])):
            if time.perf_counter() >= deadline:
                break
            at = next(i for i, a in enumerate(order) if a.kind == "run" and a.request == q)
            got = _best_move(instance, cost, schedule, order, at, by_model, arrival,
                             score, best_key, deadline)
            if got is not None:
                order, best_key = got
                kept += 1
                improved = True
        # at an equal objective too: a reload or a KV copy that serves nothing only costs
        # the machine (each one kept makes the plan shorter); a pause's first part made
        # longer, for a gain only
        cleans = [(c, True) for c in [*_unsplits(order), *_stay_resident(order)]]
        if RESPLITS:
            cleans += [(c, False) for c in _fills(instance, cost, order, engines)]
        for cand, even in cleans:
            if time.perf_counter() >= deadline:
                break
            key = score(cand, earliest_times(cand, arrival, spans=spans)[1])
            got = _first_valid(instance, schedule, arrival, [(key, cand)] if key < best_key
                               or (even and key == best_key) else [])
            if got is not None:
                order, best_key = got
                kept += 1
                improved = True
                break  # indices moved
    if not kept and not changed:
        return declared, 0
    used = {a.engine for a in order}
    out = replace(schedule, actions=tuple(order),
                  engines=tuple(e for e in schedule.engines
                                if e in declared.engines or e.id in used))
    if check_plan(instance, out):  # each kept move passed it; this is the final word
        return declared, 0
    return out, kept


def _new_engines(instance: Instance, cost: CostModel, schedule: Schedule,
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


def _best_move(instance: Instance, cost: CostModel, schedule: Schedule,
               order: list[Action], at: int, by_model: dict[str, list[Engine]],
               arrival: dict[str, float], score: _Score, best_key: tuple[float, ...],
               deadline: float
               ) -> tuple[list[Action], tuple[float, ...]] | None:
    """The best place for ``order[at]`` (a whole run) that beats ``best_key``."""
    run = order[at]
    rest = order[:at] + order[at + 1:]
    mine = [a for a in order if a.engine == run.engine]
    k = next(i for i, a in enumerate(mine) if a is run)
    alone = 0 < k < len(mine) - 1 and mine[k - 1].kind == "load" and \
        mine[k + 1].kind == "unload"
    cands = _placements(instance, cost, rest, run, by_model, arrival, score, best_key,
                        deadline, skip=at - 1, spans=spans_of(schedule),
                        until=None if alone else run.end_s)
    return _first_valid(instance, schedule, arrival, cands)


def _pause_moves(instance: Instance, cost: CostModel, schedule: Schedule,
                 order: list[Action], by_model: dict[str, list[Engine]], score: _Score,
                 best_key: tuple[float, ...], deadline: float
                 ) -> tuple[list[Action], tuple[float, ...]] | None:
    """The best pause that beats ``best_key``: a request ``q`` runs until a heavier
    request ``x`` arrives (the tokens it has by then at its engine's speed), ``x`` runs
    on an engine of its model on the same device, then ``q``'s rest. On ``q``'s own
    engine its state is handed over, both ways tried: a KV save and restore (the save
    delays ``x``) or the rest recomputed (that delays ``q`` only); on another engine
    (another model's, or another split of the model, resident beside it: the checker
    judges) ``q``'s engine keeps the state and nothing is copied; or, on a GPU, in place
    of ``q``'s engine (unloaded, ``x``'s loaded, ``x`` alone or with the requests of its
    model that arrive meanwhile, unloaded, ``q``'s loaded again, the state saved and
    restored or recomputed). Both requests are taken out of their places and put back
    where the first of them was. Only pairs where ``x`` arrives after ``q`` and before
    both are done, and ``x`` is heavier (weight per second of its run there), are
    tried."""
    arrival, weight = score.arrival, score.weight
    spans = spans_of(schedule)
    movable = _movable(order, by_model)
    engines = {e.id: e for es in by_model.values() for e in es}
    index = {id(a): i for i, a in enumerate(order)}
    prefix = _Prefix(order, arrival, spans)  # the pair goes in at j: order[:j] stays
    gpu = {d.id: d.kind == "gpu" for d in instance.cluster.devices}
    cands: list[tuple[tuple[float, ...], list[Action]]] = []
    for q, run in movable.items():
        e = engines[run.engine]
        rq = instance.request(q)
        out = rq.output_tokens
        if out < 2 * MIN_PART:
            continue
        ratio_q = weight[q] / max(run.end_s - run.start_s, 1e-9)
        for x, xrun in movable.items():
            ax = arrival[x]
            if x == q or not arrival[q] < ax < max(run.end_s, xrun.end_s):
                continue  # x arrives before q, or after both are done
            if time.perf_counter() >= deadline:
                break
            rx = instance.request(x)
            j = min(index[id(run)], index[id(xrun)])  # where the first of them was
            k: int | None = -1
            for e2 in by_model.get(rx.model, []):
                if e2.device != e.device or rx.total_tokens > e2.n_ctx:
                    continue
                dx = (xrun.end_s - xrun.start_s) if xrun.engine == e2.id else \
                    cost.run_s(e2.config, rx.prompt_tokens, 0, rx.output_tokens)
                if weight[x] / max(dx, 1e-9) <= ratio_q:
                    continue
                if k == -1:  # q's tokens when x arrives, were q to start here
                    state = prefix.state_at(j)
                    s1 = earliest_times([run], arrival, state.copy(), spans)[0][0]
                    k = _tokens_by(cost, e.config, rq.prompt_tokens, out, ax - s1)
                    after = [a for a in order[j:] if a is not run and a is not xrun]
                if k is None or k < 0:
                    break
                r1 = replace(run, tokens_to=k, start_s=0.0,
                             end_s=cost.run_s(e.config, rq.prompt_tokens, 0, k))
                moved = replace(xrun, engine=e2.id, device=e2.device, start_s=0.0, end_s=dx)
                r2 = replace(run, tokens_from=k, start_s=0.0,
                             end_s=cost.run_s(e.config, rq.prompt_tokens, k, out))
                ctx = rq.prompt_tokens + k
                b = cost.kv_bytes(e.config, ctx)
                save = Action("kv_save", e.id, e.device, 0.0,
                              cost.kv_save_s(e.config, ctx), q, bytes=b)
                restore = Action("kv_restore", e.id, e.device, 0.0,
                                 cost.kv_restore_s(e.config, ctx), q, bytes=b)
                again = replace(r2, recompute=True, end_s=cost.run_s(
                    e.config, rq.prompt_tokens, k, out, recompute=True))
                # each variant: the actions between q's two parts, and the other
                # requests it serves (their old runs go)
                mids: list[tuple[list[Action], list[str]]]
                if e2.id == e.id:
                    mids = [([save, moved, restore, r2], []), ([moved, again], [])]
                else:
                    mids = [([moved, r2], [])]  # beside q's engine, which keeps the state
                    if gpu[e.device]:  # or swapped for x's: unloaded, x, loaded again
                        # (with x, its model's requests that arrive while x's engine
                        # loads and runs it, as a variant: a swap rarely pays for one)
                        swap = [Action("unload", e.id, e.device, 0.0,
                                       cost.unload_s(e.config)),
                                Action("load", e2.id, e2.device, 0.0, cost.load_s(e2.config))]
                        back = [Action("unload", e2.id, e2.device, 0.0,
                                       cost.unload_s(e2.config)),
                                Action("load", e.id, e.device, 0.0, cost.load_s(e.config))]
                        until = ax + swap[0].end_s + swap[1].end_s + dx
                        others = _joining(instance, cost, movable, e2, x, q, ax, until)
                        more = [replace(movable[y], engine=e2.id, device=e2.device,
                                        start_s=0.0, end_s=dur) for y, dur in others]
                        variants: list[tuple[list[Action], list[str]]] = [([moved], [])]
                        if others:
                            variants.append(([moved, *more], [y for y, _ in others]))
                        for served, gone in variants:
                            off = [*swap, *served, *back]
                            mids += [([save, *off, restore, r2], gone), ([*off, again], gone)]
                for mid, gone in mids:
                    cand = [*order[:j], r1, *mid, *after]
                    if gone:
                        taken = {id(movable[y]) for y in gone}
                        cand = [a for a in cand if id(a) not in taken]  # their old runs go
                        for y in gone:
                            cand = _drop_empty(cand, movable[y].engine)
                    cand = _drop_empty(cand, xrun.engine)
                    if all(a is b for a, b in zip(cand[:j], order[:j], strict=True)):
                        ends = prefix.end[:j] + earliest_times(cand[j:], arrival,
                                                               state.copy(), spans)[1]
                    else:  # x's emptied period began before j
                        ends = earliest_times(cand, arrival, spans=spans)[1]
                    key = score(cand, ends)
                    if key < best_key:
                        cands.append((key, cand))
    return _first_valid(instance, schedule, arrival, cands)


def _joining(instance: Instance, cost: CostModel, movable: dict[str, Action], e2: Engine,
             x: str, q: str, ax: float, until: float) -> list[tuple[str, float]]:
    """(request, seconds of its run on ``e2``) of the movable requests of ``e2``'s model
    (not ``x`` or ``q``) that arrive in ``[ax, until]``, by arrival: the requests a swap
    to ``e2`` for ``x`` may serve too."""
    out: list[tuple[str, float]] = []
    for y in sorted(movable, key=lambda y: (instance.request(y).arrival_s, y)):
        ry, run = instance.request(y), movable[y]
        if y in (x, q) or ry.model != e2.model or not ax <= ry.arrival_s <= until or \
                ry.total_tokens > e2.n_ctx:
            continue
        out.append((y, run.end_s - run.start_s if run.engine == e2.id else
                    cost.run_s(e2.config, ry.prompt_tokens, 0, ry.output_tokens)))
    return out


def _tokens_by(cost: CostModel, cfg: EngineConfig, prompt: int, out: int, seconds: float
               ) -> int | None:
    """The most output tokens a run from token 0 has made within ``seconds`` (its
    prefill first), when that leaves at least MIN_PART (as CP-SAT's split points) on both
    sides."""
    lo, hi = MIN_PART, out - MIN_PART
    seconds += 1e-9  # float sums of per-token times: 30 tokens at 0.1 s end at 3 s
    if hi < lo or cost.run_s(cfg, prompt, 0, lo) > seconds:
        return None
    while lo < hi:  # the largest k in [lo, hi] whose run fits
        mid = (lo + hi + 1) // 2
        if cost.run_s(cfg, prompt, 0, mid) <= seconds:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _placements(instance: Instance, cost: CostModel, rest: list[Action], run: Action,
                by_model: dict[str, list[Engine]], arrival: dict[str, float],
                score: _Score, bar: tuple[float, ...], deadline: float, skip: int = -2,
                spans: Spans | None = None, until: float | None = None
                ) -> list[tuple[tuple[float, ...], list[Action]]]:
    """``rest`` with ``run`` (a whole run, taken out of it) put back in each place it may
    go whose key beats ``bar``, with the keys; ``skip``: the index it came from (after
    that action, on its own engine, is its own place)."""
    assert run.request is not None
    req = instance.request(run.request)
    model = next(e.model for es in by_model.values() for e in es if e.id == run.engine)
    prefix = _Prefix(rest, arrival, spans)
    cands: list[tuple[tuple[float, ...], list[Action]]] = []
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
            if time.perf_counter() >= deadline:
                break
            cand = _drop_empty([*rest[:j + 1], moved, *rest[j + 1:]], run.engine)
            key = score(cand, prefix.ends_of(cand))
            if key < bar:
                cands.append((key, cand))
        # or a period of its own: e loaded for it where its device's lane frees memory
        # (after an unload) or ends, when e is not resident there
        load = Action("load", e.id, e.device, 0.0, cost.load_s(e.config))
        unload = Action("unload", e.id, e.device, 0.0, cost.unload_s(e.config))
        for j in _period_slots(rest, e):
            if until is not None and j >= 0 and rest[j].end_s >= until:
                continue
            if time.perf_counter() >= deadline:
                break
            cand = _drop_empty([*rest[:j + 1], load, moved, unload, *rest[j + 1:]],
                               run.engine)
            key = score(cand, prefix.ends_of(cand))
            if key < bar:
                cands.append((key, cand))
    return cands


def _period_slots(actions: list[Action], engine: Engine) -> list[int]:
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


def _first_valid(instance: Instance, schedule: Schedule, arrival: dict[str, float],
                 scored: list[tuple[tuple[float, ...], list[Action]]], partial: bool = False
                 ) -> tuple[list[Action], tuple[float, ...]] | None:
    """The best-keyed of ``scored`` (key, order of ``schedule``'s actions) that compacts
    without changing what the executor waits for and passes the checker, compacted.
    ``partial``: the plans serve some of the requests only (checked as an instance of
    those)."""
    spans = spans_of(schedule)
    for key, cand in sorted(scored, key=lambda c: c[0]):
        timed = compact(cand, arrival, spans)
        if timed is None:
            continue
        inst = instance
        if partial:
            served = {a.request for a in timed}
            inst = replace(instance, requests=tuple(r for r in instance.requests
                                                    if r.id in served))
        if not check_plan(inst, replace(schedule, actions=tuple(timed))):
            return timed, key
    return None


def _movable(order: list[Action], by_model: dict[str, list[Engine]],
             paused: bool = False) -> dict[str, Action]:
    """Request -> its run, for requests served by one run on an engine of one device
    and no KV copy (a preempted request stays as it is). ``paused``: also requests
    paused on one such engine (its runs there, with KV copies between, none
    recomputed), each as one whole run from its first run's start (the runs' seconds
    added: the same tokens at the same contexts), so that a ruin may take a pause back."""
    runs: dict[str, list[Action]] = {}
    copies: dict[str, list[Action]] = {}
    for a in order:
        if a.request is not None:
            (runs if a.kind == "run" else copies).setdefault(a.request, []).append(a)
    one = {e.id for es in by_model.values() for e in es}
    out: dict[str, Action] = {}
    for q, rs in runs.items():
        if rs[0].engine not in one:
            continue
        if len(rs) == 1 and q not in copies:
            out[q] = rs[0]
        elif paused and len(rs) > 1 and all(
                a.engine == rs[0].engine and not a.recompute for a in rs) and \
                all(c.engine == rs[0].engine for c in copies.get(q, [])):
            out[q] = replace(rs[0], tokens_to=rs[-1].tokens_to, end_s=rs[0].start_s + sum(
                a.end_s - a.start_s for a in rs))
    return out


def _ruins(order: list[Action], by_model: dict[str, list[Engine]], score: _Score
           ) -> Iterator[tuple[str, list[str]]]:
    """What a ruin takes out, the likeliest to pay first: one of the costliest requests,
    and the runs of one device that overlap its stay (arrival to completion), those
    nearest its arrival; per request, every such device. First RUIN_SEEDS requests
    and RUIN_SIZE runs, then twice and four times as many of both (each ruin once)."""
    arrival, weight = score.arrival, score.weight
    movable = _movable(order, by_model, paused=True)
    costly = sorted(movable, key=lambda q: -weight[q] * (movable[q].end_s - arrival[q]))
    near: dict[str, dict[str, list[str]]] = {}
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for scale in (1, 2, 4):
        for q in costly[:RUIN_SEEDS * scale]:
            if q not in near:
                lo, hi = arrival[q], movable[q].end_s
                near[q] = {}
                for x, r in movable.items():
                    if x != q and r.start_s < hi and r.end_s > lo:
                        near[q].setdefault(r.device, []).append(x)
                for xs in near[q].values():
                    xs.sort(key=lambda x: abs(movable[x].start_s - lo))
            for d in sorted(near[q]):
                victims = near[q][d][:RUIN_SIZE * scale]
                if (q, tuple(victims)) not in seen:
                    seen.add((q, tuple(victims)))
                    yield q, victims
    if PERIOD_RUINS:
        for group in _periods(order, movable):
            q = max(group, key=lambda x: weight[x] * (movable[x].end_s - arrival[x]))
            victims = [x for x in group if x != q]
            if victims and (q, tuple(victims)) not in seen:
                seen.add((q, tuple(victims)))
                yield q, victims


def _periods(order: list[Action], movable: dict[str, Action]) -> list[list[str]]:
    """The movable requests run in each period of an engine (load to unload),
    and those of each two periods one after the other on a device, the longest first."""
    serving = {r.engine for r in movable.values()}
    open_: dict[str, list[str]] = {}
    done: dict[str, list[list[str]]] = {}
    for a in order:
        if a.engine not in serving:
            continue
        if a.kind == "run" and a.request in movable:
            open_.setdefault(a.engine, []).append(a.request)
        elif a.kind == "unload" and open_.get(a.engine):
            done.setdefault(a.device, []).append(open_.pop(a.engine))
    for qs in open_.values():
        if qs:
            done.setdefault(movable[qs[0]].device, []).append(qs)
    out = [g for gs in done.values() for g in gs]
    out += [a + b for gs in done.values() for a, b in itertools.pairwise(gs)]
    return sorted(out, key=len, reverse=True)


def _random_ruin(movable: dict[str, Action], score: _Score, rng: random.Random
                 ) -> tuple[str, list[str]] | None:
    """A random ruin, for when every listed one failed: of the ``movable`` requests
    (:func:`_movable`), one drawn in proportion to its weighted response, and the runs of
    a random device that start nearest a random instant of the request's stay, as many as
    a draw from 2 to RANDOM_RUIN_SIZE (fewer where the device has fewer)."""
    arrival, weight = score.arrival, score.weight
    if len(movable) < 2:
        return None
    qs = sorted(movable)
    cost = {x: weight[x] * (movable[x].end_s - arrival[x]) + 1e-9 for x in qs}
    q = rng.choices(qs, weights=[cost[x] for x in qs])[0]
    d = rng.choice(sorted({r.device for r in movable.values()}))
    at = rng.uniform(arrival[q], movable[q].end_s)
    near = sorted((x for x in qs if x != q and movable[x].device == d),
                  key=lambda x: (abs(movable[x].start_s - at), x))
    return q, near[:rng.randint(2, RANDOM_RUIN_SIZE)]


def _ruin_recreate(instance: Instance, cost: CostModel, schedule: Schedule,
                   order: list[Action], by_model: dict[str, list[Engine]], score: _Score,
                   best_key: tuple[float, ...], q: str, victims: list[str], deadline: float,
                   shuffle: random.Random | None = None
                   ) -> tuple[list[Action], tuple[float, ...]] | None:
    """Several runs moved at once (ruin and recreate): ``q``'s run and those of
    ``victims`` are taken out (periods left empty go), then put back one by one, ``q``
    first, the others by arrival (in random order with ``shuffle``), each in its best
    place (as a move would: any engine of its model, or a period of its own). The plan
    and its key when it beats ``best_key``."""
    arrival = score.arrival
    spans = spans_of(schedule)
    movable = _movable(order, by_model, paused=True)
    taken = {q, *victims}  # their runs go, and the KV copies of a paused one
    rest = [a for a in order if a.request not in taken]
    for e in {movable[x].engine for x in [q, *victims]}:
        rest = _drop_empty(rest, e)
    back = sorted(victims, key=lambda x: arrival[x])
    if shuffle is not None:
        shuffle.shuffle(back)
    for x in [q, *back]:
        if time.perf_counter() >= deadline:
            return None
        cands = _placements(instance, cost, rest, movable[x], by_model, arrival, score,
                            (math.inf,), deadline, spans=spans)
        got = _first_valid(instance, schedule, arrival, cands, partial=True)
        if got is None:
            return None
        rest = got[0]
    key = score(rest, [a.end_s for a in rest])
    return (rest, key) if key < best_key else None


def _drop_empty(actions: list[Action], engine: str) -> list[Action]:
    """``actions`` without ``engine``'s loads that are followed (on the engine) by its
    unload with nothing between: a period that no longer serves anything."""
    mine = [i for i, a in enumerate(actions) if a.engine == engine]
    drop = {k for i, j in itertools.pairwise(mine)
            if actions[i].kind == "load" and actions[j].kind == "unload" for k in (i, j)}
    return [a for i, a in enumerate(actions) if i not in drop] if drop else actions


def _unsplits(actions: list[Action]) -> list[list[Action]]:
    """Plans in which a request whose state was saved and restored on one engine, with
    nothing else on that engine between, is not preempted there: the run before the
    save and the run after the restore become one run (their durations added), the
    two copies go."""
    of: dict[str, list[int]] = {}
    for i, a in enumerate(actions):
        if a.request is not None:
            of.setdefault(a.request, []).append(i)
    out: list[list[Action]] = []
    for seq in of.values():
        for k in range(1, len(seq) - 2):
            r1, sv, rs, r2 = (actions[j] for j in seq[k - 1:k + 3])
            if not (sv.kind == "kv_save" and rs.kind == "kv_restore" and r1.kind == "run"
                    and r2.kind == "run" and not r2.recompute
                    and r1.engine == sv.engine == rs.engine == r2.engine):
                continue
            if any(actions[j].engine == r1.engine for j in range(seq[k - 1] + 1, seq[k + 2])
                   if j not in (seq[k], seq[k + 1])):
                continue  # the engine served another request meanwhile: a real pause
            merged = replace(r1, tokens_to=r2.tokens_to,
                             end_s=r1.end_s + (r2.end_s - r2.start_s))
            gone = set(seq[k:k + 3])
            out.append([merged if j == seq[k - 1] else a for j, a in enumerate(actions)
                        if j not in gone])
    return out


def _fills(instance: Instance, cost: CostModel, actions: list[Action],
           engines: dict[str, Engine]) -> list[list[Action]]:
    """Plans in which a request paused on one engine (two runs there, its state saved
    and restored or recomputed) makes more tokens before its pause, by as long as its
    device's actions between its first part and the next run there leave that run
    waiting after the first part (a move may have started the first part earlier than
    the pause was timed for); as many as fit, with MIN_PART left for the second part."""
    runs: dict[str, list[int]] = {}
    copies: dict[str, list[int]] = {}
    for i, a in enumerate(actions):
        if a.request is not None:
            (runs if a.kind == "run" else copies).setdefault(a.request, []).append(i)
    out = []
    for q, (i1, i2) in ((q, rs) for q, rs in runs.items() if len(rs) == 2):
        r1, r2 = actions[i1], actions[i2]
        cs = copies.get(q, [])
        if r1.engine != r2.engine or r1.tokens_from != 0 or \
                any(actions[c].engine != r1.engine for c in cs) or \
                len(cs) != (0 if r2.recompute else 2):
            continue
        busy = 0.0  # the device's actions after the first part, up to its next run
        nxt = None
        for k in range(i1 + 1, i2):
            a = actions[k]
            if a.device != r1.device:
                continue
            if a.kind == "run":
                nxt = a
                break
            busy += a.end_s - a.start_s
        if nxt is None:
            continue
        idle = nxt.start_s - r1.end_s - busy
        if idle <= 1e-6:
            continue
        rq = instance.request(q)
        cfg = engines[r1.engine].config
        made = _tokens_by(cost, cfg, rq.prompt_tokens, rq.output_tokens,
                          r1.end_s - r1.start_s + idle)
        if made is None or r1.tokens_to is None or made <= r1.tokens_to:
            continue
        new = {i1: replace(r1, tokens_to=made, end_s=r1.start_s + cost.run_s(
                   cfg, rq.prompt_tokens, 0, made)),
               i2: replace(r2, tokens_from=made, end_s=r2.start_s + cost.run_s(
                   cfg, rq.prompt_tokens, made, rq.output_tokens, recompute=r2.recompute))}
        ctx = rq.prompt_tokens + made
        for c in cs:
            a = actions[c]
            new[c] = replace(a, bytes=cost.kv_bytes(cfg, ctx),
                             end_s=a.start_s + cost.kv_s(a.kind, cfg, ctx))
        out.append([new.get(i, a) for i, a in enumerate(actions)])
    return out


def _stay_resident(actions: list[Action]) -> list[list[Action]]:
    """Plans in which one engine, unloaded and loaded again with nothing of it between,
    stays loaded instead (the checker judges the memory); kept when the objective is
    no worse."""
    last: dict[str, int] = {}
    out = []
    for i, a in enumerate(actions):
        k = last.get(a.engine)
        if k is not None and actions[k].kind == "unload" and a.kind == "load":
            out.append([x for j, x in enumerate(actions) if j not in (k, i)])
        last[a.engine] = i
    return out


def _next_on(actions: list[Action], j: int, engine: str) -> int | None:
    for k in range(j + 1, len(actions)):
        if actions[k].engine == engine:
            return k
    return None
