"""Run times on engines with parallel slots at the concurrency the plan gives them.

Schedulers size a run on an engine with ``n`` slots conservatively, as if all
``n`` slots decoded throughout. Once the runs' starts are fixed, this module
replays each slot engine's continuous batching step by step with the cost
model's batched step time (:meth:`CostModel.step_s`): runs join at their
planned starts (their prompts prefilled in the step that admits them), every
active sequence gains a token per step, and a run ends with its last token.
A run's end only moves earlier (never past the conservative end), so every
lane, residency, memory and order relation of the plan still holds.
"""

from __future__ import annotations

from dataclasses import replace

from planner.costmodel.base import CostModel
from planner.domain import Action, EngineConfig, Instance, Schedule


def batch_step(cost: CostModel, cfg: EngineConfig, t: float, active: dict[int, list[int]],
               joining: list[tuple[int, int, int]]) -> tuple[float, list[int]]:
    """One continuous-batching step of a slot engine starting at ``t``: every run in
    ``active`` (run -> [cached tokens, tokens still to generate]) gains a token, the
    ``joining`` runs ``(run, prompt_tokens, output_tokens)`` have their prompts prefilled
    in it and become active. Returns the step's end and the runs that finished (they
    leave ``active``)."""
    depth = (sum(a[0] for a in active.values()) // len(active)) if active else 0
    t += cost.step_s(cfg, len(active), depth, sum(p for _i, p, _n in joining))
    for a in active.values():
        a[0] += 1
        a[1] -= 1
    for i, p, n in joining:
        active[i] = [p, n]
    done = [i for i, a in active.items() if a[1] <= 0]
    for i in done:
        del active[i]
    return t, done


def batched_times(cost: CostModel, cfg: EngineConfig,
                  runs: list[tuple[float, int, int]]) -> list[tuple[float, float]]:
    """(admission, end) of each run ``(join time, prompt_tokens, output_tokens)`` on one
    slot engine: a run joins the engine's queue at its join time, is admitted at the
    start of the first step with a free slot (in join order) and ends with its last
    token."""
    order = sorted(range(len(runs)), key=lambda i: runs[i][0])
    out = [(0.0, 0.0)] * len(runs)
    admitted = [0.0] * len(runs)
    active: dict[int, list[int]] = {}  # run -> [cached tokens, tokens still to generate]
    t, k = 0.0, 0
    while k < len(order) or active:
        if not active:
            t = max(t, runs[order[k]][0])
        joining: list[int] = []
        while k < len(order) and runs[order[k]][0] <= t + 1e-9 and \
                len(active) + len(joining) < cfg.n_parallel:
            joining.append(order[k])
            admitted[order[k]] = t
            k += 1
        if active or joining:
            t, done = batch_step(cost, cfg, t, active,
                                 [(i, runs[i][1], runs[i][2]) for i in joining])
            for i in done:
                out[i] = (admitted[i], t)
        if not active and not joining and k < len(order):
            t = max(t, runs[order[k]][0])
    return out


def batched_ends(cost: CostModel, cfg: EngineConfig,
                 runs: list[tuple[float, int, int]]) -> list[float]:
    """End of each run ``(start, prompt_tokens, output_tokens)`` on one slot engine."""
    return [end for _admit, end in batched_times(cost, cfg, runs)]


def retime_slot_runs(instance: Instance, cost: CostModel, schedule: Schedule) -> Schedule:
    """``schedule`` with every whole run on a slot engine ending when batching ends it
    (at most its planned end)."""
    engines = {e.id: e for e in schedule.engines if e.n_parallel > 1}
    if not engines:
        return schedule
    by_engine: dict[str, list[int]] = {}
    for i, a in enumerate(schedule.actions):
        if a.kind == "run" and a.engine in engines and a.tokens_from == 0 and not a.recompute:
            by_engine.setdefault(a.engine, []).append(i)
    actions: list[Action] = list(schedule.actions)
    for eid, idx in by_engine.items():
        reqs = [instance.request(actions[i].request or "") for i in idx]
        runs = [(actions[i].start_s, r.prompt_tokens, actions[i].tokens_to or 0)
                for i, r in zip(idx, reqs, strict=True)]
        ends = batched_ends(cost, engines[eid].config, runs)
        for i, end in zip(idx, ends, strict=True):
            a = actions[i]
            actions[i] = replace(a, end_s=max(a.start_s, min(a.end_s, end)))
    return Schedule(schedule.engines, tuple(actions))
