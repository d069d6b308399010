"""Plans find their instance (path relative to the plan, sha256), and execute --dry-run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from planner.cli import cli
from tests.conftest import ROOT


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def cpu_instance() -> dict[str, Any]:
    """This machine's CPU and SmolLM2 from the model cache: replayable here."""
    from profiler.models import fetch_smollm2

    return {"format": "planner.instance/1", "name": "cpu-demo",
            "cluster": {"hosts": [{"id": "here", "cpu": "local", "threads": 1,
                                   "memory_gib": 2}]},
            "models": [{"id": "smollm2", "gguf": str(fetch_smollm2())}],
            "requests": [{"id": "a", "model": "smollm2", "arrival_s": 0, "prompt_tokens": 32,
                          "output_tokens": 8},
                         {"id": "b", "model": "smollm2", "arrival_s": 1, "prompt_tokens": 16,
                          "output_tokens": 4}]}


@pytest.fixture
def solved(tmp_path: Path) -> tuple[Path, Path]:
    """An instance outside instances/ and its plan in another folder; cwd elsewhere."""
    inst = tmp_path / "work" / "data" / "my-instance.json"
    inst.parent.mkdir(parents=True)
    inst.write_text(json.dumps(cpu_instance()))
    plan = tmp_path / "work" / "plans" / "p.json"
    res = invoke("solve", str(inst), "--solver", "fcfs-lru", "-o", str(plan))
    assert res.exit_code == 0, res.output
    (tmp_path / "cwd").mkdir()
    os.chdir(tmp_path / "cwd")
    return inst, plan


def test_plan_records_relative_path_and_sha(solved: tuple[Path, Path]) -> None:
    import hashlib

    inst, plan = solved
    ref = json.loads(plan.read_text())["instance"]
    assert ref["path"] == "../data/my-instance.json"
    assert ref["sha256"] == hashlib.sha256(inst.read_bytes()).hexdigest()
    assert ref["name"] == "cpu-demo"


def test_instance_outside_instances_is_found(solved: tuple[Path, Path], tmp_path: Path) -> None:
    # issue table row 4: "its instance instances/cpu-demo.json was not found"
    _, plan = solved
    assert not Path("instances").exists()
    res = invoke("validate", str(plan))
    assert res.exit_code == 0 and "valid" in res.output, res.output
    res = invoke("execute", str(plan), "--dry-run")
    assert res.exit_code == 0, res.output
    assert "ready to replay" in res.output and "actions; nothing was run" in res.output
    assert not Path("reports").exists()  # a dry run writes nothing
    res = invoke("export", str(plan), "--to", "llama-server", "-o", "exp")
    assert res.exit_code == 0, res.output


def test_moved_together_still_found(solved: tuple[Path, Path], tmp_path: Path) -> None:
    shutil.move(tmp_path / "work", tmp_path / "moved")
    res = invoke("validate", str(tmp_path / "moved" / "plans" / "p.json"))
    assert res.exit_code == 0, res.output


def test_lookup_order(solved: tuple[Path, Path], tmp_path: Path) -> None:
    inst, plan = solved
    # a different file named <name>.json beside the plan and under ./instances: the
    # recorded path comes first, so neither is read (each would be a sha mismatch)
    other = json.loads(inst.read_text())
    other["description"] = "changed"
    for p in (plan.parent / "cpu-demo.json", Path("instances") / "cpu-demo.json"):
        p.parent.mkdir(exist_ok=True)
        p.write_text(json.dumps(other))
    assert invoke("validate", str(plan)).exit_code == 0
    # recorded path gone: beside the plan is next (changed: refused, naming that file)
    inst.rename(inst.with_suffix(".bak"))
    res = invoke("validate", str(plan))
    assert res.exit_code == 2
    assert f"made for another version of {plan.parent / 'cpu-demo.json'}" in res.output
    # an unchanged copy beside the plan is used
    shutil.copy(inst.with_suffix(".bak"), plan.parent / "cpu-demo.json")
    assert invoke("validate", str(plan)).exit_code == 0
    # then ./instances/<name>.json
    (plan.parent / "cpu-demo.json").unlink()
    shutil.copy(inst.with_suffix(".bak"), Path("instances") / "cpu-demo.json")
    assert invoke("validate", str(plan)).exit_code == 0
    # nothing anywhere: one line listing what was tried, and a hint
    (Path("instances") / "cpu-demo.json").unlink()
    res = invoke("validate", str(plan))
    assert res.exit_code == 2
    assert "its instance 'cpu-demo' was not found (tried " in res.output
    assert "hint: give it with --instance FILE" in res.output


def test_changed_instance_refused_unless_force(solved: tuple[Path, Path]) -> None:
    inst, plan = solved
    data = json.loads(inst.read_text())
    data["description"] = "edited after solving"
    inst.write_text(json.dumps(data))
    for args in (["validate", str(plan)], ["execute", str(plan), "--dry-run"],
                 ["export", str(plan), "--to", "ollama", "-o", "exp"]):
        res = invoke(*args)
        assert res.exit_code == 2, res.output
        assert f"made for another version of {plan.parent / '../data/my-instance.json'}" \
            in res.output
        assert "--force" in res.output
        res = invoke(*args, "--force")
        assert res.exit_code == 0, res.output
        assert "changed since the plan was made (sha256 differs); used anyway" in res.output
    # --force does not skip the checker: a change that breaks the plan is still refused
    data["requests"][0]["output_tokens"] = 9
    inst.write_text(json.dumps(data))
    res = invoke("validate", str(plan), "--force")
    assert res.exit_code == 2 and "rule 5" in res.output


def test_older_plan_without_path_falls_back(tmp_path: Path) -> None:
    tiny = ROOT / "instances" / "tiny.json"
    assert invoke("solve", str(tiny), "--solver", "fcfs-lru", "-o", "p.json").exit_code == 0
    data = json.loads(Path("p.json").read_text())
    del data["instance"]["path"]  # as plans written before the path was recorded
    Path("p.json").write_text(json.dumps(data))
    assert invoke("validate", "p.json").exit_code == 2
    Path("instances").mkdir()
    shutil.copy(tiny, "instances/tiny.json")
    assert invoke("validate", "p.json").exit_code == 0


def test_dry_run_refuses_what_a_replay_would(solved: tuple[Path, Path]) -> None:
    inst, plan = solved
    data = json.loads(inst.read_text())
    gguf = Path(data["models"][0]["gguf"])
    moved = Path("model-copy.gguf")
    shutil.copy(gguf, moved)
    data["models"][0]["gguf"] = str(moved.resolve())
    inst.write_text(json.dumps(data))
    moved.unlink()  # the model file is gone
    res = invoke("execute", str(plan), "--dry-run", "--force")
    assert res.exit_code == 2 and "model-copy.gguf" in res.output, res.output
    assert not Path("reports").exists()
