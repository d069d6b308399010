"""Replay small plans on real llama.cpp engines (SmolLM2, CPU): the counterpart of
test_executor.py's fake-engine tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from planner.cli import cli
from planner.domain import Action, Engine, Schedule
from planner.executor import Replay
from planner.io import load_instance
from profiler.models import fetch_smollm2

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return fetch_smollm2()


def demo_instance(tmp_path: Path, gguf: Path) -> Path:
    data = {
        "format": "planner.instance/1", "name": "real-tiny",
        "cluster": {"hosts": [{"id": "here", "cpu": "local", "threads": 1, "memory_gib": 2}]},
        "models": [{"id": "smol", "gguf": str(gguf)}],
        "requests": [
            {"id": "a", "model": "smol", "arrival_s": 0.0, "prompt_tokens": 40,
             "output_tokens": 24},
            {"id": "b", "model": "smol", "arrival_s": 0.2, "prompt_tokens": 20,
             "output_tokens": 8},
        ],
    }
    p = tmp_path / "real-tiny.json"
    p.write_text(json.dumps(data))
    return p


def _run(r: str, e: str, t0: float, a: int, b: int, rc: bool = False) -> Action:
    """A run of request ``r`` on engine ``e`` (device "here"), tokens ``a`` to ``b``."""
    return Action("run", e, "here", t0, t0 + 0.5, request=r, tokens_from=a, tokens_to=b,
                  recompute=rc)


def test_replay_with_migration_and_recompute(tmp_path: Path, smollm2: Path) -> None:
    inst = load_instance(demo_instance(tmp_path, smollm2))
    e1 = Engine("e1", "smol", "here", 0, 256, 0, 300 * 2**20)
    e2 = Engine("e2", "smol", "here", 0, 256, 0, 300 * 2**20)

    # a starts on e1, is saved, b runs on e1, a migrates to e2 by KV restore, then
    # b continues on e2 after a by recompute (its state was left on e1).
    acts = [
        Action("load", "e1", "here", 0.0, 1.0),
        _run("a", "e1", 1.0, 0, 10),
        Action("kv_save", "e1", "here", 1.5, 1.6, request="a", bytes=1),
        _run("b", "e1", 1.6, 0, 4),
        Action("load", "e2", "here", 1.6, 2.6),
        Action("kv_restore", "e2", "here", 2.6, 2.7, request="a", bytes=1),
        _run("a", "e2", 2.7, 10, 24),
        _run("b", "e2", 3.2, 4, 8, rc=True),
        Action("unload", "e1", "here", 3.2, 3.3),
        Action("unload", "e2", "here", 3.7, 3.8),
    ]
    r = Replay(inst, Schedule((e1, e2), tuple(acts)), {"smol": smollm2}, tmp_path / "rep.json",
               threads=1)
    report = r.run()
    assert report["status"] == "complete", [a for a in report["actions"] if a.get("error")]
    by_index = {x.index: x for x in r.records}
    for rec in r.records:
        assert rec.status == "done"
        for d in rec.deps:  # every action started after what it depends on ended
            assert by_index[d].measured_end_s <= rec.measured_start_s + 1e-9
        if rec.action.kind == "run":
            assert rec.detail["tokens_produced"] == rec.action.tokens_to - rec.action.tokens_from
    assert len(r.generated["a"]) == 24 and len(r.generated["b"]) == 8
    saved = [a for a in report["actions"] if a["kind"] == "kv_save"]
    assert saved[0]["bytes_measured"] > 0
    assert report["devices"][0]["measured_peak_host_bytes"] > 50 * 2**20  # a real model's RSS


def test_fresh_worker_after_an_unload_on_real_engines(tmp_path: Path, smollm2: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The counterpart of test_executor.py's fresh-worker test, on real engines: with
    every engine taken for a GPU one (a new worker after each unload; this CPU has
    none), the engine's second load runs in a new worker process, and its tokens are
    those of a worker that never unloaded."""
    import planner.executor.replay as replay_mod

    monkeypatch.setattr(replay_mod, "fresh_worker_per_load", lambda *a, **k: True)
    inst = load_instance(demo_instance(tmp_path, smollm2))
    e1 = Engine("e1", "smol", "here", 0, 256, 0, 300 * 2**20)
    acts = [Action("load", "e1", "here", 0, 1),
            Action("run", "e1", "here", 1, 2, request="a", tokens_from=0, tokens_to=8),
            Action("unload", "e1", "here", 2, 2.1),
            Action("load", "e1", "here", 2.1, 3.1),
            Action("run", "e1", "here", 3.1, 4, request="b", tokens_from=0, tokens_to=8)]
    pids: list[int] = []
    r = Replay(inst, Schedule((e1,), tuple(acts)), {"smol": smollm2}, tmp_path / "f.json",
               threads=1, on_action=lambda rec: pids.append(r.engines["e1"].pid)
               if rec.action.kind == "run" else None)
    report = r.run()
    assert report["status"] == "complete", [a for a in report["actions"] if a.get("error")]
    assert len(set(pids)) == 2  # the two runs on two worker processes
    straight = Replay(inst, Schedule((e1,), (acts[0], acts[4])), {"smol": smollm2},
                      tmp_path / "s.json", threads=1)
    straight.run()
    assert r.generated["b"] == straight.generated["b"]


def test_kv_restore_continues_exactly_where_it_stopped(tmp_path: Path, smollm2: Path) -> None:
    """Greedy tokens after save -> other request -> restore equal an uninterrupted run."""
    inst = load_instance(demo_instance(tmp_path, smollm2))
    e1 = Engine("e1", "smol", "here", 0, 256, 0, 300 * 2**20)
    straight = [Action("load", "e1", "here", 0, 1),
                Action("run", "e1", "here", 1, 2, request="a", tokens_from=0, tokens_to=24)]
    r1 = Replay(inst, Schedule((e1,), tuple(straight)), {"smol": smollm2}, tmp_path / "1.json",
                threads=1)
    r1.run()
    split = [Action("load", "e1", "here", 0, 1),
             Action("run", "e1", "here", 1, 2, request="a", tokens_from=0, tokens_to=10),
             Action("kv_save", "e1", "here", 2, 2.1, request="a", bytes=1),
             Action("run", "e1", "here", 2.1, 3, request="b", tokens_from=0, tokens_to=8),
             Action("kv_restore", "e1", "here", 3, 3.1, request="a", bytes=1),
             Action("run", "e1", "here", 3.1, 4, request="a", tokens_from=10, tokens_to=24)]
    r2 = Replay(inst, Schedule((e1,), tuple(split)), {"smol": smollm2}, tmp_path / "2.json",
                threads=1)
    r2.run()
    assert r2.generated["a"] == r1.generated["a"]


def test_execute_cli_refuses_foreign_devices_and_maps_them(tmp_path: Path, smollm2: Path,
                                                           monkeypatch: Any) -> None:
    inst = demo_instance(tmp_path, smollm2)
    data = json.loads(inst.read_text())
    data["cluster"]["hosts"][0]["cpu"] = "threadripper-pro-5995wx"  # not this machine
    inst.write_text(json.dumps(data))
    runner = CliRunner()
    res = runner.invoke(cli, ["solve", str(inst), "--solver", "fcfs-lru", "-o", "plan.json"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["execute", "plan.json", "--instance", str(inst)],
                        catch_exceptions=False)
    assert res.exit_code == 2 and "--device-map here=host" in res.output
    res = runner.invoke(cli, ["execute", "plan.json", "--instance", str(inst), "--device-map",
                              "here=host", "-o", "rep.json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "predictions were made for other hardware" in res.output
    rep = json.loads(Path("rep.json").read_text())
    assert rep["status"] == "complete"
    assert all(a["status"] == "done" for a in rep["actions"])
    res = runner.invoke(cli, ["show", "rep.json", "-o", "g.png"], catch_exceptions=False)
    assert res.exit_code == 0 and Path("g.png").stat().st_size > 1000


def test_missing_gguf_is_a_clear_error_before_anything_runs(tmp_path: Path,
                                                            smollm2: Path) -> None:
    inst = demo_instance(tmp_path, smollm2)
    runner = CliRunner()
    assert runner.invoke(cli, ["solve", str(inst), "--solver", "fcfs-lru", "-o", "p.json"],
                         catch_exceptions=False).exit_code == 0
    data = json.loads(inst.read_text())
    data["models"][0]["gguf"] = str(tmp_path / "gone.gguf")
    inst.write_text(json.dumps(data))
    res = runner.invoke(cli, ["execute", "p.json", "--instance", str(inst)],
                        catch_exceptions=False)
    assert res.exit_code == 2 and "gone.gguf" in res.output
    assert not Path("reports").exists()


def test_slot_engine_replays_overlapping_runs_by_continuous_batching(
        tmp_path: Path, smollm2: Path) -> None:
    """An engine with 2 slots: a and b decode together, c waits for a free slot and joins
    while the other still decodes; every run produces its tokens."""
    from planner.checker import check_plan

    data = json.loads(demo_instance(tmp_path, smollm2).read_text())
    data["requests"].append({"id": "c", "model": "smol", "arrival_s": 0.3,
                             "prompt_tokens": 30, "output_tokens": 12})
    (tmp_path / "slots.json").write_text(json.dumps(data))
    inst = load_instance(tmp_path / "slots.json")
    e1 = Engine("e1", "smol", "here", 0, 256, 0, 400 * 2**20, n_parallel=2)
    acts = (Action("load", "e1", "here", 0.0, 1.0),
            Action("run", "e1", "here", 1.0, 3.0, request="a", tokens_from=0, tokens_to=24),
            Action("run", "e1", "here", 1.0, 2.0, request="b", tokens_from=0, tokens_to=8),
            Action("run", "e1", "here", 2.0, 3.0, request="c", tokens_from=0, tokens_to=12),
            Action("unload", "e1", "here", 3.0, 3.1))
    sched = Schedule((e1,), acts)
    assert check_plan(inst, sched) == []
    r = Replay(inst, sched, {"smol": smollm2}, tmp_path / "rep.json", threads=1)
    rep = r.run()
    assert rep["status"] == "complete", rep
    runs = {a["request"]: a for a in rep["actions"] if a["kind"] == "run"}
    assert [runs[x]["tokens_produced"] for x in "abc"] == [24, 8, 12]
    # a and b overlapped on the engine (continuous batching), c started before a ended
    assert runs["b"]["measured_start_s"] < runs["a"]["measured_end_s"]
    assert runs["c"]["measured_start_s"] < runs["a"]["measured_end_s"]
    # (tokens are llama.cpp's batched greedy decode: its kernels round differently with
    # the batch's composition, so near-ties may pick other tokens than a serial decode)


def test_replay_of_a_relay_there_and_back_makes_the_straight_run_s_tokens(
        tmp_path: Path, smollm2: Path) -> None:
    """The polish's relay (solver/polish/handoffs.py) on real engines: a's prompt and first
    4 tokens on e1, its state saved and restored on e2, which makes tokens 4-10, saved
    again and restored on e1, which makes the rest. Its tokens are those of one straight
    run (greedy decoding: the state carries everything)."""
    inst = load_instance(demo_instance(tmp_path, smollm2))
    e1 = Engine("e1", "smol", "here", 0, 256, 0, 300 * 2**20)
    e2 = Engine("e2", "smol", "here", 0, 256, 0, 300 * 2**20)

    acts = [Action("load", "e1", "here", 0.0, 1.0), Action("load", "e2", "here", 1.0, 2.0),
            _run("a", "e1", 2.0, 0, 4), Action("kv_save", "e1", "here", 2.5, 2.6, "a", bytes=1),
            Action("kv_restore", "e2", "here", 2.6, 2.7, "a", bytes=1), _run("a", "e2", 2.7, 4, 10),
            Action("kv_save", "e2", "here", 3.2, 3.3, "a", bytes=1),
            Action("kv_restore", "e1", "here", 3.3, 3.4, "a", bytes=1),
            _run("a", "e1", 3.4, 10, 24),
            Action("unload", "e2", "here", 3.9, 4.0), Action("unload", "e1", "here", 4.0, 4.1)]
    relay = Replay(inst, Schedule((e1, e2), tuple(acts)), {"smol": smollm2},
                   tmp_path / "relay.json", threads=1)
    report = relay.run()
    assert report["status"] == "complete", [a for a in report["actions"] if a.get("error")]
    straight = Replay(inst, Schedule((e1,), (acts[0], _run("a", "e1", 1.0, 0, 24),
                                             Action("unload", "e1", "here", 1.5, 1.6))),
                      {"smol": smollm2}, tmp_path / "straight.json", threads=1)
    assert straight.run()["status"] == "complete"
    assert len(relay.generated["a"]) == 24
    assert relay.generated["a"] == straight.generated["a"]
