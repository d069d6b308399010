"""Dependencies: which earlier actions of the plan each action waits for, and plan order.

An action waits for the last action before it in its lane (on each device its engine
spans: an engine split over GPUs keeps both lanes of every one of them busy, SPEC rule
2), on its engine and of its request. ``spans`` gives the devices of split engines
(:func:`spans_of`); an engine not in it spans its action's device only.
"""

from __future__ import annotations

from collections.abc import Mapping

from planner.domain import TRANSFER_KINDS, Action, Schedule

Spans = Mapping[str, tuple[str, ...]]


def spans_of(schedule: Schedule) -> dict[str, tuple[str, ...]]:
    """Engine -> the devices it spans, for the engines split over GPUs."""
    return {e.id: e.devices for e in schedule.engines if e.shares}


def lane_keys(a: Action, spans: Spans | None) -> tuple[tuple[str, str], ...]:
    """The (device, lane) pairs an action keeps busy: its lane on each device its engine
    spans."""
    devs = spans.get(a.engine) if spans else None
    return tuple((d, a.lane) for d in devs) if devs else ((a.device, a.lane),)


def _split_dependencies(actions: list[Action], slots: dict[str, int] | None = None,
                        spans: Spans | None = None) -> list[tuple[set[int], set[int]]]:
    """For each action (in plan order), (what it waits for through its lane, what it
    waits for through its engine or its request); see :func:`dependencies`."""
    slots = slots or {}
    base: dict[object, set[int]] = {}  # lane or engine -> what the next action waits for
    group: dict[object, list[int]] = {}  # lane or engine -> slot runs since then
    group_engine: dict[object, str] = {}  # whose slot runs the group holds
    last_request: dict[str, int] = {}
    out: list[tuple[set[int], set[int]]] = []
    for i, a in enumerate(actions):
        lane: set[int] = set()
        hard: set[int] = set()
        slot_run = a.kind == "run" and slots.get(a.engine, 1) > 1
        for key, d in (*((k, lane) for k in lane_keys(a, spans)), (("engine", a.engine), hard)):
            members = group.get(key, [])
            if slot_run and (not members or group_engine[key] == a.engine):
                # runs of one slot engine decode together: they wait only for what
                # came before the group
                d.update(base.get(key, ()))
                group.setdefault(key, []).append(i)
                group_engine[key] = a.engine
            elif slot_run:  # another engine's slot runs: after all of the group's
                d.update(members)
                base[key] = set(members)
                group[key] = [i]
                group_engine[key] = a.engine
            else:
                d.update(base.get(key, ()))
                d.update(group.pop(key, []))
                base[key] = {i}
        if a.request is not None and a.request in last_request:
            hard.add(last_request[a.request])
        out.append((lane, hard))
        if a.request is not None:
            last_request[a.request] = i
    return out


def lane_dependencies(actions: list[Action], slots: dict[str, int] | None = None,
                      spans: Spans | None = None) -> list[set[int]]:
    """For each action, the dependencies it has only through its lane (not through its
    engine or its request)."""
    return [lane - hard for lane, hard in _split_dependencies(actions, slots, spans)]


def _waits_on(a: Action, spans: Spans | None = None) -> tuple[tuple[object, object], ...]:
    """What an action of a one-slot plan waits for: the last action before it in its
    lanes, on its engine and of its request (a key with None second holds nothing)."""
    return (*lane_keys(a, spans), ("engine", a.engine), ("request", a.request))


class Ends:
    """When the last action so far ended in each lane, on each engine and of each request:
    what the next action of a one-slot plan waits for (:func:`_waits_on`)."""

    __slots__ = ("engine", "lane", "request")

    def __init__(self) -> None:
        self.lane: dict[tuple[str, str], float] = {}
        self.engine: dict[str, float] = {}
        self.request: dict[str, float] = {}

    def copy(self) -> Ends:
        out = Ends()
        out.lane, out.engine, out.request = dict(self.lane), dict(self.engine), \
            dict(self.request)
        return out


def earliest_times(actions: list[Action], arrival: dict[str, float],
                   ends: Ends | None = None, spans: Spans | None = None
                   ) -> tuple[list[float], list[float]]:
    """(start, end) of each action of a one-slot plan, in this order, each as early as
    what it waits for (:func:`dependencies`) allows, with its duration; runs (and loads
    made on demand) not before their request's arrival. The same times as from
    :func:`dependencies`' sets, without building them (the solver's polish asks this for
    every candidate plan). ``ends``: the state after the actions before these (updated in
    place)."""
    ends = ends if ends is not None else Ends()
    lane, engine, request = ends.lane, ends.engine, ends.request
    start: list[float] = []
    end: list[float] = []
    transfer = TRANSFER_KINDS
    for a in actions:  # (attributes read once each: the polish's inner loop)
        eng, kind = a.engine, a.kind
        split = spans.get(eng) if spans else None
        ln = "transfer" if kind in transfer else "compute"  # a.lane, inlined
        lk = (a.device, ln)
        s = lane.get(lk, 0.0)
        if split:
            s = max(lane.get((d, ln), 0.0) for d in split)
        x = engine.get(eng, 0.0)
        if x > s:
            s = x
        q = a.request
        if q is not None:
            x = request.get(q, 0.0)
            if x > s:
                s = x
            if kind == "run":
                x = arrival[q]
                if x > s:
                    s = x
        elif kind == "load" and a.on_demand is not None:  # made when its request arrives
            x = arrival[a.on_demand]
            if x > s:
                s = x
        e = s + (a.end_s - a.start_s)
        start.append(s)
        end.append(e)
        lane[lk] = engine[eng] = e
        if split:
            for d in split:
                lane[(d, ln)] = e
        if q is not None:
            request[q] = e
    return start, end


def dependencies(actions: list[Action], slots: dict[str, int] | None = None,
                 spans: Spans | None = None) -> list[set[int]]:
    """For each action (in plan order), the indices of the actions it must wait for.

    Runs of an engine with several slots (``slots``: engine -> n_parallel) wait only
    for what came before them in their lane and engine other than each other (the
    engine's slot driver lets at most n_parallel decode at once); the next other
    action waits for all of them.
    """
    if not any(n > 1 for n in (slots or {}).values()):
        # one request at a time per engine: the last action before it in its lane, on
        # its engine and of its request (the same sets, without the groups' bookkeeping;
        # the solver's polish asks this for every candidate plan)
        last: dict[tuple[object, object], int] = {}
        out: list[set[int]] = []
        for i, a in enumerate(actions):
            keys = _waits_on(a, spans)
            out.append({last[k] for k in keys if k in last})
            for k in keys:
                if k[1] is not None:
                    last[k] = i
        return out
    return [lane | hard for lane, hard in _split_dependencies(actions, slots, spans)]


def same_dependencies(out: list[Action], deps: list[set[int]], timed: Schedule,
                      slots: dict[str, int] | None = None, spans: Spans | None = None
                      ) -> bool:
    """Whether the executor, reading ``timed`` in plan order, waits for the same actions
    as ``deps`` (the dependencies of ``out``, the same actions in another order)."""
    pos = {a: i for i, a in enumerate(out)}
    if len(pos) != len(out):
        return False
    order = plan_order(timed)
    new = dependencies(order, slots, spans)
    return all({pos[order[d]] for d in new[j]} == deps[pos[a]] for j, a in enumerate(order))


def plan_order(schedule: Schedule) -> list[Action]:
    return sorted(schedule.actions,
                  key=lambda a: (a.start_s, a.end_s, 0 if a.kind == "unload" else 1))
