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
executor's dependencies and these durations, replayed event by event (slot engines
batch their runs as they join: :func:`event_times`), to a fixed point over the overlaps,
keeping each action's place in its lane, on its engine and in its request. The
result is checked by the plan checker; a plan it would make invalid is kept as
it was.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import replace

from planner.checker import check_plan
from planner.costmodel.base import CostModel
from planner.domain import Action, EngineConfig, Instance, Schedule, fresh_worker_per_load
from planner.executor.deps import dependencies, plan_order, same_dependencies, spans_of
from planner.slots import batch_step

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


def event_times(cost: CostModel, deps: list[set[int]], dur: list[float], release: list[float],
                slot_of: dict[int, str], cfgs: dict[str, EngineConfig],
                sizes: dict[int, tuple[int, int]]
                ) -> tuple[list[float], list[float], dict[int, float]]:
    """(start, end, admission of slot runs) of each action (plan order), replayed in time
    order as the executor dispatches them: an action starts once everything in ``deps``
    has ended and not before ``release``, and lasts ``dur``; except the runs in
    ``slot_of`` (run -> its slot engine, ``cfgs`` its config, ``sizes`` its prompt and
    output tokens), which join their engine's queue then, are admitted at the start of
    the engine's first step with a free slot (in the order they joined) and end with
    their last token (:func:`planner.slots.batch_step`, as in
    :func:`planner.slots.batched_times`).

    Replayed event by event, so a run that waits on a slot run's end waits for its
    batched end in the same pass (a pass that placed actions in plan order used the
    slot runs' ends of the pass before, and chains of them took a pass per link)."""
    n = len(deps)
    start = [0.0] * n
    end = [0.0] * n
    admit: dict[int, float] = {}
    ready = list(release)
    waiting = [len(d) for d in deps]
    after: list[list[int]] = [[] for _ in range(n)]
    for i, d in enumerate(deps):
        for j in d:
            after[j].append(i)
    # events (time, kind, key): at one time, ends first (what they free may join a
    # step starting then), then joins, then the steps that start
    ended, joins, step = 0, 1, 2
    names = sorted(cfgs)
    queue: dict[str, list[int]] = {e: [] for e in names}
    active: dict[str, dict[int, list[int]]] = {e: {} for e in names}
    stepping: dict[str, bool] = dict.fromkeys(names, False)
    finishing: dict[str, list[int]] = {e: [] for e in names}
    events: list[tuple[float, int, int]] = []

    def begin(i: int) -> None:
        s = ready[i]
        start[i] = s
        if i in slot_of:
            heapq.heappush(events, (s, joins, i))
        else:
            end[i] = s + dur[i]
            heapq.heappush(events, (end[i], ended, i))

    def done(i: int, t: float) -> None:
        for k in after[i]:
            ready[k] = max(ready[k], t)
            waiting[k] -= 1
            if not waiting[k]:
                begin(k)

    for i in range(n):
        if not waiting[i]:
            begin(i)
    while events:
        t, kind, key = heapq.heappop(events)
        if kind == joins:
            eid = slot_of[key]
            queue[eid].append(key)
            if not stepping[eid]:
                stepping[eid] = True
                heapq.heappush(events, (t, step, names.index(eid)))
        elif kind == step:
            eid = names[key]
            act, q = active[eid], queue[eid]
            free = cfgs[eid].n_parallel - len(act)
            joining, queue[eid] = q[:free], q[free:]
            for i in joining:
                admit[i] = t
            t2, fin = batch_step(cost, cfgs[eid], t, act,
                                 [(i, *sizes[i]) for i in joining])
            finishing[eid] = fin
            # the next step at once where no run ends (nothing it frees can join)
            heapq.heappush(events, (t2, ended, -1 - key) if fin else (t2, step, key))
        elif key < 0:  # a slot engine's step ended
            eid = names[-1 - key]
            for i in finishing[eid]:
                end[i] = t
                done(i, t)
            if active[eid] or queue[eid]:
                heapq.heappush(events, (t, step, -1 - key))
            else:
                stepping[eid] = False
        else:
            done(key, t)
    return start, end, admit


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
    release = [0.0] * len(actions)  # runs and loads made on demand wait for an arrival
    for i, a in enumerate(actions):
        if a.kind == "run" and a.request is not None:
            release[i] = arrival[a.request]
        elif a.on_demand is not None:
            release[i] = arrival[a.on_demand]
    slot_of = {i: eid for eid, idx in slot_runs.items() for i in idx}
    runs_cfg = {eid: engines[eid].config for eid in slot_runs}
    sizes = {i: (instance.request(actions[i].request or "").prompt_tokens,
                 actions[i].tokens_to or 0) for i in slot_of}
    def place() -> tuple[list[float], list[float], dict[int, float]]:
        """(start, end, when a slot takes each slot run) at the current durations."""
        return event_times(cost, deps, dur, release, slot_of, runs_cfg, sizes)

    for _ in range(ROUNDS):
        start, end, admit = place()
        runs_on: dict[str, list[tuple[float, float]]] = {}
        for i, a in enumerate(actions):
            if a.kind == "run":
                runs_on.setdefault(host_of[a.device], []).append(
                    (admit.get(i, start[i]), end[i]))
        busy_on = {h: _merged(v) for h, v in runs_on.items()}
        changed = False
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
    else:
        start, end, admit = place()  # the last round's durations
    out: list[Action] = [replace(a, start_s=round(admit.get(i, start[i]), 6),
                                 end_s=round(end[i], 6)) for i, a in enumerate(actions)]
    timed = replace(schedule, actions=tuple(out))
    if not same_dependencies(out, deps, timed, slots, split) or check_plan(instance, timed):
        return schedule  # the executor would order it otherwise, or a rule would break
    return timed

