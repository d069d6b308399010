"""Slot batching after the search: a one-slot plan's runs re-dispatched on slot engines.

The CP-SAT model with slot engines keeps their compute lanes pairwise (each run on
a slot engine against every run of another engine on its devices, constraints.py),
which outgrows CP-SAT quickly (128 requests on one GPU: 655,072 pairs, more than its
presolve gets through in the time limit). Where it is left out (solve.py), this pass
takes the one-slot plan CP-SAT found, keeps its placement, layer splits, loads and
unloads, gives the engines ``n_parallel`` slots and replays each device's compute
lane with continuous batching:

- a run is ready at its arrival, once its engine (the same engine period as in the
  plan) is loaded;
- the lane serves one engine at a time (SPEC rule 2); while it does, a ready run of
  that engine joins at the next step if a slot is free, until a run of another engine
  on the device has waited ``patience`` (then the engine takes no new runs, and the
  lane turns once its sequences end: no engine starves);
- when the engine's sequences have all finished, the lane turns to the engine whose
  waiting run is the oldest;
- each patience in ``PATIENCE`` (multiples of the lane's mean whole-run time with one
  slot) and each slot count is tried, and the best plan kept;
- steps are :func:`planner.slots.batch_step`'s, as in the slot replay
  (:func:`planner.slots.batched_times`).

The result is kept only when every run ends before its engine's unload, the plan
checker finds nothing, and the objective improves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from planner.checker import check_plan
from planner.costmodel.base import CostModel
from planner.domain import Action, Engine, Instance, Schedule
from planner.metrics import compute_metrics, objective_key
from planner.slots import batch_step

#: patience values tried, in units of the lane's mean run time in the one-slot plan
PATIENCE = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, float("inf"))


@dataclass
class _Run:
    index: int  # in the schedule's actions
    engine: str
    ready: float
    prompt: int
    tokens: int
    unload: float  # the engine period's unload start (inf: never unloaded)
    admitted: float = 0.0
    end: float = 0.0


def _periods(schedule: Schedule) -> dict[str, list[tuple[float, float]]]:
    """Engine -> its residency periods (load end, unload start), in time order."""
    out: dict[str, list[tuple[float, float]]] = {}
    loads = sorted((a for a in schedule.actions if a.kind in ("load", "unload")),
                   key=lambda a: a.start_s)
    for a in loads:
        if a.kind == "load":
            out.setdefault(a.engine, []).append((a.end_s, float("inf")))
        elif out.get(a.engine):
            s, _e = out[a.engine][-1]
            out[a.engine][-1] = (s, a.start_s)
    return out


def _whole_runs(instance: Instance, schedule: Schedule) -> Schedule:
    """Preempted requests with a piece on a GPU (pieces, KV copies, recomputes) as one
    whole run on the engine of their last GPU piece: batching gives them the slot they
    waited for (a request prefilled on a GPU and decoded on a CPU, the polish's hand-over,
    too: its GPU piece becomes the whole run). Requests preempted on CPUs only keep their
    pieces (CPU lanes keep their times)."""
    pieces: dict[str, list[Action]] = {}
    for a in schedule.actions:
        if a.kind == "run" and a.request is not None:
            pieces.setdefault(a.request, []).append(a)

    def on_gpu(a: Action) -> bool:
        return instance.cluster.device(a.device).kind == "gpu"

    split = {r for r, ps in pieces.items()
             if (len(ps) > 1 or ps[0].tokens_from != 0) and any(on_gpu(a) for a in ps)}
    if not split:
        return schedule
    actions = [a for a in schedule.actions
               if a.request not in split or a.kind not in ("run", "kv_save", "kv_restore")]
    for r in split:
        last = max((a for a in pieces[r] if on_gpu(a)), key=lambda a: a.start_s)
        actions.append(replace(last, tokens_from=0, recompute=False,
                               tokens_to=instance.request(r).output_tokens))
    return replace(schedule, actions=tuple(sorted(actions, key=lambda a: (a.start_s, a.end_s))))


def _lane(cost: CostModel, engines: dict[str, Engine], runs: list[_Run],
          patience: float) -> bool:
    """Continuous batching on one device's compute lane; False if a run would outlast
    its engine's residency. ``patience``: how long a ready run of another engine may
    wait before the served engine stops taking new runs (and the lane turns once its
    sequences end)."""
    pending = sorted(runs, key=lambda r: (r.ready, r.index))
    t = 0.0
    while pending:
        ready = [r for r in pending if r.ready <= t + 1e-9]
        if not ready:
            t = min(r.ready for r in pending)
            continue
        eid = min(ready, key=lambda r: (r.ready, r.index)).engine
        cfg = engines[eid].config
        active: dict[int, list[int]] = {}  # run index -> [cached tokens, tokens left]
        by_index = {r.index: r for r in pending}
        while True:
            others_wait = any(r.engine != eid and r.ready + patience <= t + 1e-9
                              for r in pending if r.index not in active)
            joining: list[_Run] = []
            if not others_wait or not active:
                for r in pending:
                    if (r.engine == eid and r.index not in active and r.ready <= t + 1e-9
                            and len(active) + len(joining) < cfg.n_parallel):
                        joining.append(r)
            if not active and not joining:
                break
            for r in joining:
                r.admitted = t  # its prompt is prefilled in this step
            t, done = batch_step(cost, cfg, t, active,
                                 [(r.index, r.prompt, r.tokens) for r in joining])
            for i in done:
                run = by_index[i]
                run.end = t
                pending.remove(run)
                if run.end > run.unload + 1e-9:
                    return False
    return True


def batch_slots(instance: Instance, cost: CostModel, schedule: Schedule,
                slots: Iterable[int], objective: str) -> tuple[Schedule, int] | None:
    """The best of ``schedule`` with its GPU engines given each slot count above 1 in
    ``slots`` and their runs re-dispatched with continuous batching (module docstring),
    with that count; None where that does not apply (split or slot engines already),
    does not hold (a run past its engine's unload, the checker), or is no better."""
    counts = sorted({n for n in slots if n > 1})
    if not counts or any(e.shares or e.n_parallel != 1 for e in schedule.engines):
        return None
    best_key = objective_key(compute_metrics(instance, schedule.actions), objective)
    schedule = _whole_runs(instance, schedule)
    # on a CPU a batch costs more than it gains (README): CPU lanes keep their times
    gpu = {e.id for e in schedule.engines if instance.cluster.device(e.device).kind == "gpu"}
    periods = _periods(schedule)
    lanes: dict[str, list[_Run]] = {}
    for i, a in enumerate(schedule.actions):
        if a.kind != "run" or a.engine not in gpu:
            continue
        req = instance.request(a.request or "")
        period = next((p for p in periods.get(a.engine, []) if p[0] <= a.start_s + 1e-9
                       and a.end_s <= p[1] + 1e-9), None)
        if period is None:
            return None
        lanes.setdefault(a.device, []).append(_Run(
            i, a.engine, max(req.arrival_s, period[0]), req.prompt_tokens,
            (a.tokens_to or 0) - (a.tokens_from or 0), period[1]))
    mean = _mean_runs(cost, schedule, lanes)
    best: tuple[Schedule, int] | None = None
    for n in counts:
        engines = {e.id: _with_slots(cost, e, n) if e.id in gpu else e
                   for e in schedule.engines}
        for factor in PATIENCE:
            actions: list[Action] = list(schedule.actions)
            if not all(_lane(cost, engines, runs, factor * mean[d])
                       for d, runs in lanes.items()):
                continue
            for runs in lanes.values():
                for r in runs:
                    actions[r.index] = replace(actions[r.index], start_s=r.admitted,
                                               end_s=r.end)
            out = Schedule(tuple(engines[e.id] for e in schedule.engines),
                           tuple(sorted(actions, key=lambda a: (a.start_s, a.end_s))))
            key = objective_key(compute_metrics(instance, out.actions), objective)
            if key < best_key and not check_plan(instance, out):
                best, best_key = (out, n), key
    return best


def _mean_runs(cost: CostModel, schedule: Schedule, lanes: dict[str, list[_Run]]
               ) -> dict[str, float]:
    """Each lane's mean run time with one slot, the patience's unit: each run timed whole
    from the cost model (a request handed over to a CPU is one run here, at its GPU
    piece's place and times, which are far shorter than its whole run's)."""
    config = {e.id: e.config for e in schedule.engines}
    return {d: sum(cost.run_s(config[r.engine], r.prompt, 0, r.tokens) for r in runs)
            / len(runs) for d, runs in lanes.items()}


def _with_slots(cost: CostModel, engine: Engine, n_parallel: int) -> Engine:
    """``engine`` with ``n_parallel`` slots and the memory that takes (a KV cache each)."""
    cfg = replace(engine.config, n_parallel=n_parallel)
    return replace(engine, n_parallel=n_parallel, gpu_bytes=cost.gpu_bytes(cfg),
                   host_bytes=cost.host_bytes(cfg))
