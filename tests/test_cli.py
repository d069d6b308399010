"""The CLI as users run it: outputs, exit codes, messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from planner.cli import cli
from tests.conftest import ROOT, tiny_dict


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_solve_baseline_writes_checked_plan(tmp_path: Path) -> None:
    res = invoke("solve", str(ROOT / "instances" / "tiny.json"), "--solver", "grouped")
    assert res.exit_code == 0, res.output
    out = tmp_path / "solutions" / "tiny.json"  # default output under ./solutions
    data = json.loads(out.read_text())
    # llama-swap loads a model when a request for it arrives: format 1.1's on_demand
    assert data["format"] == "planner.plan/1.1"
    assert all("on_demand" in a for a in data["actions"] if a["kind"] == "load")
    assert data["solver"]["name"] == "grouped"
    assert set(data["baselines"]) == {"fcfs-lru", "grouped", "static"}
    assert "grouped" in res.output and "weighted mean response" in res.output
    assert "weighted tardiness (s)" in res.output  # every objective's metric is in the table
    res = invoke("validate", str(out), "--instance", str(ROOT / "instances" / "tiny.json"))
    assert res.exit_code == 0 and "valid" in res.output


def test_bad_instance_exit_2_no_traceback_no_output(write_instance: Any, tmp_path: Path) -> None:
    d = tiny_dict()
    d["requests"][0]["output_tokens"] = -1
    d["requests"][1]["model"] = "missing"
    p = write_instance(d)
    res = invoke("solve", str(p), "--solver", "fcfs-lru", "-o", str(tmp_path / "plan.json"))
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 2
    assert "requests[0].output_tokens" in res.output and "requests[1].model" in res.output
    assert not (tmp_path / "plan.json").exists()



def test_a_plan_given_as_the_instance_is_named_so(tmp_path: Path) -> None:
    """`planner solve` given a plan file says it is a plan (it has no `--instance` to
    suggest), and writes nothing."""
    plan = tmp_path / "plan.json"
    res = invoke("solve", str(ROOT / "instances" / "tiny.json"), "--solver", "fcfs-lru",
                 "-o", str(plan))
    assert res.exit_code == 0
    res = invoke("solve", str(plan), "--solver", "fcfs-lru", "-o", str(tmp_path / "again.json"))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "a plan file, not an instance" in res.output and "--instance" not in res.output
    assert not (tmp_path / "again.json").exists()

def test_model_that_fits_nowhere_is_rejected(write_instance: Any, tmp_path: Path) -> None:
    d = tiny_dict()
    d["cluster"]["hosts"][0]["memory_gib"] = 8  # a 29.5 GB model, 8 GiB GPU, 8 GiB host
    d["cluster"]["hosts"][0]["gpus"][0]["memory_gib"] = 8
    res = invoke("solve", str(write_instance(d)), "--solver", "fcfs-lru")
    assert res.exit_code == 2
    assert "models[qwen14b]: fits on no device at any layer split" in res.output
    # in the terms of the GPU that comes closest: its most layers, and the host it needs
    assert "GiB of host memory at best, with " in res.output and "host box has 8 GiB" in res.output
    assert not (tmp_path / "solutions").exists()


def test_generate_refuses_an_instance_with_a_model_that_fits_nowhere(
        write_instance: Any, tmp_path: Path) -> None:
    """`instance generate --like` a cluster too small for one of its models: the lines
    `solve` would print, exit 2, nothing written; without a GPU, the host memory needed."""
    d = tiny_dict()
    d["cluster"]["hosts"][0]["memory_gib"] = 8
    d["cluster"]["hosts"][0]["gpus"] = []
    out = tmp_path / "gen.json"
    res = invoke("instance", "generate", "--like", str(write_instance(d)), "-o", str(out),
                 "--rate", "0.05", "--duration", "60")
    assert res.exit_code == 2, res.output
    assert "models[qwen14b]: fits on no device at any layer split (needs " in res.output
    assert "GiB of host memory with n_ctx" in res.output and "Traceback" not in res.output
    assert not out.exists()
    d["cluster"]["hosts"][0]["memory_gib"] = 64  # now it fits on the host CPU
    res = invoke("instance", "generate", "--like", str(write_instance(d)), "-o", str(out),
                 "--rate", "0.05", "--duration", "60")
    assert res.exit_code == 0 and out.exists(), res.output


def test_missing_file_and_malformed_json(write_instance: Any) -> None:
    res = invoke("solve", "nope.json")
    assert res.exit_code == 2 and "nope.json: no such file" in res.output
    res = invoke("validate", str(write_instance("{oops")))
    assert res.exit_code == 2 and "malformed JSON at line 1" in res.output


def test_validate_rejects_tampered_plan(tmp_path: Path) -> None:
    inst = str(ROOT / "instances" / "tiny.json")
    assert invoke("solve", inst, "--solver", "fcfs-lru", "-o", "p.json").exit_code == 0
    data = json.loads(Path("p.json").read_text())
    runs = [a for a in data["actions"] if a["kind"] == "run"]
    runs[1]["start_s"] = runs[0]["start_s"]  # two runs at once on one GPU
    Path("bad.json").write_text(json.dumps(data))
    res = invoke("validate", "bad.json", "--instance", inst)
    assert res.exit_code == 2
    assert "rule 2" in res.output


def test_plan_needs_its_instance(tmp_path: Path) -> None:
    inst = tmp_path / "elsewhere" / "mine.json"
    inst.parent.mkdir()
    inst.write_text((ROOT / "instances" / "tiny.json").read_text())
    invoke("solve", str(inst), "--solver", "fcfs-lru", "-o", "p.json")
    inst.unlink()  # the plan's instance is gone from every place it is looked for
    res = invoke("validate", "p.json")
    assert res.exit_code == 2 and "--instance" in res.output


def test_generate_is_reproducible_and_valid() -> None:
    args = ["instance", "generate", "--cluster", "one-gpu", "--models",
            "llama3-8b-q4_k_m,qwen2.5-3b-f16", "--rate", "0.1", "--duration", "120",
            "--seed", "5"]
    assert invoke(*args, "-o", "a.json").exit_code == 0
    assert invoke(*args, "-o", "b.json").exit_code == 0
    a, b = json.loads(Path("a.json").read_text()), json.loads(Path("b.json").read_text())
    assert a["requests"] == b["requests"] and len(a["requests"]) > 10
    assert invoke("validate", "a.json").exit_code == 0
    res = invoke(*args, "--rate", "gpt=1", "-o", "c.json")
    assert res.exit_code == 2 and "unknown model 'gpt'" in res.output


def test_generate_bursty_heavy_tailed() -> None:
    args = ["instance", "generate", "--cluster", "one-gpu", "--models",
            "llama3-8b-q4_k_m,qwen2.5-3b-f16,qwen3-8b-f16", "--rate", "0.1", "--duration",
            "300", "--arrivals", "bursty", "--hot-models", "1", "--burst-period", "60",
            "--lengths", "pareto", "--tail-alpha", "1.3", "--seed", "2"]
    assert invoke(*args, "-o", "a.json").exit_code == 0
    a = json.loads(Path("a.json").read_text())
    assert "bursty arrivals" in a["description"] and len(a["requests"]) > 30
    assert invoke("validate", "a.json").exit_code == 0
    assert invoke(*args[:-2], "--seed", "2", "-o", "b.json").exit_code == 0
    assert json.loads(Path("b.json").read_text())["requests"] == a["requests"]


def test_generate_keeps_requests_within_their_models_trained_context() -> None:
    """Outputs of up to 4,000 tokens for Llama-2-70B, trained on 4,096: the long ones are
    shortened to fit (prompt first), so the instance is one `solve` takes."""
    args = ["instance", "generate", "--cluster", "one-gpu", "--models",
            "llama2-70b-q4_k_m,llama3-8b-q4_k_m", "--rate", "0.05", "--duration", "600",
            "--output-median", "2500", "--max-output", "4000", "--seed", "3", "-o", "a.json"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    a = json.loads(Path("a.json").read_text())
    assert "shortened to their model's trained context" in res.output
    assert "shortened to their model's trained context" in a["description"]
    llama2 = [r for r in a["requests"] if r["model"] == "llama2-70b-q4_k_m"]
    assert max(r["prompt_tokens"] + r["output_tokens"] for r in llama2) == 4096
    assert all(r["prompt_tokens"] >= 1 and r["output_tokens"] >= 1 for r in a["requests"])
    assert invoke("validate", "a.json").exit_code == 0


def test_help_has_examples() -> None:
    for cmd in ("solve", "validate"):
        res = invoke(cmd, "--help")
        assert "Examples:" in res.output


def test_solve_polish_is_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    """The plan's notes say how many runs the polish moved; ``--no-polish`` leaves it
    out (CP-SAT keeps the whole time limit). Both plans pass the checker."""
    inst = str(ROOT / "instances" / "tiny.json")
    for flag, polished in (("--polish", True), ("--no-polish", False)):
        out = tmp_path / f"{flag}.json"
        res = invoke("solve", inst, "--time-limit", "3", flag, "-o", str(out))
        assert res.exit_code == 0, res.output
        notes = json.loads(out.read_text())["solver"]["notes"]
        assert ("polish:" in notes) is polished
        assert invoke("validate", str(out), "--instance", inst).exit_code == 0


def test_solve_says_what_the_bound_leaves_over_the_best_baseline(tmp_path: Path) -> None:
    """The summary turns the bound into what any plan could gain over the best baseline:
    the bound, its ratio to the best baseline's objective, and which baseline that is, as
    the plan file has them; the plan page shows the same line."""
    from planner.metrics import headroom

    out = tmp_path / "p.json"
    res = invoke("solve", str(ROOT / "instances" / "tiny.json"), "--time-limit", "2",
                 "-o", str(out))
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    objs = {n: b["objective"] for n, b in data["baselines"].items() if "objective" in b}
    best = min(objs, key=lambda n: objs[n])
    bound = data["solver"]["bound"]
    assert 0 < bound <= data["solver"]["objective"] <= objs[best] + 1e-9
    line = headroom(data)
    assert line is not None and f"{bound / objs[best]:.3f}x the best baseline, {best}" in line
    assert line.startswith("no plan can do better than") and line in " ".join(res.output.split())
    from planner.page import render_plan_page

    assert f"<p>{line}</p>" in render_plan_page(data)  # the plan page says it too
    # SLO attainment: the bound is an upper one, the best baseline the highest
    slo = {"solver": {"bound": 0.9, "objective_name": "slo_attainment"},
           "baselines": {"a": {"objective": 0.6}, "b": {"objective": 0.75}, "c": {"error": "x"}}}
    assert headroom(slo) == ("no plan can attain more than 0.900 (1.200x the best baseline, "
                             "b: 0.750)")
    assert headroom({"solver": {"bound": None}, "baselines": {"a": {"objective": 1.0}}}) is None


def test_replay_of_a_plan_whose_models_have_no_gguf_says_where_to_get_one(
        tmp_path: Path) -> None:
    """`execute --dry-run` of a plan for reference-only models: one line per model the plan
    uses, exit 2, and a hint naming where a GGUF comes from."""
    from tests.conftest import ROOT

    inst = str(ROOT / "instances" / "tiny.json")
    plan = tmp_path / "p.json"
    assert invoke("solve", inst, "--solver", "fcfs-lru", "-o", str(plan)).exit_code == 0
    res = invoke("execute", str(plan), "--instance", inst, "--dry-run")
    assert res.exit_code == 2, res.output
    assert 'models[llama3-8b]: no GGUF file to run (give "gguf")' in res.output
    assert "planner profile synth" in res.output and "Traceback" not in res.output


def test_solve_clock_shows_the_phase_and_time_on_a_terminal_only() -> None:
    """`planner solve` draws a transient bar (phase, elapsed of the limit) on a terminal's
    stderr; elsewhere it draws nothing, so logs and pipes read as before."""
    import io
    import time

    from rich.console import Console

    from planner.commands.solve import SolveClock

    tty = io.StringIO()
    with SolveClock(2.0, Console(file=tty, force_terminal=True, width=100)) as clock:
        time.sleep(0.6)
        clock.phase("cp-sat search and polish")
        time.sleep(0.6)
    shown = tty.getvalue()
    assert "baselines" in shown and "cp-sat search and polish" in shown and "of 2 s" in shown
    pipe = io.StringIO()
    with SolveClock(2.0, Console(file=pipe, force_terminal=False)) as clock:
        time.sleep(0.3)
        clock.phase("cp-sat search and polish")
    assert pipe.getvalue() == ""
