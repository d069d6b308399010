"""Clean-ups kept at an equal objective, since they only spare the machine work: an engine
that stays loaded instead of being unloaded and loaded again, and a request's state not
saved and restored when nothing else ran on its engine between."""

from __future__ import annotations

from dataclasses import replace

from planner.domain import Action


def unsplits(actions: list[Action]) -> list[list[Action]]:
    """Plans in which a request whose state was saved and restored on one engine, with
    nothing else on that engine between, is not preempted there: the run before the
    save and the run after the restore become one run (their durations added), the
    two copies go."""
    of: dict[str, list[int]] = {}
    for i, a in enumerate(actions):
        if a.request is not None:
            of.setdefault(a.request, []).append(i)
    out: list[list[Action]] = []
    for seq in of.values():
        for k in range(1, len(seq) - 2):
            r1, sv, rs, r2 = (actions[j] for j in seq[k - 1:k + 3])
            if not (sv.kind == "kv_save" and rs.kind == "kv_restore" and r1.kind == "run"
                    and r2.kind == "run" and not r2.recompute
                    and r1.engine == sv.engine == rs.engine == r2.engine):
                continue
            if any(actions[j].engine == r1.engine for j in range(seq[k - 1] + 1, seq[k + 2])
                   if j not in (seq[k], seq[k + 1])):
                continue  # the engine served another request meanwhile: a real pause
            merged = replace(r1, tokens_to=r2.tokens_to,
                             end_s=r1.end_s + (r2.end_s - r2.start_s))
            gone = set(seq[k:k + 3])
            out.append([merged if j == seq[k - 1] else a for j, a in enumerate(actions)
                        if j not in gone])
    return out


def stay_resident(actions: list[Action]) -> list[list[Action]]:
    """Plans in which one engine, unloaded and loaded again with nothing of it between,
    stays loaded instead (the checker judges the memory); kept when the objective is
    no worse."""
    last: dict[str, int] = {}
    out = []
    for i, a in enumerate(actions):
        k = last.get(a.engine)
        if k is not None and actions[k].kind == "unload" and a.kind == "load":
            out.append([x for j, x in enumerate(actions) if j not in (k, i)])
        last[a.engine] = i
    return out
