"""The executor: dependency order, token counts, faults, reports.

The fake engine here checks the dispatcher's logic quickly; test_executor_real.py
replays plans on real llama.cpp engines.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from planner.domain import GIB, Action, DeviceShare, Engine, Schedule
from planner.executor import Replay, dependencies, plan_order
from tests.test_checker import E1, E2, instance, valid_actions


class FakeState:
    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens
        self.nbytes = 100 * len(tokens)


class FakeEngine:
    """Sleeps a little per call and tracks its cache, like a worker would."""

    crash_on: ClassVar[set[str]] = set()

    def __init__(self, threads: int | None) -> None:
        self.cache: list[int] = []
        self.loaded = False
        self.pid = 0

    def load(self, path: Path, n_gpu_layers: int, n_ctx: int) -> Any:
        if "load" in self.crash_on:
            raise RuntimeError("worker died")
        time.sleep(0.01)
        self.loaded = True
        return type("Info", (), {"n_vocab": 1000, "rss_bytes": 1})()

    def _need(self) -> None:
        assert self.loaded, "engine used while not loaded"

    def reset(self) -> None:
        self._need()
        self.cache = []

    def prefill(self, tokens: list[int]) -> None:
        self._need()
        self.cache += tokens

    def decode(self, n: int) -> Any:
        self._need()
        time.sleep(0.002 * n)
        new = list(range(len(self.cache), len(self.cache) + n))
        self.cache += new
        return type("Out", (), {"tokens": tuple(new)})()

    def save_state_file(self, path: Path) -> FakeState:
        self._need()
        st = FakeState(list(self.cache))
        Path(path).write_text(json.dumps(st.tokens))
        st.path = str(path)  # type: ignore[attr-defined]
        return st

    def restore_state_file(self, s: FakeState) -> None:
        self._need()
        self.cache = json.loads(Path(s.path).read_text())  # type: ignore[attr-defined]

    def unload(self) -> float:
        self.loaded = False
        return 0.0

    def close(self) -> None:
        pass


def fast_instance() -> Any:
    """tiny.json with request d arriving at 0.2 s instead of 30 s, to keep the test short."""
    inst = instance()
    reqs = tuple(dataclasses.replace(q, arrival_s=0.2) if q.id == "d" else q
                 for q in inst.requests)
    return dataclasses.replace(inst, requests=reqs)


def replay(tmp_path: Path, actions: list[Action], engines: tuple[Engine, ...] = (E1, E2)) -> Any:
    r = Replay(fast_instance(), Schedule(engines, tuple(actions)), {"llama3-8b": Path("x"),
               "qwen14b": Path("y")}, tmp_path / "report.json", engine_factory=FakeEngine)
    return r, r.run()


def test_dependencies_follow_lane_engine_and_request() -> None:
    acts = plan_order(Schedule((E1, E2), tuple(valid_actions())))
    deps = dependencies(acts)
    idx = {(a.kind, a.request, a.tokens_from): i for i, a in enumerate(acts)}
    restore = idx[("kv_restore", "a", None)]
    run_c = idx[("run", "c", 0)]
    save = idx[("kv_save", "a", None)]
    assert run_c in deps[restore]  # same engine: c's run before a's state comes back
    assert save in deps[run_c]  # same engine: a's state leaves before c runs


def test_earliest_times_wait_for_what_dependencies_name() -> None:
    """earliest_times (the polish's fast path) gives each action the time the sets of
    dependencies() give: after the latest end among them, a run not before arrival;
    also with the actions shuffled (any order, valid or not, is timed alike)."""
    import random

    from planner.executor.deps import earliest_times

    acts = plan_order(Schedule((E1, E2), tuple(valid_actions())))
    arrival = {q.id: q.arrival_s + 0.5 for q in instance().requests}
    rng = random.Random(3)
    for k in range(20):
        seq = acts if k == 0 else rng.sample(acts, len(acts))
        deps = dependencies(seq)
        start: list[float] = []
        end: list[float] = []
        for i, a in enumerate(seq):
            s = max((end[d] for d in deps[i]), default=0.0)
            if a.kind == "run" and a.request is not None:
                s = max(s, arrival[a.request])
            start.append(s)
            end.append(s + (a.end_s - a.start_s))
        assert earliest_times(seq, arrival) == (start, end)


def test_an_engine_split_over_gpus_holds_the_lanes_of_every_gpu_it_spans() -> None:
    """SPEC rule 2 (the checker): a split engine's actions use both lanes of every GPU it
    spans. Engine S spans g0 and g1; engine B is on g1 alone. S loads [0,4] and runs
    [4,10]; B's load and run come after in plan order: they wait for S's load and run
    on g1's lanes (dependencies, lane_dependencies, earliest_times alike); without the
    spans they would not."""
    from planner.executor.deps import earliest_times, lane_dependencies, spans_of

    s = Engine("S", "m", "g0", 10, 64, 2 * GIB, 0,
               shares=(DeviceShare("g0", 0.5, GIB), DeviceShare("g1", 0.5, GIB)))
    b = Engine("B", "m", "g1", 10, 64, GIB, 0)
    acts = [Action("load", "S", "g0", 0, 4), Action("run", "S", "g0", 4, 10, "r1", 0, 8),
            Action("load", "B", "g1", 0, 1), Action("run", "B", "g1", 1, 3, "r2", 0, 8)]
    spans = spans_of(Schedule((s, b), tuple(acts)))
    assert spans == {"S": ("g0", "g1")}
    assert dependencies(acts) == [set(), {0}, set(), {2}]
    assert dependencies(acts, spans=spans) == [set(), {0}, {0}, {1, 2}]
    assert lane_dependencies(acts, spans=spans) == [set(), set(), {0}, {1}]
    arrival = {"r1": 0.0, "r2": 0.0}
    assert earliest_times(acts, arrival, spans=spans) == ([0, 4, 4, 10], [4, 10, 5, 12])
    assert earliest_times(acts, arrival) == ([0, 4, 0, 1], [4, 10, 1, 3])


def test_replay_runs_everything_in_an_allowed_order(tmp_path: Path) -> None:
    FakeEngine.crash_on = set()
    r, report = replay(tmp_path, valid_actions())
    assert report["status"] == "complete"
    by_index = {x.index: x for x in r.records}
    for rec in r.records:
        assert rec.status == "done"
        for d in rec.deps:
            assert by_index[d].measured_end_s <= rec.measured_start_s + 1e-9
        if rec.action.kind == "run":
            assert rec.detail["tokens_produced"] == rec.action.tokens_to - rec.action.tokens_from
            arrival = r.inst.request(rec.action.request or "").arrival_s
            assert rec.measured_start_s >= arrival - 1e-6
    # request a's tokens continue across the save/restore: no restart
    assert r.generated["a"] == list(range(256, 256 + 64))
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["format"] == "planner.report/1"
    assert {q["status"] for q in on_disk["requests"]} == {"done"}
    assert on_disk["summary"]["run"]["n"] == 5


def test_crash_marks_dependents_not_run_and_goes_on(tmp_path: Path) -> None:
    FakeEngine.crash_on = {"load"}
    try:
        r, report = replay(tmp_path, valid_actions())
    finally:
        FakeEngine.crash_on = set()
    statuses = {(x.action.kind, x.action.engine, x.action.request): x.status for x in r.records}
    assert statuses[("load", "e1", None)] == "failed"
    assert statuses[("run", "e1", "a")] == "not_run"
    assert report["status"] == "partial"
    failed = [a for a in report["actions"] if a["status"] == "failed"]
    assert all("worker died" in a["error"] for a in failed)


@pytest.mark.parametrize("realtime", [True])
def test_realtime_waits_for_predicted_starts(tmp_path: Path, realtime: bool) -> None:
    acts = [Action("load", "e1", "box-gpu0", 0.0, 0.01),
            Action("run", "e1", "box-gpu0", 0.3, 0.4, request="a", tokens_from=0, tokens_to=64),
            Action("run", "e1", "box-gpu0", 2.0, 2.1, request="c", tokens_from=0, tokens_to=128)]
    inst = instance()
    sub = dataclasses.replace(inst, requests=tuple(q for q in inst.requests
                                                   if q.id in ("a", "c")))
    r = Replay(sub, Schedule((E1,), tuple(acts)), {"llama3-8b": Path("x")},
               tmp_path / "r.json", engine_factory=FakeEngine, realtime=realtime)
    r.run()
    starts = {x.action.request: x.measured_start_s for x in r.records if x.action.request}
    assert starts["a"] >= 0.3 and starts["c"] >= 2.0


def test_report_writes_are_throttled_while_running(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The report is rebuilt whole on each write, in the process that times the actions:
    a fast replay writes it at most once per WRITE_EVERY_S while running, and whole at
    the end."""
    import planner.executor.replay as replay_mod

    real = replay_mod.write_json_atomic
    writes: list[str] = []

    def counting(path: Path, data: Any) -> Path:
        writes.append(data["status"])
        return real(path, data)

    monkeypatch.setattr(replay_mod, "write_json_atomic", counting)
    r, report = replay(tmp_path, valid_actions())
    n_actions = len(r.records)
    assert n_actions >= 6
    assert len(writes) < n_actions  # one per action would be n_actions + 1
    assert writes[-1] == "complete" == report["status"]
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert all(a["status"] == "done" for a in on_disk["actions"])
    monkeypatch.setattr(replay_mod, "WRITE_EVERY_S", 0.0)
    writes.clear()
    replay(tmp_path, valid_actions())
    assert len(writes) == n_actions + 1  # unthrottled: after every action, and at the end


def test_interrupt_keeps_what_was_measured(tmp_path: Path) -> None:
    """Ctrl-C during a replay: the report on disk holds the finished actions."""
    calls = {"n": 0}

    def on_action(rec: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    r = Replay(fast_instance(), Schedule((E1, E2), tuple(valid_actions())),
               {"llama3-8b": Path("x"), "qwen14b": Path("y")}, tmp_path / "report.json",
               engine_factory=FakeEngine, on_action=on_action)
    with pytest.raises(KeyboardInterrupt):
        r.run()
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["status"] == "interrupted"
    done = [a for a in on_disk["actions"] if a["status"] == "done"]
    assert len(done) >= 3 and all(a["measured_end_s"] is not None for a in done)
    assert any(a["status"] == "not_run" for a in on_disk["actions"])


class TimedState(FakeState):
    seconds = 0.004


class TimedEngine(FakeEngine):
    """Reports the seconds it spent inside, as a real worker does."""

    def save_state_file(self, path: Path) -> FakeState:
        st = super().save_state_file(path)
        ts = TimedState(st.tokens)
        ts.path = st.path  # type: ignore[attr-defined]
        time.sleep(0.004)
        return ts

    def restore_state_file(self, s: FakeState) -> Any:
        super().restore_state_file(s)
        time.sleep(0.003)
        return type("Step", (), {"seconds": 0.003})()


def test_kv_clock_leaves_out_the_executors_own_work(tmp_path: Path) -> None:
    """The memory guard's check and the state file's deletion are the executor's, not the
    KV copy's: they happen outside its measured window; the engine's own seconds are
    reported beside it; the GIL switch interval is back to what it was afterwards."""
    FakeEngine.crash_on = set()
    r = Replay(fast_instance(), Schedule((E1, E2), tuple(valid_actions())),
               {"llama3-8b": Path("x"), "qwen14b": Path("y")}, tmp_path / "report.json",
               engine_factory=TimedEngine)
    admit = r.guard.admit

    def slow_admit(host: str, need: int, what: str) -> None:
        time.sleep(0.05)
        admit(host, need, what)

    r.guard.admit = slow_admit  # type: ignore[method-assign]
    before = sys.getswitchinterval()
    report = r.run()
    assert sys.getswitchinterval() == before
    assert report["status"] == "complete"
    kv = {x.action.kind: x for x in r.records if x.action.kind.startswith("kv")}
    save, restore = kv["kv_save"], kv["kv_restore"]
    assert save.detail["engine_s"] == 0.004 and restore.detail["engine_s"] == 0.003
    assert save.measured_end_s is not None and save.measured_start_s is not None
    assert 0.004 <= save.measured_end_s - save.measured_start_s < 0.04  # no 50 ms check
    assert restore.cleanup is not None and not Path(restore.cleanup).exists()


def test_a_failing_memory_check_fails_its_action_not_the_replay(tmp_path: Path) -> None:
    FakeEngine.crash_on = set()
    r = Replay(fast_instance(), Schedule((E1, E2), tuple(valid_actions())),
               {"llama3-8b": Path("x"), "qwen14b": Path("y")}, tmp_path / "report.json",
               engine_factory=FakeEngine)

    def broken(host: str, need: int, what: str) -> None:
        raise RuntimeError("psutil gone")

    r.guard.admit = broken  # type: ignore[method-assign]
    report = r.run()
    assert report["status"] == "partial"
    loads = [x for x in r.records if x.action.kind == "load"]
    assert loads and all(x.status == "failed" and "psutil gone" in (x.error or "")
                         for x in loads)
    assert all(x.status in ("done", "failed", "not_run") for x in r.records)


class CountingEngine(FakeEngine):
    """A FakeEngine that counts the workers started and closed and records which one
    each load went to; starting one after the first two takes 0.3 s (a process start)."""

    started: ClassVar[int] = 0
    closed: ClassVar[int] = 0
    loads: ClassVar[list[tuple[str, int]]] = []

    def __init__(self, threads: int | None) -> None:
        super().__init__(threads)
        CountingEngine.started += 1
        self.number = CountingEngine.started
        if CountingEngine.started > 2:
            time.sleep(0.3)

    def load(self, path: Path, n_gpu_layers: int, n_ctx: int) -> Any:
        CountingEngine.loads.append((str(path), self.number))
        return super().load(path, n_gpu_layers, n_ctx)

    def close(self) -> None:
        CountingEngine.closed += 1


def test_gpu_engines_get_a_fresh_worker_after_each_unload(tmp_path: Path) -> None:
    """e1 and e2 have layers on a GPU: after each unload the engine's worker is closed
    and a new one started beside the replay (a CUDA process keeps its context until it
    ends). The 0.3 s start does not hold up e2's load, which follows e1's unload on the
    GPU's transfer lane; e1's second load goes to its new worker. On the host CPU (the
    plan's GPU mapped to it) workers stay."""
    FakeEngine.crash_on = set()
    actions = [*valid_actions(), Action("unload", "e2", "box-gpu0", 31, 31.2),
               Action("load", "e1", "box-gpu0", 31.2, 33),
               Action("unload", "e1", "box-gpu0", 33, 33.2)]
    for layers, workers in ((None, 5), ({"e1": 0, "e2": 0}, 2)):
        CountingEngine.started = CountingEngine.closed = 0
        CountingEngine.loads = []
        r = Replay(fast_instance(), Schedule((E1, E2), tuple(actions)),
                   {"llama3-8b": Path("x"), "qwen14b": Path("y")}, tmp_path / "report.json",
                   engine_factory=CountingEngine, gpu_layers=layers)
        assert r.run()["status"] == "complete"
        # e1, e2; then fresh ones after e1's, e2's and e1's second unload
        assert CountingEngine.started == CountingEngine.closed == workers
        if layers is None:
            assert CountingEngine.loads == [("x", 1), ("y", 2), ("x", 3)]
            unload_e1 = next(x for x in r.records if x.action.kind == "unload")
            load_e2 = next(x for x in r.records if x.action.kind == "load"
                           and x.action.engine == "e2")
            assert unload_e1.action.engine == "e1"
            assert 0 <= load_e2.measured_start_s - unload_e1.measured_end_s < 0.2
        else:
            assert CountingEngine.loads == [("x", 1), ("y", 2), ("x", 1)]
