"""Replay faults with the fake engine (fast); tests/test_faults.py injects the same
faults into real `planner execute` processes on llama.cpp engines."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

import planner.executor.replay
from planner.domain import Schedule
from planner.executor import Replay, lane_dependencies, plan_order
from tests.test_checker import E1, E2, valid_actions
from tests.test_executor import FakeEngine, fast_instance


class DiesOnX(FakeEngine):
    """The engine of model file x dies on its second decode (a worker killed mid-run)."""

    def load(self, path: Path, n_gpu_layers: int, n_ctx: int) -> Any:
        self.path, self.decodes = path, 0
        return super().load(path, n_gpu_layers, n_ctx)

    def decode(self, n: int) -> Any:
        self.decodes += 1
        if self.path == Path("x") and self.decodes == 2:
            raise RuntimeError("engine worker (pid 1) died during decode; exit code -9")
        return super().decode(n)


def test_lane_dependencies_are_only_the_lane_ones() -> None:
    acts = plan_order(Schedule((E1, E2), tuple(valid_actions())))
    lanes = lane_dependencies(acts)
    by = {i: (a.kind, a.engine, a.request) for i, a in enumerate(acts)}
    # e2's load waits for e1's unload only because both use the transfer lane
    i = next(i for i, a in by.items() if a == ("load", "e2", None))
    assert {by[d] for d in lanes[i]} == {("unload", "e1", None)}
    # a run right after its engine's load waits for it through the engine: not a lane dep
    j = next(i for i, a in by.items() if a == ("run", "e1", "a"))
    assert lanes[j] == set()


def test_failure_marks_its_dependents_and_frees_the_lane(tmp_path: Path) -> None:
    r = Replay(fast_instance(), Schedule((E1, E2), tuple(valid_actions())),
               {"llama3-8b": Path("x"), "qwen14b": Path("y")}, tmp_path / "report.json",
               engine_factory=DiesOnX)
    report = r.run()
    st = {(a["kind"], a["engine"], a.get("request")): a for a in report["actions"]}
    failed = [a for a in report["actions"] if a["status"] == "failed"]
    assert [(a["kind"], a["request"]) for a in failed] == [("run", "c")]
    # e1's later actions and request c's depend on the failure
    for key in [("kv_restore", "e1", "a"), ("run", "e1", "a"), ("unload", "e1", None)]:
        if key in st and st[key]["index"] > failed[0]["index"]:
            assert st[key]["status"] == "not_run", st[key]
            assert st[key]["error"].startswith("depends on action ")
    # e2 shares the device's lanes with e1, yet all its actions run
    assert all(a["status"] == "done" for a in report["actions"] if a["engine"] == "e2")
    assert report["status"] == "partial"


def test_refused_report_writes_keep_the_replay_going(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = planner.executor.replay.write_json_atomic
    calls = {"n": 0}

    def flaky(path: Path, data: Any) -> Path:
        calls["n"] += 1
        if 3 <= calls["n"] <= 6:  # the disk is full for a while
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(planner.executor.replay, "write_json_atomic", flaky)
    monkeypatch.setattr(planner.executor.replay, "WRITE_EVERY_S", 0.0)  # one per action
    out = tmp_path / "report.json"
    r = Replay(fast_instance(), Schedule((E1, E2), tuple(valid_actions())),
               {"llama3-8b": Path("x"), "qwen14b": Path("y")}, out, engine_factory=FakeEngine)
    report = r.run()
    assert calls["n"] > 6 and r.write_error is None
    on_disk = json.loads(out.read_text())
    assert on_disk["status"] == "complete" == report["status"]
    assert all(a["status"] == "done" for a in on_disk["actions"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary files


def test_report_write_refused_to_the_end(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: Path, data: Any) -> Path:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(planner.executor.replay, "write_json_atomic", refuse)
    r = Replay(fast_instance(), Schedule((E1, E2), tuple(valid_actions())),
               {"llama3-8b": Path("x"), "qwen14b": Path("y")}, tmp_path / "r.json",
               engine_factory=FakeEngine)
    report = r.run()  # every measurement is kept in memory
    assert r.write_error == "OSError: [Errno 30] Read-only file system"
    assert report["status"] == "complete"
    assert all(a["measured_end_s"] is not None for a in report["actions"])
