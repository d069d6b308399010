"""The plan checker against a hand-written valid plan and one mutation per rule."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from planner.checker import check_plan
from planner.domain import Action, Engine, Instance, Plan, Schedule, SolverInfo
from planner.io import parse_instance, plan_to_json
from tests.conftest import tiny_dict

E1 = Engine("e1", "llama3-8b", "box-gpu0", 32, 512, 5 * 10**9, 1 * 10**9)
E2 = Engine("e2", "qwen14b", "box-gpu0", 40, 1024, 20 * 10**9, 10 * 10**9)


def run(req: str, eng: str, t0: float, t1: float, a: int, b: int, rc: bool = False) -> Action:
    return Action("run", eng, "box-gpu0", t0, t1, request=req, tokens_from=a, tokens_to=b,
                  recompute=rc)


def valid_actions() -> list[Action]:
    """Request a is preempted by c (KV save, then restore) on the same engine."""
    return [
        Action("load", "e1", "box-gpu0", 0, 2),
        run("a", "e1", 2, 4, 0, 32),
        Action("kv_save", "e1", "box-gpu0", 4, 4.1, request="a", bytes=1000),
        run("c", "e1", 4.1, 6, 0, 128),
        Action("kv_restore", "e1", "box-gpu0", 6, 6.1, request="a", bytes=1000),
        run("a", "e1", 6.1, 7, 32, 64),
        Action("unload", "e1", "box-gpu0", 7, 7.2),
        Action("load", "e2", "box-gpu0", 7.2, 12),  # starts as e1's unload ends: touching
        run("b", "e2", 12, 14, 0, 32),
        run("d", "e2", 30, 31, 0, 16),
    ]


def instance() -> Instance:
    return parse_instance(tiny_dict(), "tiny.json", Path("."), "x")


def check(actions: list[Action], engines: tuple[Engine, ...] = (E1, E2)) -> list[str]:
    return [str(v) for v in check_plan(instance(), Schedule(engines, tuple(actions)))]


def replace(actions: list[Action], i: int, **kw: Any) -> list[Action]:
    out = list(actions)
    out[i] = dataclasses.replace(out[i], **kw)
    return out


def test_valid_plan_passes() -> None:
    assert check(valid_actions()) == []


def test_recompute_instead_of_kv_transfer_is_valid() -> None:
    acts = [a for a in valid_actions() if a.kind not in ("kv_save", "kv_restore")]
    acts = [dataclasses.replace(a, recompute=True) if a.request == "a" and a.tokens_from == 32
            else a for a in acts]
    assert check(acts) == []


@pytest.mark.parametrize(("mutate", "rule"), [
    # rule 1: the action's device is not its engine's device
    (lambda a: replace(a, 1, device="box"), "rule 1"),
    # rule 1: an engine that does not exist
    (lambda a: replace(a, 3, engine="e9"), "rule 1"),
    # rule 2: c's run starts before a's first run ends (compute lane overlap)
    (lambda a: replace(a, 3, start_s=3.9), "rule 2"),
    # rule 2: e2's load starts while e1's unload runs (one transfer lane)
    (lambda a: replace(a, 7, start_s=7.1), "rule 2"),
    # rule 3: a runs before its engine has finished loading
    (lambda a: replace(a, 1, start_s=1.5), "rule 3"),
    # rule 3: d runs after e2 was unloaded
    (lambda a: [*a, Action("unload", "e2", "box-gpu0", 20, 21)], "rule 3"),
    # rule 5: a token gap: the second run of a starts at 33
    (lambda a: replace(a, 5, tokens_from=33), "rule 5"),
    # rule 5: d starts before it arrives (30 s)
    (lambda a: replace(a, 9, start_s=29), "rule 5"),
    # rule 5: b served by an engine of another model
    (lambda a: replace(a, 8, engine="e1"), "rule 5"),
    # rule 6: no kv_save/kv_restore and no recompute: a's state is lost to c
    (lambda a: [x for x in a if x.kind not in ("kv_save", "kv_restore")], "rule 6"),
    # rule 6: restored bytes differ from saved bytes
    (lambda a: replace(a, 4, bytes=999), "rule 6"),
])
def test_each_rule_is_enforced(mutate: Any, rule: str) -> None:
    found = check(mutate(valid_actions()))
    assert any(v.startswith(rule) for v in found), found


def test_gpu_memory_over_capacity() -> None:
    # rule 4: 30 GB on a 24 GiB GPU
    big = dataclasses.replace(E2, gpu_bytes=30 * 10**9)
    assert any("rule 4" in v and "GPU box-gpu0" in v for v in check(valid_actions(), (E1, big)))


def test_co_resident_engines_sum_memory() -> None:
    # rule 4: e2 loaded while e1 is still resident: 5 + 21 GB > 24 GiB, though each fits
    e2 = dataclasses.replace(E2, gpu_bytes=21 * 10**9)
    acts = valid_actions()
    acts = [a for a in acts if a.kind != "unload"]
    found = check(acts, (E1, e2))
    assert any("rule 4" in v for v in found), found
    assert check(valid_actions(), (E1, e2)) == []  # with e1 unloaded first, it fits


def test_saved_state_counts_in_host_memory() -> None:
    # rule 4: a 68 GB saved state plus e1's 1 GB of host memory exceed the 64 GiB (68.7 GB) host
    acts = replace(valid_actions(), 2, bytes=68 * 10**9)
    acts = replace(acts, 4, bytes=68 * 10**9)
    assert any("rule 4" in v and "host box" in v for v in check(acts))


def test_metrics_in_file_must_match_actions() -> None:
    inst = instance()
    sched = Schedule((E1, E2), tuple(valid_actions()))
    plan = Plan("tiny", "x", SolverInfo("hand", "FEASIBLE"), sched)
    data = plan_to_json(plan, inst)
    assert check_plan(inst, sched, data) == []
    data["metrics"]["mean_response_s"] += 1.0
    data["requests"][0]["completion_s"] = 1.0
    found = [str(v) for v in check_plan(inst, sched, data)]
    assert any("metrics.mean_response_s" in v for v in found)
    assert any("requests: a completion_s" in v for v in found)
