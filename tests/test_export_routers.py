"""Exports for today's routers: llama-server's router mode (models-preset INI,
--models-max) and llama-swap's matrix router, on a hand-worked plan and shipped ones.

Keys are checked against the tools' documentation: llama.cpp tools/server/README.md
("Using multiple models", commit 00dc805) and llama-swap v250 config.example.yaml
(routing.router.settings.matrix, internal/config/matrix.go)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from click.testing import CliRunner

from planner.cli import cli
from planner.domain import Action, Engine, Schedule
from planner.export import (
    host_residency,
    llama_server_router,
    llama_swap_matrix,
    measured_loads,
)
from planner.io import load_instance
from tests.conftest import ROOT, tiny_dict

# preset keys: llama-server arguments without dashes, an env name, and the preset-only ones
PRESET_KEYS = {"model", "n-gpu-layers", "ctx-size", "parallel", "device", "load-on-startup",
               "LLAMA_ARG_REPACK", "slot-save-path"}
# llama-swap's DSL identifiers and var names (internal/matrix/dsl.go, config/matrix.go)
VAR = re.compile(r"^[a-zA-Z0-9.-]{1,32}$")
SWAP_TOP = {"healthCheckTimeout", "startPort", "models", "routing"}


def parse_ini(text: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Top-level keys and sections of a preset file (';' comments)."""
    top: dict[str, str] = {}
    sections: dict[str, dict[str, str]] = {}
    cur = top
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith("["):
            assert line.endswith("]"), line
            cur = sections.setdefault(line[1:-1], {})
            continue
        k, v = (x.strip() for x in line.split("=", 1))
        assert k not in cur, f"duplicate key {k}"
        cur[k] = v
    return top, sections


def three_models(tmp_path: Path) -> Path:
    data = tiny_dict()
    data["models"].append({"id": "llama3-8b-b", "reference": "llama3-8b-q4_k_m"})
    p = tmp_path / "three.json"
    p.write_text(json.dumps(data))
    return p


def hand_plan(tmp_path: Path):  # type: ignore[no-untyped-def]
    """One GPU: A loaded at 0 and kept; B loaded at 1, unloaded at 5; C loaded at 6, kept.
    Resident from start-up: A only (C comes after an unload). At most 2 loaded at once;
    together: {A, B} and {A, C}. Loads take 1.0, 2.0 and 0.5 s."""
    inst = load_instance(three_models(tmp_path))
    dev = "box-gpu0"
    engines = (Engine("eA", "llama3-8b", dev, 33, 1024, 2**30, 0),
               Engine("eB", "qwen14b", dev, 49, 1024, 2**30, 0),
               Engine("eC", "llama3-8b-b", dev, 33, 1024, 2**30, 0))
    actions = (Action("load", "eA", dev, 0.0, 1.0), Action("load", "eB", dev, 1.0, 3.0),
               Action("unload", "eB", dev, 5.0, 5.5), Action("load", "eC", dev, 6.0, 6.5))
    return inst, Schedule(engines, actions)


def test_residency_hand_worked(tmp_path: Path) -> None:
    inst, sched = hand_plan(tmp_path)
    (hr,) = host_residency(inst, sched)
    names = {u.model: u for u in hr.uses}
    assert hr.resident == {names["llama3-8b"]}
    assert hr.most == 2
    assert {frozenset(u.model for u in s) for s in hr.together} == {
        frozenset({"llama3-8b", "qwen14b"}), frozenset({"llama3-8b", "llama3-8b-b"})}


def test_router_preset_hand_worked(tmp_path: Path) -> None:
    inst, sched = hand_plan(tmp_path)
    files = llama_server_router(inst, sched)
    top, sections = parse_ini(files["models.ini"])
    assert top == {"version": "1"}
    assert set(sections) == {"*", "llama3-8b", "qwen14b", "llama3-8b-b"}
    for name, sec in sections.items():
        assert set(sec) <= PRESET_KEYS, name
    assert sections["qwen14b"]["n-gpu-layers"] == "49"
    assert sections["llama3-8b"]["ctx-size"] == "1024"
    assert sections["llama3-8b"]["parallel"] == "1"
    assert sections["llama3-8b"]["device"] == "CUDA0"
    assert [n for n, s in sections.items() if s.get("load-on-startup") == "true"] == ["llama3-8b"]
    assert "--models-preset models.ini --models-max 2" in files["llama-server-router.sh"]


def test_swap_matrix_hand_worked(tmp_path: Path) -> None:
    inst, sched = hand_plan(tmp_path)
    doc = yaml.safe_load(llama_swap_matrix(inst, sched)["llama-swap.yaml"])
    assert set(doc) <= SWAP_TOP
    assert doc["routing"]["router"]["use"] == "matrix"
    m = doc["routing"]["router"]["settings"]["matrix"]
    assert set(m) == {"vars", "evict_costs", "sets"}
    assert all(VAR.match(k) and v in doc["models"] for k, v in m["vars"].items())
    model_of = m["vars"]
    cost = {model_of[k]: c for k, c in m["evict_costs"].items()}
    assert cost == {"llama3-8b": 10, "qwen14b": 20, "llama3-8b-b": 5}  # tenths of a second
    sets = {frozenset(model_of[t.strip()] for t in dsl.split("&")) for dsl in m["sets"].values()}
    assert sets == {frozenset({"llama3-8b", "qwen14b"}), frozenset({"llama3-8b", "llama3-8b-b"})}
    # a replay's measured loads replace the predicted ones (done loads only)
    report = {"actions": [
        {"kind": "load", "engine": "eB", "status": "done", "measured_start_s": 1.0,
         "measured_end_s": 5.0},
        {"kind": "load", "engine": "eA", "status": "failed", "measured_start_s": 0.0,
         "measured_end_s": 9.0}]}
    doc = yaml.safe_load(llama_swap_matrix(inst, sched, measured_loads(report))
                         ["llama-swap.yaml"])
    m = doc["routing"]["router"]["settings"]["matrix"]
    cost = {m["vars"][k]: c for k, c in m["evict_costs"].items()}
    assert cost == {"llama3-8b": 10, "qwen14b": 40, "llama3-8b-b": 5}


def test_router_and_matrix_from_cli(tmp_path: Path) -> None:
    inst = ROOT / "instances" / "mixed.json"
    res = CliRunner().invoke(cli, ["solve", str(inst), "--solver", "static", "-o", "plan.json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for target in ("llama-server-router", "llama-swap"):
        res = CliRunner().invoke(cli, ["export", "plan.json", "--instance", str(inst), "--to",
                                       target, "-o", "out"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
    plan = json.loads(Path("plan.json").read_text())
    for host in ("srv1", "srv2"):
        _top, sections = parse_ini(Path(f"out/models-{host}.ini").read_text())
        models = {s for s in sections if s != "*"}
        # static: every model placed once and never unloaded, so all load at start-up
        assert all(sections[s].get("load-on-startup") == "true" for s in models)
        doc = yaml.safe_load(Path(f"out/llama-swap-{host}.yaml").read_text())
        assert set(doc["models"]) == models
        m = doc["routing"]["router"]["settings"]["matrix"]
        assert len(m["sets"]) == 1  # all resident together
    engines = {e["model"] for e in plan["engines"]}
    seen = set()
    for host in ("srv1", "srv2"):
        seen |= {s for s in parse_ini(Path(f"out/models-{host}.ini").read_text())[1]
                 if s != "*"}
    assert seen == engines
    script = Path("out/llama-server-router.sh").read_text()
    assert script.count("--models-max 3") == 2
