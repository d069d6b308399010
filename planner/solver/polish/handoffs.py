"""Hand-overs: a request prefilled on a GPU, then decoded on its host's CPU.

On a GPU workload whose GPU is the bottleneck, the host CPU is a second, slow device. Its
prefill is what makes it slow for large models (analytic cost model: the 14B F16 model
prefills 85 times slower on the host CPU than on an RTX 4090, but decodes only 5.5 times
slower; a 500-token prompt takes the CPU 35 s, the GPU 0.4 s). A run on a CPU engine
therefore costs much less CPU time when its prompt is prefilled on a GPU engine of the
same model, where that engine is resident anyway, and its state is handed over (SPEC: a
``kv_save`` on the GPU engine, a ``kv_restore`` on the CPU engine, the request's rest
there). Measured on ``1gpu-4models`` (seed 52, GPU alone resident for every model, a
fluid simulation of preemptive WSPT): the host CPU decoding requests prefilled on the GPU
lowers the mean response from 26.4 to 22.0 s.

The move: a request served by one whole run gets its prompt and its first ``MIN_PART``
tokens on a GPU engine of its model on the same host (after one of that engine's loads or
runs, where it is resident), saved there, restored on a CPU engine of its model and
finished there: at its run's place when it ran on that CPU engine, else after one of
the CPU engine's loads or runs, or in a period of its own (loaded for it and unloaded
after). Kept when the objective improves and the checker accepts the plan.

A second kind, the *relay*, keeps a request that waits for its GPU engine there, but lets
the CPU decode part of it while it waits: its prompt and first ``MIN_PART`` tokens on a
GPU engine of its model, its state handed to the CPU engine, which decodes up to token
``k`` (as many as the CPU makes before the request's run was to start, or half as many), then
handed back (``kv_save`` on the CPU engine, ``kv_restore`` at the request's old place on
its GPU engine), which makes the rest. The GPU then spends less time on it, and every
request behind it gains that time. This is what the interval-indexed LP bound does with
the host CPU (docs/solver.md, "Missing").
"""

from __future__ import annotations

import itertools
import time

from planner.costmodel.base import CostModel
from planner.domain import Action, Engine, Instance, Request, Schedule
from planner.executor.deps import spans_of
from planner.solver.polish.moves import drop_empty, movable_runs, period_slots
from planner.solver.polish.pauses import tokens_by
from planner.solver.polish.timing import Prefix, Score, first_valid
from planner.solver.preempt import MIN_PART

#: places tried for the GPU part (the engine's resident actions from the last one before
#: the request's arrival on, and the last ones before the request's own run) and for the
#: CPU part after it
GPU_PLACES = 6
CPU_PLACES = 3


def handoffs(instance: Instance, cost: CostModel, schedule: Schedule, order: list[Action],
             by_model: dict[str, list[Engine]], score: Score, best_key: tuple[float, ...],
             deadline: float) -> tuple[list[Action], tuple[float, ...]] | None:
    """The best hand-over or relay (module docstring) that beats ``best_key``, compacted
    and checked; None when none does."""
    arrival, weight = score.arrival, score.weight
    spans = spans_of(schedule)
    kind = {d.id: d.kind for d in instance.cluster.devices}
    host = {d.id: d.host for d in instance.cluster.devices}
    engines = {e.id: e for es in by_model.values() for e in es}
    movable = movable_runs(order, by_model)
    cands: list[tuple[tuple[float, ...], list[Action]]] = []
    costly = sorted(movable, key=lambda q: -weight[q] * (movable[q].end_s - arrival[q]))
    for q in costly:
        if time.perf_counter() >= deadline:
            break
        run = movable[q]
        rq = instance.request(q)
        out = rq.output_tokens
        if out < 2 * MIN_PART:
            continue
        e = engines[run.engine]
        es = [x for x in by_model.get(rq.model, []) if rq.total_tokens <= x.n_ctx]
        on_gpu = kind[e.device] == "gpu"
        cpus = [c for c in es if kind[c.device] == "cpu" and (on_gpu or c.id == e.id)]
        if not cpus:
            continue
        at = next(i for i, a in enumerate(order) if a is run)
        rest = drop_empty([a for a in order if a is not run], run.engine)
        kept = len(rest) == len(order) - 1  # no period emptied: rest[at] followed the run
        prefix = Prefix(rest, arrival, spans)
        stay = at if not on_gpu and kept else None
        ctx = rq.prompt_tokens + MIN_PART
        for c in cpus:
            # the end of c's device's last action up to each index of rest
            cpu_free = list(itertools.accumulate(
                (a.end_s if a.device == c.device else 0.0 for a in rest), max))
            for g in es:
                if kind[g.device] != "gpu" or host[g.device] != host[c.device]:
                    continue
                first = Action("run", g.id, g.device, 0.0,
                               cost.run_s(g.config, rq.prompt_tokens, 0, MIN_PART), q, 0,
                               MIN_PART)
                b = cost.kv_bytes(g.config, ctx)
                save = Action("kv_save", g.id, g.device, 0.0, cost.kv_save_s(g.config, ctx),
                              q, bytes=b)
                restore = Action("kv_restore", c.id, c.device, 0.0,
                                 cost.kv_restore_s(c.config, ctx), q, bytes=b)
                second = Action("run", c.id, c.device, 0.0,
                                cost.run_s(c.config, rq.prompt_tokens, MIN_PART, out), q,
                                MIN_PART, out)
                for i in _gpu_places(rest, g, arrival[q], at):
                    head = [*rest[:i + 1], first, save]
                    for j, period in _cpu_places(rest, c, i, stay):
                        ways: list[tuple[list[Action], list[Action]]] = [([restore, second], [])]
                        if on_gpu and kept and j < at:  # relays: back to the GPU at ``at``
                            # when the CPU part could start, as the plan is timed now
                            free = cpu_free[j] if j >= 0 else 0.0
                            if period:
                                free += cost.load_s(c.config)
                            ready = max(rest[i].end_s + first.end_s + save.end_s, free) + \
                                restore.end_s
                            ways += _relays(cost, rq, e, c, restore, run.start_s - ready)
                        for cpu_part, gpu_part in ways:
                            tail = _period(cost, c, cpu_part) if period else cpu_part
                            cand = [*head, *rest[i + 1:j + 1], *tail]
                            if gpu_part:
                                cand += [*rest[j + 1:at], *gpu_part, *rest[at:]]
                            else:
                                cand += rest[j + 1:]
                            key = prefix.key(score, cand)
                            if key < best_key:
                                cands.append((key, cand))
    return first_valid(instance, schedule, arrival, cands)


def _gpu_places(rest: list[Action], g: Engine, arrival: float, at: int) -> list[int]:
    """Indices after which ``g`` is resident (its loads and runs): the last one that ends
    before ``arrival`` and the next ones, GPU_PLACES in all, and the last two before
    ``at`` (where the request's run was)."""
    mine = [i for i, a in enumerate(rest) if a.engine == g.id and a.kind in ("load", "run")]
    before = [k for k, i in enumerate(mine) if rest[i].end_s <= arrival]
    k0 = before[-1] if before else 0
    return sorted({*mine[k0:k0 + GPU_PLACES], *[i for i in mine if i < at][-2:]})


def _cpu_places(rest: list[Action], c: Engine, i: int, stay: int | None
                ) -> list[tuple[int, bool]]:
    """(index in ``rest`` after which the CPU part goes, whether in a period of its own)
    for a GPU part after ``rest[i]``: the old run's place on that CPU engine (``stay``:
    its index in the plan, which is its successor's index in ``rest``), or after the
    engine's next resident actions, or in new periods of it."""
    if stay is not None:
        return [(max(i, stay - 1), False)]
    out = [(j, False) for j in range(i, len(rest))
           if rest[j].engine == c.id and rest[j].kind in ("load", "run")][:CPU_PLACES]
    # a period that may start before the GPU part starts right after it (its load waits
    # for nothing of the GPU's, so it still loads as early as its device lets it)
    slots = sorted({max(j, i) for j in period_slots(rest, c)})
    return out + [(j, True) for j in slots[:CPU_PLACES]]


def _period(cost: CostModel, c: Engine, part: list[Action]) -> list[Action]:
    """``part`` in a period of its own of ``c``: loaded before, unloaded after."""
    return [Action("load", c.id, c.device, 0.0, cost.load_s(c.config)), *part,
            Action("unload", c.id, c.device, 0.0, cost.unload_s(c.config))]


def _relays(cost: CostModel, rq: Request, e: Engine, c: Engine,
            restore: Action, window: float) -> list[tuple[list[Action], list[Action]]]:
    """(CPU part: the restore, a run to token ``k``, a save; GPU part: the restore on
    ``e``, the rest) for the most tokens ``k`` the CPU makes in ``window`` seconds and half
    as many, each part at least MIN_PART tokens."""
    p, out = rq.prompt_tokens, rq.output_tokens
    most = tokens_by(cost, c.config, p, out, window, MIN_PART)
    if most is None:
        return []
    ways = []
    for k in sorted({most, (MIN_PART + most) // 2}):
        if k < 2 * MIN_PART:
            continue
        b = cost.kv_bytes(c.config, p + k)
        ways.append((
            [restore, Action("run", c.id, c.device, 0.0, cost.run_s(c.config, p, MIN_PART, k),
                             rq.id, MIN_PART, k),
             Action("kv_save", c.id, c.device, 0.0, cost.kv_save_s(c.config, p + k), rq.id,
                    bytes=b)],
            [Action("kv_restore", e.id, e.device, 0.0, cost.kv_restore_s(e.config, p + k),
                    rq.id, bytes=b),
             Action("run", e.id, e.device, 0.0, cost.run_s(e.config, p, k, out), rq.id, k,
                    out)]))
    return ways
