"""Predicted times as ``planner execute`` will run a plan.

Schedulers place actions on a grid with the cost model's idle durations. The
executor dispatches each action as soon as the previous action in its lane, on
its engine and of its request is done (and, for a run or a load made on demand, its
request has arrived), and on a real machine two kinds of load, and KV copies, differ from
idle, repeated ones:

- an engine's **first load** in a replay happens in a freshly started worker
  (``CostModel.first_load_s``), and so does every load of an engine with layers on a
  GPU (``domain.fresh_worker_per_load``: the executor starts a new worker after each
  unload, since a CUDA process keeps its context);
- a load that **overlaps a run on the same host** competes with it for memory
  bandwidth and caches (``CostModel.busy_load_s``); the part of the load that
  overlaps runs is stretched by ``busy_load_s / load_s``;
- a **KV copy that overlaps a run on the same host** shares the host's cores and
  memory bandwidth with it (``CostModel.busy_kv_s``), stretched alike by the ratio
  of the busy to the idle copy at the request's context.

:func:`retime` recomputes every action's start and end with exactly the
executor's dependencies and these durations (a fixed point over the overlaps),
keeping each action's place in its lane, on its engine and in its request. The
result is checked by the plan checker; a plan it would make invalid is kept as
it was.
"""

from __future__ import annotations

import bisect
from dataclasses import replace

from planner.checker import check_plan
from planner.costmodel.base import CostModel
from planner.domain import Action, Instance, Schedule, fresh_worker_per_load
from planner.executor.deps import dependencies, plan_order, same_dependencies, spans_of
from planner.slots import batched_times

ROUNDS = 40


def _merged(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, non-overlapping union of ``spans`` (runs of a slot engine overlap)."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _overlap(s: float, e: float, spans: list[tuple[float, float]]) -> float:
    """Seconds of [s, e] covered by ``spans`` (sorted by start, not overlapping each other)."""
    i = max(0, bisect.bisect_left(spans, (s, s)) - 1)
    total = 0.0
    while i < len(spans) and spans[i][0] < e:
        a, b = spans[i]
        total += max(0.0, min(e, b) - max(s, a))
        i += 1
    return total


def retime(instance: Instance, cost: CostModel, schedule: Schedule) -> Schedule:
    """``schedule`` with the times the executor will give its actions (see module doc)."""
    actions = plan_order(schedule)
    if not actions:
        return schedule
    engines = {e.id: e for e in schedule.engines}
    fresh = {e.id: fresh_worker_per_load(instance, e) for e in schedule.engines}
    slots = {e.id: e.n_parallel for e in schedule.engines}
    split = spans_of(schedule)  # engines split over GPUs wait for all their lanes
    deps = dependencies(actions, slots, split)
    host_of = {d.id: d.host for d in instance.cluster.devices}
    arrival = {r.id: r.arrival_s for r in instance.requests}
    # whole runs on slot engines: the engine's slot driver batches them, so their ends
    # come from the batching replay (planner.slots) at the times they join
    slot_runs: dict[str, list[int]] = {}
    for i, a in enumerate(actions):
        if a.kind == "run" and slots.get(a.engine, 1) > 1:
            if a.tokens_from != 0 or a.recompute:
                return schedule  # slot engines replay whole runs only
            slot_runs.setdefault(a.engine, []).append(i)
    idle: list[float] = []
    factor: list[float] = []
    seen: set[str] = set()
    done: dict[str, int] = {}  # output tokens of each request generated so far (plan order)
    for a in actions:
        if a.kind in ("kv_save", "kv_restore") and a.request is not None:
            cfg = engines[a.engine].config
            ctx = instance.request(a.request).prompt_tokens + done.get(a.request, 0)
            alone = cost.kv_s(a.kind, cfg, ctx)
            idle.append(a.end_s - a.start_s)
            factor.append(cost.busy_kv_s(a.kind, cfg, ctx) / alone if alone > 0 else 1.0)
        elif a.kind == "load":
            cfg = engines[a.engine].config
            warm = cost.load_s(cfg)
            first = a.engine not in seen or fresh[a.engine]
            seen.add(a.engine)
            idle.append(cost.first_load_s(cfg) if first else warm)
            factor.append(cost.busy_load_s(cfg) / warm if warm > 0 else 1.0)
        else:
            if a.kind == "run" and a.request is not None:
                done[a.request] = max(done.get(a.request, 0), a.tokens_to or 0)
            idle.append(a.end_s - a.start_s)
            factor.append(1.0)
    dur = list(idle)
    start = [0.0] * len(actions)
    end = [0.0] * len(actions)
    admit: dict[int, float] = {}  # slot run -> when a slot takes it (start in the plan)
    # each slot engine's batching replay for the runs' last starts (a replay steps token by
    # token: 28 s for 300 actions of 4-slot engines when redone every round)
    batched: dict[str, tuple[tuple[tuple[float, int, int], ...], list[tuple[float, float]]]] = {}

    def place() -> None:
        for i, a in enumerate(actions):
            s = max((end[d] for d in deps[i]), default=0.0)
            if a.kind == "run" and a.request is not None:
                s = max(s, arrival[a.request])
            elif a.on_demand is not None:  # a load made when its request arrives
                s = max(s, arrival[a.on_demand])
            start[i], end[i] = s, (end[i] if i in admit else s + dur[i])
        for eid, idx in slot_runs.items():
            runs = tuple((start[i], instance.request(actions[i].request or "").prompt_tokens,
                          actions[i].tokens_to or 0) for i in idx)
            got = batched.get(eid)
            if got is None or got[0] != runs:  # the replay again only where a run moved
                got = runs, batched_times(cost, engines[eid].config, list(runs))
                batched[eid] = got
            for i, (at, fin) in zip(idx, got[1], strict=True):
                admit[i], end[i] = at, fin

    for _ in range(ROUNDS):
        before = list(end)
        place()
        runs_on: dict[str, list[tuple[float, float]]] = {}
        for i, a in enumerate(actions):
            if a.kind == "run":
                runs_on.setdefault(host_of[a.device], []).append(
                    (admit.get(i, start[i]), end[i]))
        busy_on = {h: _merged(v) for h, v in runs_on.items()}
        changed = any(abs(x - y) > 1e-6 for x, y in zip(before, end, strict=True))
        for i, a in enumerate(actions):
            if factor[i] == 1.0 or idle[i] <= 0:
                continue
            # a load's (or KV copy's) work goes at rate 1 alone and 1/factor beside a run:
            # over a span
            # t of which o lies beside runs, t = idle + o * (1 - 1/factor)
            o = _overlap(start[i], end[i], busy_on.get(host_of[a.device], []))
            new = idle[i] + o * (1.0 - 1.0 / factor[i])
            if abs(new - dur[i]) > 1e-6:
                changed = True
            dur[i] = new
        if not changed:
            break
    place()  # the final durations, placed once more
    out: list[Action] = [replace(a, start_s=round(admit.get(i, start[i]), 6),
                                 end_s=round(end[i], 6)) for i, a in enumerate(actions)]
    timed = replace(schedule, actions=tuple(out))
    if not same_dependencies(out, deps, timed, slots, split) or check_plan(instance, timed):
        return schedule  # the executor would order it otherwise, or a rule would break
    return timed

