"""Baselines emit plans the checker accepts, and behave as the tools they imitate."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.baselines.policies import BASELINES, fcfs_lru, static
from planner.baselines.sim import BaselineError
from planner.checker import check_plan
from planner.costmodel import AnalyticCostModel
from planner.io import load_instance
from tests.conftest import ROOT

INSTANCES = ["tiny.json", "swap.json", "mixed.json"]


@pytest.mark.parametrize("name", list(BASELINES))
@pytest.mark.parametrize("inst_file", INSTANCES)
def test_baseline_plans_pass_checker(name: str, inst_file: str) -> None:
    inst = load_instance(ROOT / "instances" / inst_file)
    cost = AnalyticCostModel.for_instance(inst)
    try:
        sched = BASELINES[name](inst, cost)
    except BaselineError:
        assert name == "static" and inst_file != "mixed.json"
        return
    assert check_plan(inst, sched) == []
    runs = [a for a in sched.actions if a.kind == "run"]
    assert {a.request for a in runs} == {r.id for r in inst.requests}
    assert not any(a.kind in ("kv_save", "kv_restore") for a in sched.actions)  # never preempt


def test_static_fails_clearly_when_models_cannot_all_stay(tmp_path: Path) -> None:
    inst = load_instance(ROOT / "instances" / "swap.json")
    with pytest.raises(BaselineError, match="does not fit beside the models already placed"):
        static(inst, AnalyticCostModel.for_instance(inst))


def test_fcfs_lru_serves_in_arrival_order_and_evicts_lru() -> None:
    inst = load_instance(ROOT / "instances" / "tiny.json")
    sched = fcfs_lru(inst, AnalyticCostModel.for_instance(inst))
    runs = sorted((a for a in sched.actions if a.kind == "run"), key=lambda a: a.start_s)
    assert [a.request for a in runs] == ["a", "b", "c", "d"]  # FCFS, no overtaking
    # both models do not fit the 24 GiB GPU together: every model switch is an unload + load
    kinds = [a.kind for a in sorted(sched.actions, key=lambda a: a.start_s) if a.kind != "run"]
    assert kinds.count("load") == 4 and kinds.count("unload") == 3


def test_grouped_swaps_less_than_fcfs_on_swap_instance() -> None:
    inst = load_instance(ROOT / "instances" / "swap.json")
    cost = AnalyticCostModel.for_instance(inst)
    loads = {n: sum(a.kind == "load" for a in BASELINES[n](inst, cost).actions)
             for n in ("fcfs-lru", "grouped")}
    assert loads["grouped"] <= loads["fcfs-lru"]
