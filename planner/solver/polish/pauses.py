"""Pauses: a request runs until a heavier one arrives, which runs on the same device, then
the paused one goes on; and a pause whose first part was timed too early, made longer."""

from __future__ import annotations

import time
from dataclasses import replace

from planner.costmodel.base import CostModel
from planner.domain import Action, Engine, EngineConfig, Instance, Schedule
from planner.executor.deps import earliest_times, spans_of
from planner.solver.polish.moves import by_request, drop_empty, movable_runs
from planner.solver.polish.timing import Prefix, Score, first_valid
from planner.solver.preempt import MIN_PART


def pause_moves(instance: Instance, cost: CostModel, schedule: Schedule,
                order: list[Action], by_model: dict[str, list[Engine]], score: Score,
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
    movable = movable_runs(order, by_model)
    engines = {e.id: e for es in by_model.values() for e in es}
    index = {id(a): i for i, a in enumerate(order)}
    prefix = Prefix(order, arrival, spans)  # the pair goes in at j: order[:j] stays
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
                    k = tokens_by(cost, e.config, rq.prompt_tokens, out, ax - s1)
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
                            cand = drop_empty(cand, movable[y].engine)
                    cand = drop_empty(cand, xrun.engine)
                    if all(a is b for a, b in zip(cand[:j], order[:j], strict=True)):
                        ends = prefix.end[:j] + earliest_times(cand[j:], arrival,
                                                               state.copy(), spans)[1]
                    else:  # x's emptied period began before j
                        ends = earliest_times(cand, arrival, spans=spans)[1]
                    key = score(cand, ends)
                    if key < best_key:
                        cands.append((key, cand))
    return first_valid(instance, schedule, arrival, cands)


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


def tokens_by(cost: CostModel, cfg: EngineConfig, prompt: int, out: int, seconds: float,
              start: int = 0) -> int | None:
    """The most output tokens a run from token ``start`` has made within ``seconds`` (its
    prefill first when ``start`` is 0), when that leaves at least MIN_PART (as CP-SAT's
    split points) on both sides."""
    lo, hi = start + MIN_PART, out - MIN_PART
    seconds += 1e-9  # float sums of per-token times: 30 tokens at 0.1 s end at 3 s
    if hi < lo or cost.run_s(cfg, prompt, start, lo) > seconds:
        return None
    while lo < hi:  # the largest k in [lo, hi] whose run fits
        mid = (lo + hi + 1) // 2
        if cost.run_s(cfg, prompt, start, mid) <= seconds:
            lo = mid
        else:
            hi = mid - 1
    return lo


def fills(instance: Instance, cost: CostModel, actions: list[Action],
          engines: dict[str, Engine]) -> list[list[Action]]:
    """Plans in which a request paused on one engine (two runs there, its state saved
    and restored or recomputed) makes more tokens before its pause, by as long as its
    device's actions between its first part and the next run there leave that run
    waiting after the first part (a move may have started the first part earlier than
    the pause was timed for); as many as fit, with MIN_PART left for the second part."""
    runs, copies = by_request(actions)
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
        made = tokens_by(cost, cfg, rq.prompt_tokens, rq.output_tokens,
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
