"""The executor's memory guard refuses, before it starts, an action that would pass the budget.

The fake-engine test checks the bookkeeping quickly; the real-engine test (marked
``engine``) forces an over-budget plan on SmolLM2 and shows the refusal and a measured
peak that stays within the budget.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from planner.domain import Action, Engine, Schedule
from planner.executor import Replay
from planner.io import load_instance
from planner.memguard import Holding, MemoryGuard, MemoryRefused
from tests.test_executor import FakeEngine, fast_instance

GiB = 2**30


def test_guard_counts_measured_or_planned_whichever_is_larger() -> None:
    holdings = [Holding("e1", "h", 100, 300), Holding("e2", "h", 500, 0),
                Holding("e3", "other", 10**9, 0)]
    guard = MemoryGuard({"h": 1000}, lambda: holdings, lambda: {"h": 50})
    assert guard.in_use("h") == 300 + 500 + 50
    guard.admit("h", 150, "x")  # 850 + 150 = 1000: exactly at the budget is allowed
    with pytest.raises(MemoryRefused, match="would pass its budget"):
        guard.admit("h", 151, "load of e4")
    assert len(guard.refusals) == 1 and "load of e4" in guard.refusals[0]
    guard.admit("unknown-host", 10**12, "x")  # no budget known: nothing to refuse


def over_budget_plan(overlap: bool) -> tuple[Engine, Engine, list[Action]]:
    e1 = Engine("e1", "llama3-8b", "box-gpu0", 0, 512, 0, 3 * GiB)
    e2 = Engine("e2", "qwen14b", "box-gpu0", 0, 1024, 0, 3 * GiB)
    t = 2.0 if overlap else 4.0  # e2's load before / after e1's unload
    acts = [Action("load", "e1", "box-gpu0", 0, 1),
            Action("run", "e1", "box-gpu0", 1, 2, request="a", tokens_from=0, tokens_to=64),
            Action("load", "e2", "box-gpu0", t, t + 1),
            Action("run", "e2", "box-gpu0", t + 1, t + 2, request="b", tokens_from=0,
                   tokens_to=32),
            Action("unload", "e1", "box-gpu0", 3, 3.5 if overlap else 3.9),
            Action("unload", "e2", "box-gpu0", t + 2, t + 2.5)]
    return e1, e2, acts


@pytest.mark.parametrize("overlap", [True, False])
def test_replay_refuses_the_load_that_would_pass_the_budget(tmp_path: Path,
                                                            overlap: bool) -> None:
    FakeEngine.crash_on = set()
    inst = fast_instance()
    host = dataclasses.replace(inst.cluster.hosts[0], memory_bytes=5 * GiB)
    inst = dataclasses.replace(inst, cluster=dataclasses.replace(inst.cluster, hosts=(host,)))
    e1, e2, acts = over_budget_plan(overlap)
    r = Replay(inst, Schedule((e1, e2), tuple(acts)), {"llama3-8b": Path("x"),
               "qwen14b": Path("y")}, tmp_path / "rep.json", engine_factory=FakeEngine)
    report = r.run()
    by = {(a["kind"], a["engine"]): a for a in report["actions"]}
    if not overlap:  # one engine at a time fits: nothing refused
        assert report["status"] == "complete" and report["memory_refusals"] == []
        return
    load2 = by[("load", "e2")]
    assert load2["status"] == "failed" and load2["refused"] is True
    assert "memory guard refused load of e2" in load2["error"]
    assert "budget of 5120 MiB" in load2["error"]
    assert by[("run", "e2")]["status"] == "not_run"  # depends on the refused load
    assert by[("run", "e1")]["status"] == "done"
    assert report["memory_refusals"] == [load2["error"]]
    assert not r.loaded - {"e1"}  # e2 was never loaded


@pytest.mark.engine
def test_real_engines_over_budget_plan_is_refused_and_peak_stays_within(
        tmp_path: Path) -> None:
    from profiler.models import fetch_smollm2

    gguf = fetch_smollm2()
    budget_gib = 0.35
    data = {"format": "planner.instance/1", "name": "tight",
            "cluster": {"hosts": [{"id": "here", "cpu": "local", "threads": 1,
                                   "memory_gib": budget_gib}]},
            "models": [{"id": "smol", "gguf": str(gguf)}],
            "requests": [{"id": "a", "model": "smol", "arrival_s": 0.0, "prompt_tokens": 40,
                          "output_tokens": 8},
                         {"id": "b", "model": "smol", "arrival_s": 0.0, "prompt_tokens": 20,
                          "output_tokens": 8}]}
    (tmp_path / "tight.json").write_text(json.dumps(data))
    inst = load_instance(tmp_path / "tight.json")
    # each engine alone fits (planned 250 MiB against 358 MiB); both together do not
    e1 = Engine("e1", "smol", "here", 0, 256, 0, 250 * 2**20)
    e2 = Engine("e2", "smol", "here", 0, 256, 0, 250 * 2**20)
    acts = [Action("load", "e1", "here", 0, 1),
            Action("run", "e1", "here", 1, 2, request="a", tokens_from=0, tokens_to=8),
            Action("load", "e2", "here", 1, 2),
            Action("run", "e2", "here", 2, 3, request="b", tokens_from=0, tokens_to=8),
            Action("unload", "e1", "here", 3, 3.1), Action("unload", "e2", "here", 3, 3.1)]
    r = Replay(inst, Schedule((e1, e2), tuple(acts)), {"smol": gguf}, tmp_path / "r.json",
               threads=1)
    report = r.run()
    by = {(a["kind"], a["engine"]): a for a in report["actions"]}
    assert by[("load", "e2")]["status"] == "failed"
    assert by[("load", "e2")]["error"].startswith("memory guard refused load of e2")
    assert by[("run", "e1")]["status"] == "done"
    dev = report["devices"][0]
    assert 0 < dev["measured_peak_host_bytes"] <= dev["budget_host_bytes"]
