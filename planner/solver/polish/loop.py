"""The polish itself: single moves, then ruins and pauses when none helps, and the
clean-ups, until nothing is left to try or the deadline passes."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

from planner.checker import check_plan
from planner.costmodel.base import CostModel
from planner.domain import Action, Engine, EngineConfig, Instance, Schedule
from planner.executor.deps import earliest_times, plan_order, spans_of
from planner.solver.polish.cleanups import stay_resident, unsplits
from planner.solver.polish.handoffs import handoffs
from planner.solver.polish.moves import best_move, movable_runs, new_engines
from planner.solver.polish.pauses import fills, pause_moves
from planner.solver.polish.ruins import listed_ruins, random_ruin, ruin_recreate
from planner.solver.polish.timing import Score, first_valid

RANDOM_RUINS = True  # off in a test only, to show what they add
#: random ruins stop after this many in a row failed, per request the plan can move
#: (plus one): a small plan is done in moments, a large one goes on to the deadline
RANDOM_STALL = 10
PAUSES = True  # pauses (off in a test only, to show what they add)
#: pauses are tried once this many random ruins per movable request failed in a row (a
#: pause fixes two requests in place; tried earlier, its small gains blocked the ruins'
#: bigger ones on some plans)
PAUSE_WAIT = 1
RESPLITS = True  # a pause timed too early made longer (fills); off in a test
HANDOFFS = True  # GPU prefill, CPU decode (handoffs.py); off in a test
#: hand-overs are tried in this last part of the polish's time, or once nothing else is left
#: to try (a handed-over request no longer moves: tried early, they would block the ruins'
#: bigger gains), then the other moves go on around them
HANDOFF_SHARE = 0.2


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
    score = Score(instance, objective)
    arrival, weight = score.arrival, score.weight
    declared = schedule
    schedule = replace(schedule, engines=schedule.engines
                       + new_engines(instance, cost, schedule, extra))
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
    got = first_valid(instance, schedule, arrival, [(key, order)] if key < best_key else [])
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
    handed = not (pauses and HANDOFFS)
    handoff_at = deadline - HANDOFF_SHARE * max(0.0, deadline - time.perf_counter())
    while time.perf_counter() < deadline:
        if not handed and time.perf_counter() >= handoff_at:
            handed = True
            while time.perf_counter() < deadline:  # each one frees the CPU or the GPU less
                got = handoffs(instance, cost, schedule, order, by_model, score, best_key,
                               deadline)
                if got is None:
                    break
                order, best_key = got
                kept += 1
                improved = True  # the single moves again, around them
                stalled = 0
        if not improved:  # no one move helps: several at once (ruin and recreate)
            ruins = ruins or listed_ruins(order, by_model, score)
            ruin = next(ruins, None)
            paused = None
            # what a random ruin may take, once every listed ruin failed on this plan
            takeable = movable_runs(order, by_model, paused=True) if ruin is None else {}
            if ruin is None and pauses and PAUSES and paused_on is not order and \
                    stalled >= PAUSE_WAIT * len(takeable):
                # the listed ruins failed on this plan, and random ones for a while: a
                # pause? (a kept one leaves the count of failed random ruins as it is)
                paused_on = order
                paused = pause_moves(instance, cost, schedule, order, by_model, score,
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
                    ruin = random_ruin(takeable, score, rng)
                    shuffle = rng if rng.random() < 0.5 else None
                if ruin is None:
                    if handed:
                        break  # nothing left to try
                    handoff_at = 0.0  # but hand-overs
                    continue
                q, victims = ruin
                got = ruin_recreate(instance, cost, schedule, order, by_model, score,
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
        movable = movable_runs(order, by_model)
        for q in sorted(movable, key=lambda q: -weight[q] * (movable[q].end_s - arrival[q])):
            if time.perf_counter() >= deadline:
                break
            at = next(i for i, a in enumerate(order) if a.kind == "run" and a.request == q)
            got = best_move(instance, cost, schedule, order, at, by_model, arrival,
                            score, best_key, deadline)
            if got is not None:
                order, best_key = got
                kept += 1
                improved = True
        # at an equal objective too: a reload or a KV copy that serves nothing only costs
        # the machine (each one kept makes the plan shorter); a pause's first part made
        # longer, for a gain only
        cleans = [(c, True) for c in [*unsplits(order), *stay_resident(order)]]
        if RESPLITS:
            cleans += [(c, False) for c in fills(instance, cost, order, engines)]
        for cand, even in cleans:
            if time.perf_counter() >= deadline:
                break
            key = score(cand, earliest_times(cand, arrival, spans=spans)[1])
            got = first_valid(instance, schedule, arrival, [(key, cand)] if key < best_key
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
