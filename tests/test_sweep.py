"""benchmarks/sweep.py: its checks flag what they should, and a drawn case runs end to end
(the sweep's long runs are by hand; this keeps the script working)."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def sweep() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sweep", ROOT / "benchmarks" / "sweep.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plan(value: float, bound: float, base: float, key: str) -> dict:
    return {"metrics": {key: value}, "solver": {"bound": bound},
            "baselines": {"static": {"metrics": {key: base}}, "grouped": {"error": "x"}}}


def test_checks_flag_a_worse_plan_a_bound_past_it_and_overtime() -> None:
    s = sweep()
    key = "weighted_mean_response_s"
    assert s.check(plan(10.0, 9.0, 12.0, key), "mean_response", 8, 9.0) == []
    flags = s.check(plan(10.0, 11.0, 9.0, key), "mean_response", 8, 20.0)
    assert len(flags) == 3 and "worse than static" in flags[0] and "bound" in flags[1]
    assert "ran 20.0 s" in flags[2]
    # rounding in the plan file is no fault
    assert s.check(plan(10.0, 10.00001, 10.00001, key), "mean_response", 8, 1.0) == []
    # SLO attainment is maximised: its bound lies above the plan
    assert s.check(plan(0.8, 0.9, 0.7, "slo_attainment"), "slo_attainment", 8, 1.0) == []
    flags = s.check(plan(0.8, 0.7, 0.9, "slo_attainment"), "slo_attainment", 8, 1.0)
    assert len(flags) == 2


def test_a_drawn_case_runs_end_to_end(tmp_path: Path) -> None:
    """Seed 25's first case with `--slots 1,2`: 6 requests on the two servers, 3 s."""
    out = tmp_path / "sweep"
    ran = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep.py"), "--cases", "1",
                          "--seed", "25", "--extra", "--slots 1,2", "--export", "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    (row,) = list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))
    assert row["requests"] == "6" and row["solve"] == "--time-limit 3 --slots 1,2"
    assert row["status"] and not row["flags"], row
    assert (out / "s0.json").exists() and (out / "i0.json").exists()
    # --export: one folder per target, each with what it writes
    assert sorted(p.name for p in (out / "export0").iterdir()) == [str(k) for k in range(6)]
    assert all(any(p.iterdir()) for p in (out / "export0").iterdir())


def test_cross_check_holds_every_bound_to_every_slotless_plan() -> None:
    s = sweep()
    key = "weighted_mean_response_s"
    drawn = plan(10.0, 9.5, 12.0, key)
    ref = plan(9.0, 8.0, 11.0, key)
    # the drawn solve's bound (9.5) passes the reference's plan (9.0)
    flags = s.cross_check([(drawn, ["--no-cpu-engines"]), (ref, [])], "mean_response")
    assert flags == ["solve 0's bound 9.5 past solve 1's plan (9.0)"]
    assert s.cross_check([(plan(10.0, 8.9, 12.0, key), []), (ref, [])], "mean_response") == []
    # a plan with parallel slots, and the baselines of a solve with slots, may pass it
    slots = plan(7.0, 6.0, 8.5, key)
    slots["engines"] = [{"id": "e1", "n_parallel": 2}]
    assert s.cross_check([(slots, ["--slots", "1,2"]), (ref, [])], "mean_response") == []
    slots["engines"] = [{"id": "e1", "n_parallel": 1}]
    flags = s.cross_check([(slots, ["--slots", "1,2"]), (ref, [])], "mean_response")
    assert flags == ["solve 1's bound 8.0 past solve 0's plan (7.0)"]
    # SLO attainment: the bound lies above every plan
    up = plan(0.8, 0.85, 0.7, "slo_attainment")
    assert s.cross_check([(up, []), (plan(0.9, 0.95, 0.7, "slo_attainment"), [])],
                         "slo_attainment") == ["solve 0's bound 0.85 past solve 1's plan (0.9)"]


def test_replay_leaves_gpu_clusters_and_long_plans_alone(tmp_path: Path) -> None:
    """`--execute` replays only plans of clusters without GPUs and within --max-replay
    (its real replays are run by hand: README, "Solve sweep")."""
    s = sweep()
    inst, sol = tmp_path / "i.json", tmp_path / "s.json"
    sol.write_text('{"metrics": {"makespan_s": 400.0}}')
    inst.write_text('{"cluster": {"hosts": [{"id": "h", "gpus": [{"id": "g"}]}]}}')
    assert s.replay("planner", inst, sol, tmp_path / "r.json", 180.0) == ([], {})
    inst.write_text('{"cluster": {"hosts": [{"id": "h", "gpus": []}]}}')
    flags, info = s.replay("planner", inst, sol, tmp_path / "r.json", 180.0)
    assert flags == [] and info == {"replay": "skipped (makespan 400 s)"}
    assert not (tmp_path / "r.json").exists()
