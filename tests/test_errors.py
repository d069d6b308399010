"""The error path: library errors become lines and exit codes only in the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from planner.cli import cli
from planner.errors import (
    EXIT_INTERNAL,
    BaselineError,
    CostModelError,
    DomainError,
    ExecuteError,
    GgufError,
    InputError,
    PlannerError,
    SolveError,
)
from tests.conftest import ROOT


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_every_layer_raises_the_bottom_types() -> None:
    import planner.baselines.sim
    import planner.costmodel.base
    import planner.domain
    import planner.executor
    import planner.io
    import planner.service

    # the old import paths still name the same classes
    assert planner.io.InputError is InputError
    assert planner.service.SolveError is SolveError
    assert planner.baselines.sim.BaselineError is BaselineError
    assert planner.costmodel.base.CostModelError is CostModelError
    assert planner.domain.DomainError is DomainError
    assert planner.executor.ExecuteError is ExecuteError
    for cls in (InputError, SolveError, BaselineError, CostModelError, DomainError, GgufError,
                ExecuteError):
        assert issubclass(cls, PlannerError) and cls.exit_code == 2
    assert InputError(["a", "b"]).lines == ["a", "b"] and str(InputError("x")) == "x"


def test_planner_error_prints_lines_and_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import planner.service

    def boom(*a: Any, **k: Any) -> None:
        raise SolveError(["first fault", "second fault"], hint="try --solver fcfs-lru")

    monkeypatch.setattr(planner.service, "prepare", boom)
    res = invoke("solve", "x.json")
    assert res.exit_code == 2
    assert res.output.splitlines() == ["Error: first fault", "Error: second fault",
                                       "hint: try --solver fcfs-lru"]


def test_last_resort_handler_one_line_and_debug_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import planner.service

    def bug(*a: Any, **k: Any) -> None:
        {}["no such key"]  # an unexpected KeyError, as a bug would raise

    monkeypatch.setattr(planner.service, "prepare", bug)
    res = invoke("solve", "x.json")
    assert res.exit_code == EXIT_INTERNAL
    lines = res.output.splitlines()
    assert len(lines) == 2, res.output
    assert lines[0] == "Error: internal error: KeyError: 'no such key'"
    assert lines[1].startswith("hint: this is a bug; `planner --debug ")
    assert "Traceback" not in res.output
    # --debug: the exception escapes with its traceback
    res = CliRunner().invoke(cli, ["--debug", "solve", "x.json"])
    assert isinstance(res.exception, KeyError)


def test_debug_flag_prints_traceback_in_a_real_process(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    cmd = [sys.executable, "-m", "planner.cli"]
    plain = subprocess.run([*cmd, "validate", str(bad)], capture_output=True, text=True,
                           cwd=ROOT)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.splitlines() == [f"Error: {bad}: malformed JSON at line 1 column 2: "
                                         "Expecting property name enclosed in double quotes"]
    debug = subprocess.run([*cmd, "--debug", "validate", str(bad)], capture_output=True,
                           text=True, cwd=ROOT)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert "InputError" in debug.stderr


def test_interrupt_is_exit_130(monkeypatch: pytest.MonkeyPatch) -> None:
    import planner.service

    def interrupted(*a: Any, **k: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(planner.service, "prepare", interrupted)
    res = invoke("solve", "x.json")
    assert res.exit_code == 130 and res.output.strip() == "Error: interrupted"
