"""planner study: argument parsing, the sweep, prices and targets, caching, Pareto, Ray."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from planner.cli import cli
from planner.domain import EngineConfig
from planner.io import InputError, parse_instance
from planner.study import (
    Prices,
    StudySpec,
    apply_load,
    cheapest_meeting,
    load_prices,
    objective_for,
    pareto_front,
    parse_gpu_ranges,
    parse_target,
    run_study,
)
from planner.study.solve import _cost_model
from tests.conftest import ROOT, tiny_dict

TINY = ROOT / "instances" / "tiny.json"
# hand-made prices: the expected cost of every cluster below is computed by hand
PRICES = {"currency": "USD", "gpus": {"rtx-4090": 1.0, "l4": {"per_hour": 0.5}}, "host": 0.25}
# gpus-per-host 2: cluster -> (hosts, cost per hour)
EXPECTED = {
    "1-rtx-4090": (1, 1.25),
    "2-rtx-4090": (1, 2.25),
    "1-l4": (1, 0.75),
    "1-rtx-4090_1-l4": (1, 1.75),
    "2-rtx-4090_1-l4": (2, 3.0),
}


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def errors(res: Any) -> list[str]:
    return [ln for ln in res.output.splitlines() if ln.startswith("Error:")]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return [{k: v for k, v in r.items() if k != "cached"} for r in csv.DictReader(f)]


def spec(tmp_path: Path, target: str, **kw: Any) -> StudySpec:
    p = tmp_path / "prices.json"
    p.write_text(json.dumps(PRICES))
    args: dict[str, Any] = {"instance": TINY, "gpus": parse_gpu_ranges("rtx-4090:0-2,l4:0-1"),
                            "target": parse_target(target), "prices": load_prices(p),
                            "solver": "grouped", "jobs": 1, "out": tmp_path / "out",
                            "objective": "mean_response",
                            "cache": tmp_path / "cache"}
    args.update(kw)
    return StudySpec(**args)


# --- arguments ------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--gpus", "rtx-a6000"], "expected TYPE:FROM-TO"),
    (["--gpus", "rtx-9999:0-2"], "unknown GPU type 'rtx-9999'"),
    (["--gpus", "l4:3-1"], "is empty (from > to)"),
    (["--gpus", "l4:0-x"], "is not a count or a range"),
    (["--gpus", "l4:0"], "every range is 0"),
    (["--target", "slo_attainment>=2"], "SLO attainment is a share"),
    (["--target", "latency<=3"], "unknown metric 'latency'"),
    (["--target", "mean_response>=3"], "is a time in seconds"),
    (["--target", "fast please"], "expected METRIC>=X"),
    (["--boost", "nomodel=2"], "unknown model 'nomodel'"),
    (["--boost", "llama3-8b=lots"], "'lots' is not a number"),
    (["--boost", "llama3-8b"], "expected MODEL=FACTOR"),
    (["--scales", "1,0"], "must be > 0"),
])
def test_bad_arguments_exit_2_one_line(args: list[str], message: str) -> None:
    base = {"--gpus": "l4:1", "--target": "slo_attainment>=0.9"}
    base.update(zip(args[::2], args[1::2], strict=True))
    flat = [x for kv in base.items() for x in kv]
    res = invoke("study", str(TINY), *flat, "--solver", "grouped")
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = errors(res)
    assert len(lines) == 1 and message in lines[0], res.output
    assert not Path("studies").exists()


def test_price_table_needs_every_swept_type(tmp_path: Path) -> None:
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"gpus": {"l4": 0.5}, "host": 0}))
    res = invoke("study", str(TINY), "--gpus", "l4:1,rtx-4090:0-1", "--prices", str(p),
                 "--target", "makespan<=100", "--solver", "grouped")
    assert res.exit_code == 2
    assert errors(res) == [f"Error: {p}: gpus: no price for rtx-4090 (priced: l4)"]
    p.write_text(json.dumps({"gpus": {"l4": -1}, "host": 0}))
    with pytest.raises(InputError, match="price per hour >= 0"):
        load_prices(p)


def test_shipped_price_table_covers_every_gpu_type_with_source_and_date() -> None:
    from importlib import resources

    from planner.reference import gpu_types

    data = json.loads(resources.files("planner.data").joinpath("prices.json").read_text())
    prices = load_prices(None)
    assert set(gpu_types()) <= set(prices.gpus)
    for entry in [*data["gpus"].values(), data["host"]]:
        assert entry["per_hour"] > 0 and entry["source"] and entry["date"]
        assert "price" in entry["kind"] or "estimate" in entry["kind"]


# --- load knobs ------------------------------------------------------------------------

def test_boost_and_scale() -> None:
    reqs = tiny_dict()["requests"]
    out = apply_load(reqs, {"llama3-8b": 3.0, "qwen14b": 0.0}, 2.0, seed=0)
    assert [r["model"] for r in out].count("llama3-8b") == 6
    assert [r["model"] for r in out].count("qwen14b") == 0
    ids = [r["id"] for r in out]
    assert len(set(ids)) == len(ids) and "a~b1" in ids and "a~b2" in ids
    by_id = {r["id"]: r for r in out}
    assert by_id["c"]["arrival_s"] == 1.0  # 2.0 / 2
    assert by_id["a~b1"]["arrival_s"] >= by_id["a"]["arrival_s"]
    assert [r["arrival_s"] for r in out] == sorted(r["arrival_s"] for r in out)
    assert out == apply_load(reqs, {"llama3-8b": 3.0, "qwen14b": 0.0}, 2.0, seed=0)
    many = [dict(r, id=f"{r['id']}-{i}") for i in range(50) for r in reqs]
    half = apply_load(many, {"qwen14b": 0.5}, 1.0, seed=1)
    assert 25 <= sum(r["model"] == "qwen14b" for r in half) <= 75
    assert reqs == tiny_dict()["requests"]  # the input is left alone


def test_pcie_generation_changes_transfer_times() -> None:
    inst = parse_instance(tiny_dict(), "tiny", ROOT, "x")
    cfg = EngineConfig("llama3-8b", "box-gpu0", 10, 4096)
    g3, g4, g5 = (_cost_model(inst, "analytic", g) for g in (3, 4, 5))
    default = _cost_model(inst, "analytic", None)
    assert default.kv_save_s(cfg, 2048) == pytest.approx(g4.kv_save_s(cfg, 2048))
    assert g3.kv_save_s(cfg, 2048) > g4.kv_save_s(cfg, 2048) > g5.kv_save_s(cfg, 2048)
    assert g3.kv_restore_s(cfg, 2048) > g5.kv_restore_s(cfg, 2048)


# --- Pareto front and target ------------------------------------------------------------

def row(sid: str, cost: float, mean: float | None, slo: float | None,
        status: str = "solved") -> dict[str, Any]:
    return {"scenario": sid, "cost_per_hour": cost, "mean_response_s": mean,
            "slo_attainment": slo, "status": status, "n_unserved": 0}


def test_pareto_front_on_synthetic_rows() -> None:
    rows = [row("a", 1.0, 100, 0.5), row("b", 2.0, 50, 0.9), row("c", 2.0, 60, 0.95),
            row("d", 3.0, 55, 0.95), row("e", 4.0, 20, 0.99), row("f", 0.5, None, None,
                                                                   "infeasible"),
            row("g", 5.0, 20, 0.99), row("h", 1.5, 120, 0.4)]
    assert [r["scenario"] for r in pareto_front(rows, "mean_response_s")] == ["a", "b", "e"]
    assert [r["scenario"] for r in pareto_front(rows, "slo_attainment", maximize=True)] == \
        ["a", "c", "e"]
    assert pareto_front([], "mean_response_s") == []


def test_cheapest_meeting_breaks_cost_ties_on_the_target_metric() -> None:
    t = parse_target("slo_attainment>=0.9")
    rows = [row("b", 2.0, 50, 0.9), row("c", 2.0, 60, 0.95), row("a", 1.0, 100, 0.5)]
    for r in rows:
        r["target_met"] = t.met(r)
    best = cheapest_meeting(rows, t)
    assert best is not None and best["scenario"] == "c"
    assert cheapest_meeting([rows[2]], t) is None
    assert not parse_target("mean_response<=200").met({"mean_response_s": 1, "n_unserved": 1})


# --- the sweep ---------------------------------------------------------------------------

def test_sweep_costs_and_cheapest_meeting_target(tmp_path: Path) -> None:
    res = run_study(spec(tmp_path, "makespan<=100000"))
    got = {r["scenario"]: (r["hosts"], r["cost_per_hour"]) for r in res.rows}
    assert got == EXPECTED
    assert all(r["status"] == "solved" and r["target_met"] for r in res.rows)
    best = res.summary["by_scale"][0]["cheapest_meeting_target"]
    assert best["scenario"] == "1-l4" and best["cost_per_hour"] == 0.75
    assert [r["cost_per_hour"] for r in res.rows] == sorted(EXPECTED[s][1] for s in EXPECTED)

    # a target only some clusters meet: the cheapest of those, computed from the rows
    means = sorted(r["mean_response_s"] for r in res.rows)
    limit = means[len(means) // 2]
    res2 = run_study(spec(tmp_path, f"mean_response<={limit}", out=tmp_path / "o2"))
    assert res2.reused == len(EXPECTED)  # prices and target are applied after the cache
    ok = [s for s, r in ((r["scenario"], r) for r in res2.rows) if r["mean_response_s"] <= limit]
    want = min(ok, key=lambda s: EXPECTED[s][1])
    assert res2.summary["by_scale"][0]["cheapest_meeting_target"]["scenario"] == want

    res3 = run_study(spec(tmp_path, "mean_response<=0.001", out=tmp_path / "o3"))
    s = res3.summary["by_scale"][0]
    assert s["cheapest_meeting_target"] is None
    assert "no cluster of the sweep meets mean_response<=0.001" in s["statement"]
    assert json.loads((tmp_path / "o3" / "summary.json").read_text())["by_scale"][0] == s

    out = tmp_path / "out"
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    with (out / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(EXPECTED)
    # every scenario can be solved again on its own, and its plan checks
    r = invoke("validate", str(out / "scenarios" / "1-l4.plan.json"), "--instance",
               str(out / "scenarios" / "1-l4.json"))
    assert r.exit_code == 0, r.output


def test_scenarios_are_solved_for_the_targets_measure(tmp_path: Path) -> None:
    assert objective_for(parse_target("slo_attainment>=0.9"), "mean_response") == \
        "slo_attainment"
    assert objective_for(parse_target("makespan<=10"), "mean_response") == "makespan"
    assert objective_for(parse_target("p95_response<=10"), "tardiness") == "tardiness"
    run_study(spec(tmp_path, "slo_attainment>=0.5", objective=None,
                   gpus=parse_gpu_ranges("l4:1")))
    data = json.loads((tmp_path / "out" / "scenarios" / "1-l4.json").read_text())
    plan = json.loads((tmp_path / "out" / "scenarios" / "1-l4.plan.json").read_text())
    assert data["objective"] == "slo_attainment"
    assert plan["solver"]["objective_name"] == "slo_attainment"


def test_rerun_reuses_every_scenario_with_identical_results(tmp_path: Path) -> None:
    first = run_study(spec(tmp_path, "slo_attainment>=0.5", scales=[1.0, 2.0]))
    assert first.solved == 10 and first.reused == 0
    csv1 = read_csv(tmp_path / "out" / "results.csv")
    second = run_study(spec(tmp_path, "slo_attainment>=0.5", scales=[1.0, 2.0]))
    assert second.solved == 0 and second.reused == 10
    strip = [{k: v for k, v in r.items() if k != "cached"} for r in first.rows]
    assert strip == [{k: v for k, v in r.items() if k != "cached"} for r in second.rows]
    assert csv1 == read_csv(tmp_path / "out" / "results.csv")
    # a changed knob is a new scenario
    third = run_study(spec(tmp_path, "slo_attainment>=0.5", scales=[1.0, 2.0], pcie_gen=3))
    assert third.reused == 0


def test_clusters_where_a_model_fits_nowhere_are_infeasible_rows(tmp_path: Path) -> None:
    s = spec(tmp_path, "makespan<=100000", gpus=parse_gpu_ranges("rtx-a6000:0-1,l4:0-1"),
             host_ram_gib=4, prices=Prices({"rtx-a6000": 1.0, "l4": 0.5}, 0.0, "USD", "x"))
    res = run_study(s)
    by = {r["scenario"]: r for r in res.rows}
    assert by["1-l4"]["status"] == "infeasible"
    assert "qwen14b" in by["1-l4"]["reason"] and not by["1-l4"]["target_met"]
    assert by["1-rtx-a6000"]["status"] == "solved"
    assert res.summary["by_scale"][0]["cheapest_meeting_target"]["scenario"] == "1-rtx-a6000"


def test_cli_study_writes_outputs_and_reports_reuse(tmp_path: Path) -> None:
    p = tmp_path / "prices.json"
    p.write_text(json.dumps(PRICES))
    args = ["study", str(TINY), "--gpus", "rtx-4090:1,l4:0-1", "--prices", str(p),
            "--target", "slo_attainment>=0.5", "--solver", "grouped", "--jobs", "2"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert "2 solved now, 0 reused" in res.output
    summary = json.loads((tmp_path / "studies" / "tiny" / "summary.json").read_text())
    assert summary["n_scenarios"] == 2 and summary["format"] == "planner.study/1"
    res = invoke(*args)
    assert "0 solved now, 2 reused" in res.output


# --- Ray ------------------------------------------------------------------------------------

def test_ray_backend_on_a_local_instance(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        via_ray = run_study(spec(tmp_path, "makespan<=100000", ray_address="local",
                                 gpus=parse_gpu_ranges("rtx-4090:1-2"), cache=None))
    finally:
        ray.shutdown()
    local = run_study(spec(tmp_path, "makespan<=100000", gpus=parse_gpu_ranges("rtx-4090:1-2"),
                           cache=None, out=tmp_path / "local"))
    assert via_ray.solved == 2
    keep = ("scenario", "cost_per_hour", "status", "mean_response_s", "slo_attainment")
    assert [{k: r[k] for k in keep} for r in via_ray.rows] == \
        [{k: r[k] for k in keep} for r in local.rows]
