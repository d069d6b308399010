"""Ctrl-C or SIGTERM during `planner solve`: the best plan so far, checked, or nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from planner import interrupt
from tests.conftest import ROOT

MIXED = ROOT / "instances" / "mixed.json"
LIMIT = 300  # the solve's time limit: far longer than any test waits


def start_solve(out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "planner.cli", "solve", str(MIXED), "--time-limit", str(LIMIT),
         "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "200"})


def wait_for_search(proc: subprocess.Popen[str]) -> None:
    """Read stderr until CP-SAT's search has started (the baselines are done)."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if "cp-sat: searching" in line:
            return
    raise AssertionError("the solve ended before its search started")


def leftovers(folder: Path, keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_writes_best_checked_plan(tmp_path: Path, sig: signal.Signals,
                                         code: int) -> None:
    out = tmp_path / "plans" / "mixed.json"
    proc = start_solve(out)
    wait_for_search(proc)
    time.sleep(1.0)  # let CP-SAT find an incumbent (with none, the best baseline is kept)
    os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert f"interrupted ({sig.name}): the best plan found so far" in stderr
    plan = json.loads(out.read_text())
    assert plan["solver"]["notes"].startswith(f"interrupted ({sig.name}) after ")
    assert plan["solver"]["wall_s"] < LIMIT  # the search stopped, not its time limit
    assert plan["solver"]["status"] in ("FEASIBLE", "OPTIMAL") or \
        "baseline" in plan["solver"]["status"] or "start plan" in plan["solver"]["status"]
    assert leftovers(out.parent, "mixed.json") == []  # no temporary file left behind
    # the plan is whole and passes the checker
    check = subprocess.run([sys.executable, "-m", "planner.cli", "validate", str(out),
                            "--instance", str(MIXED)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("delay_s", [0.0, 0.3, 2.0, None])
def test_any_moment_gives_a_valid_plan_or_nothing(tmp_path: Path,
                                                  delay_s: float | None) -> None:
    """SIGTERM twice in a row at several moments (None: once the search runs): either
    nothing is written or a whole plan that passes the checker; never a partial file."""
    out = tmp_path / "mixed.json"
    proc = start_solve(out)
    if delay_s is None:
        wait_for_search(proc)
    else:
        time.sleep(delay_s)
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.05)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode in (143, -signal.SIGTERM), stderr
    assert "Traceback" not in stderr
    assert leftovers(tmp_path, "mixed.json") == []
    if out.exists():
        check = subprocess.run([sys.executable, "-m", "planner.cli", "validate", str(out),
                                "--instance", str(MIXED)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_stop_request_reaches_searches_started_later() -> None:
    import threading

    stopped = threading.Event()
    interrupt.reset()
    try:
        interrupt.request_stop("SIGTERM")
        with interrupt.stoppable(stopped.set):
            assert stopped.wait(5)  # a search starting after the request is stopped too
        assert interrupt.stop_reason() == "SIGTERM"
        assert interrupt.exit_code("SIGTERM") == 143 and interrupt.exit_code("SIGINT") == 130
    finally:
        interrupt.reset()
