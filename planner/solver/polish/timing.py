"""Timing for the polish: a plan compacted to its actions' earliest times, the
objective's key of a plan, and the first of several candidate plans that compacts without
changing what the executor waits for and passes the checker."""

from __future__ import annotations

from dataclasses import replace

from planner.checker import check_plan
from planner.domain import Action, Instance, Schedule
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

PREFIX_STRIDE = 16  # a candidate is timed from at most this many actions before its change


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


class Score:
    """The objective's sort key of a plan from its actions' end times (rounded: a move is
    kept for a real gain, not for float noise in the same times)."""

    def __init__(self, instance: Instance, objective: str) -> None:
        self.instance = instance
        self.objective = objective
        self.weight = {r.id: r.weight for r in instance.requests}
        self.arrival = {r.id: r.arrival_s for r in instance.requests}

    def __call__(self, actions: list[Action], end: list[float]) -> tuple[float, ...]:
        return self.after({}, actions, end)

    @staticmethod
    def done_by(actions: list[Action], end: list[float],
                done: dict[str, float] | None = None) -> dict[str, float]:
        """Each request's last run end in ``actions`` (``done``, updated in place: the
        ends of the actions before these)."""
        done = {} if done is None else done
        for a, e in zip(actions, end, strict=True):
            if a.kind == "run" and a.request is not None:
                q = a.request
                if e > done.get(q, e - 1.0):
                    done[q] = e
        return done

    def after(self, before: dict[str, float], actions: list[Action], end: list[float]
              ) -> tuple[float, ...]:
        """The key of a plan whose first actions left ``before`` (:meth:`done_by`, not
        changed) and whose other actions are ``actions``, ending at ``end``: a candidate
        scored from its changed part only (the same key as from the whole plan)."""
        done = self.done_by(actions, end, dict(before))
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


class Prefix:
    """Earliest times of ``rest`` (a plan less the run being moved) and the waiting state
    before every PREFIX_STRIDE-th of its actions, so that a candidate (``rest`` changed
    from index k on) is timed from the last kept state at or before k only."""

    def __init__(self, rest: list[Action], arrival: dict[str, float],
                 spans: Spans | None = None) -> None:
        self.rest = rest
        self.arrival = arrival
        self.spans = spans
        self.states: list[Ends] = []
        self.done: list[dict[str, float]] = []  # the requests' last run ends before each
        ends = Ends()
        self.end: list[float] = []
        done: dict[str, float] = {}
        for i in range(0, len(rest), PREFIX_STRIDE):
            self.states.append(ends.copy())
            self.done.append(dict(done))
            part = earliest_times(rest[i:i + PREFIX_STRIDE], arrival, ends, spans)[1]
            Score.done_by(rest[i:i + PREFIX_STRIDE], part, done)
            self.end += part
        self.states.append(ends)
        self.done.append(done)

    def _same(self, cand: list[Action], k: int | None) -> int:
        """How many first actions ``cand`` shares with ``rest`` (``k``: known to share at
        least that many)."""
        k = k or 0
        n = min(len(cand), len(self.rest))
        while k < n and cand[k] is self.rest[k]:
            k += 1
        return k

    def key(self, score: Score, cand: list[Action], k: int | None = None
            ) -> tuple[float, ...]:
        """``score``'s key of ``cand`` (as from timing the whole of it), timed and scored
        from its last kept state at or before its change only (``k``: it shares at least
        its first ``k`` actions with ``rest``; ``cand[:k]`` is rest's, its times known)."""
        base = self._same(cand, k) // PREFIX_STRIDE
        k = base * PREFIX_STRIDE
        tail = cand[k:]
        return score.after(self.done[base], tail, earliest_times(
            tail, self.arrival, self.states[base].copy(), self.spans)[1])

    def state_at(self, k: int) -> Ends:
        """The waiting state before ``rest[k]`` (a copy of its own)."""
        base = k // PREFIX_STRIDE
        ends = self.states[base].copy()
        earliest_times(self.rest[base * PREFIX_STRIDE:k], self.arrival, ends, self.spans)
        return ends


def first_valid(instance: Instance, schedule: Schedule, arrival: dict[str, float],
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
