"""Timing for the polish: a plan compacted to its actions' earliest times, the
objective's key of a plan, and the first of several candidate plans that compacts without
changing what the executor waits for and passes the checker."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import cached_property
from typing import Any

import numpy as np

from planner.checker import check_plan
from planner.domain import Action, Instance, Schedule
from planner.executor.deps import (
    Ends,
    Spans,
    dependencies,
    earliest_times,
    lane_keys,
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


#: the shapes of engine and request keys in :meth:`Prefix.key`'s difference set (a lane's
#: key is its ``(device, lane)`` pair, as in :class:`Ends`)
_ENGINE, _REQUEST = 1, 2


def _writes(a: Action, spans: Spans | None) -> tuple[tuple[object, str], ...]:
    """The keys of the waiting state an action sets when it ends: its lanes (every GPU's of
    a split engine), its engine and its request (:func:`planner.executor.deps.earliest_times`)."""
    out: tuple[tuple[object, str], ...] = (*lane_keys(a, spans), (_ENGINE, a.engine))
    return (*out, (_REQUEST, a.request)) if a.request is not None else out


class Prefix:
    """Earliest times of ``rest`` (a plan less the run being moved) and the waiting state
    before every PREFIX_STRIDE-th of its actions, so that a candidate (``rest`` changed
    from index k on) is timed from the last kept state at or before k only, and (for
    weighted mean response) only until its waiting state is ``rest``'s again: from there
    on every action of the candidate that is one of ``rest``'s takes ``rest``'s times."""

    def __init__(self, rest: list[Action], arrival: dict[str, float],
                 spans: Spans | None = None) -> None:
        self.rest = rest
        self.arrival = arrival
        self.spans = spans
        self.states: list[Ends] = []
        self.done: list[dict[str, float]] = []  # the requests' last run ends before each
        ends = Ends()
        self.start: list[float] = []
        self.end: list[float] = []
        done: dict[str, float] = {}
        for i in range(0, len(rest), PREFIX_STRIDE):
            self.states.append(ends.copy())
            self.done.append(dict(done))
            starts, part = earliest_times(rest[i:i + PREFIX_STRIDE], arrival, ends, spans)
            Score.done_by(rest[i:i + PREFIX_STRIDE], part, done)
            self.start += starts
            self.end += part
        self.states.append(ends)
        self.done.append(done)
        self._sums: tuple[Score, float, float] | None = None
        self._chains: dict[tuple[str, str], _Chain] = {}
        self.timed = 0  # actions timed by key() so far (what stopping early saves)

    def _same(self, cand: list[Action], k: int | None) -> int:
        """How many first actions ``cand`` shares with ``rest`` (``k``: known to share at
        least that many)."""
        k = k or 0
        n = min(len(cand), len(self.rest))
        while k < n and cand[k] is self.rest[k]:
            k += 1
        return k

    # what timing only until a candidate meets rest again reads (weighted mean response:
    # :meth:`_key`, :meth:`run_bounds`), built on first use
    @cached_property
    def pos(self) -> dict[int, int]:
        """Each action's index in rest, by identity."""
        return {id(a): i for i, a in enumerate(self.rest)}

    @cached_property
    def writes(self) -> list[tuple[tuple[object, str], ...]]:
        """The keys each action of rest sets (:func:`_writes`)."""
        return [_writes(a, self.spans) for a in self.rest]

    @cached_property
    def last(self) -> dict[tuple[object, str], int]:
        """Each key's last action in rest."""
        return {key: i for i, ks in enumerate(self.writes) for key in ks}

    @cached_property
    def runs_of(self) -> dict[str, list[int]]:
        """Each request's runs in rest."""
        out: dict[str, list[int]] = {}
        for i, a in enumerate(self.rest):
            if a.kind == "run" and a.request is not None:
                out.setdefault(a.request, []).append(i)
        return out

    @cached_property
    def rec(self) -> list[tuple[Any, ...]]:
        """Per action: what timing it reads and sets (its lane, the lanes of a split
        engine, its engine, request, release and seconds; the keys it sets that rest reads
        later and those it does not; for a run, whether it is its request's only one
        (None: it is not), else False)."""
        out: list[tuple[Any, ...]] = []
        last, runs_of, spans, arrival = self.last, self.runs_of, self.spans, self.arrival
        for i, (a, ks) in enumerate(zip(self.rest, self.writes, strict=True)):
            split = spans.get(a.engine) if spans else None
            release = arrival[a.request] if a.kind == "run" and a.request is not None else \
                arrival[a.on_demand] if a.kind == "load" and a.on_demand is not None else 0.0
            run = a.kind == "run" and a.request is not None
            out.append((
                (a.device, a.lane), lane_keys(a, spans) if split else None, a.engine,
                a.request, release, a.end_s - a.start_s,
                tuple(x for x in ks if last[x] > i), tuple(x for x in ks if last[x] <= i),
                (len(runs_of[a.request or ""]) == 1 or None) if run else False))
        return out

    def key(self, score: Score, cand: list[Action], k: int | None = None,
            inserted: int | None = None) -> tuple[float, ...]:
        """``score``'s key of ``cand`` (as from timing the whole of it), timed and scored
        from its last kept state at or before its change only (``k``: it shares at least
        its first ``k`` actions with ``rest``; ``cand[:k]`` is rest's, its times known).
        ``inserted``: ``cand`` is ``rest`` with that many actions put in at ``k`` (else its
        end shared with ``rest`` is looked for)."""
        if score.objective != "mean_response":
            base = self._same(cand, k) // PREFIX_STRIDE
            tail = cand[base * PREFIX_STRIDE:]
            return score.after(self.done[base], tail, earliest_times(
                tail, self.arrival, self.states[base].copy(), self.spans)[1])
        rest = self.rest
        if inserted is not None and k is not None:
            s_c, p_s = k + inserted, k  # cand[s_c:] is rest[p_s:]
        else:
            k = self._same(cand, k)
            t, n = 0, min(len(cand), len(rest)) - k
            while t < n and cand[-1 - t] is rest[-1 - t]:
                t += 1
            s_c, p_s = len(cand) - t, len(rest) - t
        return self._key(score, cand, k, s_c, p_s)

    def _key(self, score: Score, cand: list[Action], k: int, s_c: int, p_s: int
             ) -> tuple[float, ...]:
        base = k // PREFIX_STRIDE
        k0 = base * PREFIX_STRIDE
        st = self.states[base]
        lane, engine, reqs0 = dict(st.lane), dict(st.engine), st.request
        req: dict[str, float] = {}  # request ends set from k0 on (before: reqs0's)
        new_ends: dict[str, list[float]] = {}  # requests' run ends not rest's
        moved_p: set[int] = set()  # rest's runs whose ends moved
        first: dict[tuple[object, str], float] = {}  # keys' values at k, as they are set
        # the changed part (and the shared actions before it since the kept state)
        ends = Ends()
        ends.lane, ends.engine = lane, engine
        ends.request = req  # the requests it has, with their ends at the kept state
        for a in cand[k0:s_c]:
            if a.request is not None and a.request in reqs0:
                req[a.request] = reqs0[a.request]
        earliest_times(cand[k0:k], self.arrival, ends, self.spans)
        changed = cand[k:s_c]
        for a in changed:  # the values at k of what the changed part sets
            for key in _writes(a, self.spans):
                if key not in first:
                    first[key] = self._value(key, lane, engine, req, reqs0)
        rest_end = self.end
        for a, e in zip(changed, earliest_times(changed, self.arrival, ends, self.spans)[1],
                        strict=True):
            if a.kind == "run" and a.request is not None:  # its end, where not rest's
                p = self.pos.get(id(a))
                if p is None or e != rest_end[p]:
                    new_ends.setdefault(a.request, []).append(e)
                    if p is not None:
                        moved_p.add(p)
        # rest's own actions, until the waiting state is rest's again: where an action
        # ends as in rest, so do the keys it sets
        diff = self._differ(first, k, p_s, lane, engine, req, reqs0)
        weight, rec = score.weight, self.rec
        shift = 0.0  # weighted seconds later that single-run requests of rest's end
        p = p_s
        n = len(rest_end)
        while diff and p < n:
            lk, lanes, eng, q, release, dur, live, dead, alone = rec[p]
            s = lane.get(lk, 0.0)
            if lanes:
                s = max(lane.get(x, 0.0) for x in lanes)
            x = engine.get(eng, 0.0)
            if x > s:
                s = x
            if q is not None:
                x = req[q] if q in req else reqs0.get(q, 0.0)
                if x > s:
                    s = x
            if release > s:
                s = release
            e = s + dur
            if e != rest_end[p]:
                diff.update(live)
                if dead:
                    diff.difference_update(dead)
                if alone:  # its request's only run: its response moves
                    shift += weight[q] * (e - rest_end[p])
                elif alone is None:  # a run of a request with other runs
                    new_ends.setdefault(q, []).append(e)
                    moved_p.add(p)
            else:
                diff.difference_update(live)
                if dead:
                    diff.difference_update(dead)
            lane[lk] = engine[eng] = e
            if lanes:
                for x in lanes:
                    lane[x] = e
            if q is not None:
                req[q] = e
            p += 1
        self.timed += s_c - k0 + p - p_s
        return self._score(score, cand, k, s_c, p_s, shift, new_ends, moved_p)

    @staticmethod
    def _value(key: tuple[object, str], lane: dict[tuple[str, str], float],
               engine: dict[str, float], req: dict[str, float],
               reqs0: dict[str, float]) -> float:
        kind, name = key
        if kind == _ENGINE:
            return engine.get(name, 0.0)
        if kind == _REQUEST:
            return req[name] if name in req else reqs0.get(name, 0.0)
        return lane.get(key, 0.0)  # type: ignore[arg-type]

    def _differ(self, first: dict[tuple[object, str], float], k: int, p_s: int,
                lane: dict[tuple[str, str], float], engine: dict[str, float],
                req: dict[str, float], reqs0: dict[str, float]) -> set[tuple[object, str]]:
        """The keys read after ``rest[p_s]`` on whose values the candidate (timed up to its
        shared end) and ``rest`` (up to ``p_s``) differ: those either set since ``k``."""
        at_rest: dict[tuple[object, str], float] = {}
        for p in range(k, p_s):
            for key in self.writes[p]:
                at_rest[key] = self.end[p]
        out: set[tuple[object, str]] = set()
        last = self.last
        for key in first.keys() | at_rest.keys():
            if last.get(key, -1) < p_s:
                continue  # nothing of rest's reads it again
            mine = self._value(key, lane, engine, req, reqs0)
            theirs = at_rest[key] if key in at_rest else first[key]
            if mine != theirs:
                out.add(key)
        return out

    def _score(self, score: Score, cand: list[Action], k: int, s_c: int, p_s: int,
               shift: float, new_ends: dict[str, list[float]], moved_p: set[int]
               ) -> tuple[float, ...]:
        """The key from rest's sums, changed by ``shift`` (the weighted seconds rest's
        single-run requests end later) and by the other requests whose last run end is not
        rest's (runs put in or moved, or taken out of ``rest[k:p_s]``)."""
        done_r = self.done[-1]
        w, arrival = score.weight, score.arrival
        total_s, total_w = self._rest_sums(score)
        total_s += shift
        rest, runs_of = self.rest, self.runs_of
        gone: set[int] = set()
        if p_s > k:  # rest's actions the changed part does not hold
            held = {id(a) for a in cand[k:s_c]}
            gone = {p for p in range(k, p_s) if id(rest[p]) not in held}
        changed = set(new_ends) | {q for p in gone if rest[p].kind == "run"
                                   and (q := rest[p].request) is not None}
        n_done = len(done_r)
        for q in changed:
            ends = list(new_ends.get(q, ()))
            ends += [self.end[p] for p in runs_of.get(q, ()) if p not in moved_p
                     and p not in gone]
            if q in done_r:
                total_s -= w[q] * (done_r[q] - arrival[q])
                total_w -= w[q]
                n_done -= 1
            if ends:
                total_s += w[q] * (max(ends) - arrival[q])
                total_w += w[q]
                n_done += 1
        mean = total_s / total_w if total_w else 0.0
        return (round(float(len(score.instance.requests) - n_done), 9), round(mean, 9))

    def _rest_sums(self, score: Score) -> tuple[float, float]:
        """(weighted response seconds, weight) of the requests rest serves."""
        if self._sums is None or self._sums[0] is not score:
            w, arrival, done_r = score.weight, score.arrival, self.done[-1]
            self._sums = (score, sum(w[q] * (e - arrival[q]) for q, e in done_r.items()),
                          sum(w[q] for q in done_r))
        return self._sums[1], self._sums[2]

    def run_bounds(self, score: Score, places: list[int], run: Action, ready: list[float]
                   ) -> list[tuple[float, float]] | None:
        """Lower bounds on the keys of ``rest`` with ``run`` (a whole run of a request
        rest does not serve, on a one-device engine) put in after ``rest[j]`` for each j
        of ``places``, not before ``ready`` (what else it waits for there, at the least),
        without timing them: the run's own response plus the least delay it passes down
        its compute lane, ``rest``'s later actions there each starting later by what is
        left of the delay after the slack before it (:class:`_Chain`; other waits can only
        add). None where not weighted mean response, or the engine is split over GPUs."""
        if score.objective != "mean_response" or (self.spans and run.engine in self.spans) \
                or run.request is None:
            return None
        lk = (run.device, "compute")
        chain = self._chains.get(lk)
        if chain is None:
            chain = self._chains[lk] = _Chain(self, lk, score)
        c = np.searchsorted(chain.at, np.asarray(places, dtype=np.int64), side="right")
        q = run.request
        arrival, w = score.arrival[q], score.weight[q]
        start = np.maximum(np.maximum(chain.end_before[c], np.asarray(ready)), arrival)
        end = start + (run.end_s - run.start_s)
        total_s, total_w = self._rest_sums(score)
        means = (total_s + w * (end - arrival) + chain.delays(c, end)) / (total_w + w)
        unserved = float(len(score.instance.requests) - len(self.done[-1]) - 1)
        return [(unserved, m) for m in means.tolist()]

    def state_at(self, k: int) -> Ends:
        """The waiting state before ``rest[k]`` (a copy of its own)."""
        base = k // PREFIX_STRIDE
        ends = self.states[base].copy()
        earliest_times(self.rest[base * PREFIX_STRIDE:k], self.arrival, ends, self.spans)
        return ends


class _Chain:
    """One lane's actions in ``rest`` (their indices), with the running sums
    :meth:`delays` needs: the slack before each (below), and the weights of the runs
    (their requests' only ones) among them.

    The slack before a lane action is the least idle time on a path of waits from the
    lane's action before it to it: the lane itself, or, say, that run's engine unloaded,
    another loaded and its first run (a delay passes a swap whole, though the lane idles
    while the other engine loads). A delay of the action before it less that slack is a
    delay of it, since each action starts when the last of what it waits for ends."""

    def __init__(self, prefix: Prefix, lane: tuple[str, str], score: Score) -> None:
        rest, start, end = prefix.rest, prefix.start, prefix.end
        self.index: list[int] = []
        slack: list[float] = []
        writer: dict[tuple[object, str], int] = {}  # each key's last action so far
        since: dict[int, float] = {}  # the least slack from the lane's last action
        for i, (r, keys) in enumerate(zip(prefix.rec, prefix.writes, strict=True)):
            least = math.inf
            for key in keys:  # what it waits for: the last action of each of its keys
                u = writer.get(key)
                if u is not None and u in since:
                    least = min(least, since[u] + start[i] - end[u])
            if r[0] == lane or (r[1] and lane in r[1]):
                slack.append(0.0 if not self.index else least)
                self.index.append(i)
                since = {i: 0.0}
            elif least < math.inf:
                since[i] = least
            for key in keys:
                writer[key] = i
        at = np.asarray(self.index, dtype=np.int64)
        self.at = at  # the lane's actions' indices in rest
        self.start = np.asarray(start)[at] if len(at) else np.zeros(0)
        self.end_before = np.concatenate(([0.0], np.asarray(end)[at]))  # of the one before
        self.idle = np.cumsum(slack)  # from the lane's first action on
        weights = np.asarray([score.weight[q] if prefix.rec[i][8] and (q := rest[i].request)
                              else 0.0 for i in self.index])
        self.weight = np.concatenate(([0.0], np.cumsum(weights)))
        self.weighted_idle = np.concatenate(([0.0], np.cumsum(weights * self.idle)))

    def delays(self, c: np.ndarray, end: np.ndarray) -> np.ndarray:
        """The least weighted seconds the lane's runs from positions ``c`` on start later
        when actions ending at ``end`` go in before them (one each): the first starts
        ``end - start`` later (if positive), each later one that less the idle time
        between."""
        n = len(self.at)
        if not n:
            return np.zeros(len(c))
        cc = np.minimum(c, n - 1)
        late = np.where(c < n, np.maximum(end - self.start[cc], 0.0), 0.0)
        # positions whose idle time since c is below the delay
        stop = np.maximum(np.searchsorted(self.idle, self.idle[cc] + late, side="left"), c)
        weight = self.weight[stop] - self.weight[c]
        out = (late + self.idle[cc]) * weight - (self.weighted_idle[stop] -
                                                 self.weighted_idle[c])
        return np.where(late > 0, out, 0.0)


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
