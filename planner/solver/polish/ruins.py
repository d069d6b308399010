"""Ruin and recreate: several runs taken out of the plan at once and put back one by one,
each in its best place; the listed ruins (the costliest requests with runs near them, the
runs of each period) and the random ones."""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Iterator

from planner.costmodel.base import CostModel
from planner.domain import Action, Engine, Instance, Schedule
from planner.executor.deps import spans_of
from planner.solver.polish.moves import drop_empty, movable_runs, placements
from planner.solver.polish.timing import Score, first_valid

RUIN_SEEDS = 10  # a ruin starts from one of this many costliest requests
RUIN_SIZE = 8  # runs of one device taken out with it, at most
#: once every listed ruin failed, random ones until the deadline: up to this many runs
#: of one device taken out with the request (RUIN_SIZE times 3)
RANDOM_RUIN_SIZE = 3 * RUIN_SIZE
#: where the plan's runs are on one GPU and a host CPU only, the share of random
#: ruins that take the runs nearest the instant from both, not one: a request moved from
#: the GPU to the CPU and others back in one go (the CP-SAT plan of `1gpu-4models` seed 61,
#: 29 s of polish: 34.43 -> 28.54 s; on three GPUs the draws spread too thin: docs/solver.md)
CROSS_DEVICE = 0.5
PERIOD_RUINS = True  # the runs of each period (and of two in a row) as ruins; off in a test


def listed_ruins(order: list[Action], by_model: dict[str, list[Engine]], score: Score
                 ) -> Iterator[tuple[str, list[str]]]:
    """What a ruin takes out, the likeliest to pay first: one of the costliest requests,
    and the runs of one device that overlap its stay (arrival to completion), those
    nearest its arrival; per request, every such device. First RUIN_SEEDS requests
    and RUIN_SIZE runs, then twice and four times as many of both (each ruin once)."""
    arrival, weight = score.arrival, score.weight
    movable = movable_runs(order, by_model, paused=True)
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


def random_ruin(movable: dict[str, Action], score: Score, rng: random.Random
                ) -> tuple[str, list[str]] | None:
    """A random ruin, for when every listed one failed: of the ``movable`` requests
    (:func:`movable_runs`), one drawn in proportion to its weighted response, and the runs of
    a random device (or, CROSS_DEVICE of the time where they are on a GPU and a CPU only, of
    both) that start nearest a random instant of the request's stay, as many as a draw from
    2 to RANDOM_RUIN_SIZE (fewer where there are fewer)."""
    arrival, weight = score.arrival, score.weight
    if len(movable) < 2:
        return None
    qs = sorted(movable)
    cost = {x: weight[x] * (movable[x].end_s - arrival[x]) + 1e-9 for x in qs}
    q = rng.choices(qs, weights=[cost[x] for x in qs])[0]
    devs = sorted({r.device for r in movable.values()})
    d = rng.choice(devs)
    at = rng.uniform(arrival[q], movable[q].end_s)
    # or, a GPU and the host CPU (a one-GPU plan), the runs of both
    kinds = sorted(score.instance.cluster.device(x).kind for x in devs)
    across = kinds == ["cpu", "gpu"] and rng.random() < CROSS_DEVICE
    near = sorted((x for x in qs if x != q and (across or movable[x].device == d)),
                  key=lambda x: (abs(movable[x].start_s - at), x))
    return q, near[:rng.randint(2, RANDOM_RUIN_SIZE)]


def ruin_recreate(instance: Instance, cost: CostModel, schedule: Schedule,
                  order: list[Action], by_model: dict[str, list[Engine]], score: Score,
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
    movable = movable_runs(order, by_model, paused=True)
    taken = {q, *victims}  # their runs go, and the KV copies of a paused one
    rest = [a for a in order if a.request not in taken]
    for e in {movable[x].engine for x in [q, *victims]}:
        rest = drop_empty(rest, e)
    back = sorted(victims, key=lambda x: arrival[x])
    if shuffle is not None:
        shuffle.shuffle(back)
    for x in [q, *back]:
        if time.perf_counter() >= deadline:
            return None
        cands = placements(instance, cost, rest, movable[x], by_model, arrival, score,
                           (math.inf,), deadline, spans=spans)
        got = first_valid(instance, schedule, arrival, cands, partial=True)
        if got is None:
            return None
        rest = got[0]
    key = score(rest, [a.end_s for a in rest])
    return (rest, key) if key < best_key else None
