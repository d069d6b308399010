"""Fault injection in replay, on real llama.cpp engines (SmolLM2 and a small synthetic
llama model on this machine's CPU).

Each fault: a worker killed with SIGKILL mid-run, a model file removed or truncated
between solve and execute (and during a replay), the disk refusing the report write,
SIGTERM to `planner execute`. Each time the report on disk (or its fallback) is valid
JSON keeping every action that was measured, the failed action and its dependents are
marked, the other engine's actions finish, and no worker process is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner

from planner.cli import cli
from profiler.models import fetch_smollm2
from profiler.synth import SynthShape, write_synthetic

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    smol = fetch_smollm2()
    synth = write_synthetic(tmp_path_factory.mktemp("models") / "synth.gguf",
                            SynthShape(4, 256, 4, 2, 768, "Q8_0"), tokenizer_from=smol)
    return smol, synth


def solved(folder: Path, models: tuple[Path, Path], copy_models: bool = False) -> Path:
    """A plan for two engines (SmolLM2 and the synthetic model) on this machine's CPU,
    alternating requests long enough that a replay lasts some seconds."""
    smol, synth = models
    if copy_models:
        smol, synth = (Path(shutil.copy(p, folder / p.name)) for p in models)
    reqs = [{"id": f"r{i}", "model": "smol" if i % 2 == 0 else "syn", "arrival_s": 0.2 * i,
             "prompt_tokens": 48, "output_tokens": 96} for i in range(10)]
    inst = folder / "faults.json"
    inst.write_text(json.dumps({
        "format": "planner.instance/1", "name": "faults",
        "cluster": {"hosts": [{"id": "here", "cpu": "local", "threads": 1, "memory_gib": 2}]},
        "models": [{"id": "smol", "gguf": str(smol)}, {"id": "syn", "gguf": str(synth)}],
        "requests": reqs}))
    plan = folder / "plan.json"
    res = CliRunner().invoke(cli, ["solve", str(inst), "--solver", "fcfs-lru", "-o",
                                   str(plan)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    engines = {e["model"] for e in json.loads(plan.read_text())["engines"]}
    assert engines == {"smol", "syn"}
    return plan


class Watched:
    """`planner execute` in a subprocess: its worker processes and report snapshots."""

    def __init__(self, plan: Path, report: Path, env: dict[str, str] | None = None) -> None:
        self.report = report
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "planner.cli", "execute", str(plan), "-o", str(report)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})})
        self.children: set[int] = set()
        self.done: dict[int, float] = {}  # action index -> measured end, from any snapshot

    def poll(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            self.children |= {c.pid for c in psutil.Process(self.proc.pid).children(True)}
        try:
            data = json.loads(self.report.read_text())
        except (OSError, ValueError):
            return  # not written yet, or (with the disk refusing) gone
        for a in data["actions"]:
            if a["status"] == "done":
                self.done[a["index"]] = a["measured_end_s"]

    def wait_until(self, cond: Callable[[], bool], timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            assert self.proc.poll() is None, "the replay ended before the fault"
            assert time.monotonic() < deadline, "timed out waiting for the replay"
            self.poll()
            time.sleep(0.05)

    def finish(self) -> tuple[int, str, str]:
        while self.proc.poll() is None:
            self.poll()
            time.sleep(0.1)
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err

    def orphans(self) -> list[int]:
        time.sleep(0.5)
        alive = []
        for pid in self.children:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                continue
        return alive


def kept(w: Watched, report: dict[str, Any]) -> None:
    """Every action seen measured in any snapshot is measured the same in the end."""
    by_index = {a["index"]: a for a in report["actions"]}
    for i, end in w.done.items():
        assert by_index[i]["status"] == "done" and by_index[i]["measured_end_s"] == end


def done_runs(w: Watched) -> int:
    try:
        data = json.loads(w.report.read_text())
    except (OSError, ValueError):
        return 0
    return sum(1 for a in data["actions"] if a["kind"] == "run" and a["status"] == "done")


def test_worker_killed_mid_run(tmp_path: Path, models: tuple[Path, Path]) -> None:
    plan = solved(tmp_path, models)
    w = Watched(plan, tmp_path / "report.json")
    w.wait_until(lambda: done_runs(w) >= 3)  # both models have computed: no crash fallback
    workers = [p for p in psutil.Process(w.proc.pid).children()
               if "resource_tracker" not in " ".join(p.cmdline())]
    assert len(workers) == 2  # one engine worker per engine

    def busy() -> psutil.Process | None:
        """The worker computing now (one CPU device: one run at a time)."""
        for p in workers:
            p.cpu_percent(None)
        time.sleep(0.2)
        load = {p: p.cpu_percent(None) for p in workers}
        top = max(load, key=lambda p: load[p])
        return top if load[top] > 50 else None

    found: list[psutil.Process] = []

    def running() -> bool:
        b = busy()
        if b is not None:
            found.append(b)
        return b is not None

    w.wait_until(running)
    found[0].send_signal(signal.SIGKILL)
    code, _out, err = w.finish()
    assert code == 0, err
    report = json.loads(w.report.read_text())
    assert report["status"] == "partial"
    kept(w, report)
    failed = [a for a in report["actions"] if a["status"] == "failed"]
    assert failed and {a["engine"] for a in failed} == {failed[0]["engine"]}
    assert all("died" in a["error"] or "gone" in a["error"] for a in failed), failed
    dead = failed[0]["engine"]
    first = min(a["index"] for a in failed)
    for a in report["actions"]:
        if a["engine"] == dead and a["index"] > first:
            assert a["status"] in ("not_run", "failed"), a
        if a["engine"] != dead:  # the other engine's actions all finish
            assert a["status"] == "done", a
    not_run = [a for a in report["actions"] if a["status"] == "not_run"]
    assert all(a["error"].startswith("depends on action ") for a in not_run)
    assert w.orphans() == []


@pytest.mark.parametrize("fault", ["removed", "truncated"])
def test_model_file_broken_between_solve_and_execute(tmp_path: Path, models: tuple[Path, Path],
                                                     fault: str) -> None:
    plan = solved(tmp_path, models, copy_models=True)
    victim = tmp_path / "synth.gguf"
    if fault == "removed":
        victim.unlink()
    else:
        with open(victim, "r+b") as f:
            f.truncate(victim.stat().st_size // 2)
    w = Watched(plan, tmp_path / "report.json")
    code, _out, err = w.finish()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(victim) in lines[0]
    assert "Traceback" not in err
    assert not w.report.exists()  # refused before any engine started
    assert w.orphans() == []


def test_model_file_removed_during_replay(tmp_path: Path, models: tuple[Path, Path]) -> None:
    """The file goes after the plan was checked for replay, before its engine loads it."""
    from planner.executor import Replay
    from planner.plan_files import prepare_replay

    plan = solved(tmp_path, models, copy_models=True)
    inst, schedule, paths, overrides, _warnings = prepare_replay(plan, None, {})
    (tmp_path / "synth.gguf").unlink()
    report_path = tmp_path / "report.json"
    replay = Replay(inst, schedule, paths, report_path, threads=1, gpu_layers=overrides)
    replay.run()
    report = json.loads(report_path.read_text())
    syn = {e.id for e in schedule.engines if e.model == "syn"}
    for a in report["actions"]:
        if a["engine"] in syn:
            assert a["status"] in ("failed", "not_run"), a
        else:
            assert a["status"] == "done", a
    loads = [a for a in report["actions"] if a["engine"] in syn and a["kind"] == "load"]
    assert loads[0]["status"] == "failed" and "synth.gguf" in loads[0]["error"]
    assert all(e.alive is False for e in replay.engines.values())  # workers closed


@pytest.mark.parametrize("recovers", [True, False])
def test_disk_refuses_report_write(tmp_path: Path, models: tuple[Path, Path],
                                   recovers: bool) -> None:
    """The report's folder is replaced by a file mid-replay (every write fails with an
    OSError), then, or not, restored."""
    plan = solved(tmp_path, models)
    folder = tmp_path / "out" / "reports"
    fallback_dir = tmp_path / "tmp"
    fallback_dir.mkdir()
    w = Watched(plan, folder / "report.json", env={"TMPDIR": str(fallback_dir)})
    w.wait_until(lambda: done_runs(w) >= 2)
    while not folder.is_file():  # the replay may recreate the folder in between: again
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.write_text("not a folder")  # the disk now refuses the report
    if recovers:
        time.sleep(1.5)  # some actions finish while the disk refuses
        assert w.proc.poll() is None, "the replay ended before the disk came back"
        folder.unlink()
        folder.mkdir()
    code, _out, err = w.finish()
    if recovers:
        assert code == 0, err
        report = json.loads((folder / "report.json").read_text())
    else:
        assert code == 2, err
        assert "the report could not be written (" in err and "Traceback" not in err
        saved = list(fallback_dir.glob("planner-report-plan-*.json"))
        assert len(saved) == 1 and str(saved[0]) in err
        report = json.loads(saved[0].read_text())
    assert report["status"] == "complete"
    kept(w, report)
    assert all(a["status"] == "done" and a["measured_end_s"] is not None
               for a in report["actions"])
    assert w.orphans() == []


def test_sigterm_to_execute(tmp_path: Path, models: tuple[Path, Path]) -> None:
    plan = solved(tmp_path, models)
    w = Watched(plan, tmp_path / "report.json")
    w.wait_until(lambda: done_runs(w) >= 2)
    w.proc.send_signal(signal.SIGTERM)
    code, _out, err = w.finish()
    assert code == 143, err
    assert "interrupted (SIGTERM); what was measured is in" in err and "Traceback" not in err
    report = json.loads(w.report.read_text())
    assert report["status"] == "interrupted"
    kept(w, report)
    statuses = {a["status"] for a in report["actions"]}
    assert statuses <= {"done", "failed", "not_run"}  # nothing left pending or running
    assert "not_run" in statuses
    assert w.orphans() == []
