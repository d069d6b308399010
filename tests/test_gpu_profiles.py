"""Planning with the H200 reference profiles (profiles/h200, measured by
benchmarks/gpu_slots.py on one NVIDIA H200): the output layer, slot steps at another
split, and slot plans from batching a one-slot plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.checker import check_plan
from planner.costmodel import cost_model_for
from planner.costmodel.splits import split_curve
from planner.domain import EngineConfig
from planner.io import load_instance
from planner.metrics import compute_metrics
from planner.service import SolveOptions, solve
from planner.solver.batching import batch_slots

ROOT = Path(__file__).resolve().parents[1]
INSTANCE = ROOT / "instances" / "h200-slots.json"


@pytest.fixture(scope="module")
def inst():  # type: ignore[no-untyped-def]
    return load_instance(INSTANCE)


def test_output_layer_on_the_gpu_is_a_candidate_and_faster(inst) -> None:  # type: ignore[no-untyped-def]
    """-ngl n leaves llama.cpp's output layer on the host: measured 2x slower per token
    on the H200 (6.9 against 3.3 ms for the 8B shape). The decode fit must tell n from
    n + 1, and the split curve must offer n + 1."""
    cost = cost_model_for(inst)
    n = cost.n_layers("8b")
    full, head_off = (EngineConfig("8b", "gpu0", g, 2048) for g in (n + 1, n))
    assert cost.max_gpu_layers("8b") == n + 1
    assert cost.decode_s_per_token(head_off, 512) > 1.5 * cost.decode_s_per_token(full, 512)
    # a slot step at n pays the host part once per step as well (the slot fit is at n + 1)
    assert cost.step_s(head_off, 4, 512) - cost.step_s(full, 4, 512) == pytest.approx(
        cost.decode_s_per_token(head_off, 512) - cost.decode_s_per_token(full, 512))
    curve = split_curve(cost, "8b", "gpu0", 2048, True, 100 * 2**30, 100 * 2**30)
    assert curve[0].cfg.n_gpu_layers == n + 1  # the fastest


def test_h200_slot_steps_batch_for_almost_nothing(inst) -> None:  # type: ignore[no-untyped-def]
    """The measured step of 8 sequences costs under 2x one sequence's on the GPU (CPU:
    1.6-3.8x for two), which is why slots pay there."""
    cost = cost_model_for(inst)
    cfg = EngineConfig("8b", "gpu0", cost.max_gpu_layers("8b"), 2048, 8)
    assert cost.step_s(cfg, 8, 64) < 2 * cost.step_s(cfg, 1, 64)


def test_slots_cut_the_h200_workload_by_more_than_30_percent(inst) -> None:  # type: ignore[no-untyped-def]
    """CP-SAT limited to one slot against CP-SAT with slots 1/2/4 (its one-slot plan
    re-dispatched on slot engines), and fcfs-lru (Ollama) with 4 slots: the slot plan is
    valid, uses slots, and beats both."""
    cost = cost_model_for(inst)
    # 6 s: the slot search also computes its bound (about 1 s here) within its limit
    plans = {k: solve(inst, cost, o) for k, o in (
        ("one", SolveOptions(time_limit_s=6, slots=(1,))),
        ("multi", SolveOptions(time_limit_s=6, slots=(1, 2, 4))),
        ("lru", SolveOptions(solver="fcfs-lru", slots=(4,))))}
    w = {k: compute_metrics(inst, p.schedule.actions).weighted_mean_response_s
         for k, p in plans.items()}
    info = plans["multi"].solver
    said = (w, info.status, info.notes)  # what a failure reports
    assert w["multi"] <= 0.7 * w["one"], said
    assert w["multi"] < w["lru"], said
    sched = plans["multi"].schedule
    assert max(e.n_parallel for e in sched.engines) > 1, said
    assert check_plan(inst, sched) == []
    assert "re-dispatched on" in (info.notes or ""), said
    # the bound reported is one for plans with slots (the one-slot bound assumed one
    # request at a time per device and was above this plan)
    assert info.bound is not None and info.bound <= w["multi"] + 1e-9


def test_batching_leaves_a_plan_alone_when_the_slots_do_not_fit(inst) -> None:  # type: ignore[no-untyped-def]
    """With the GPU's budget just above the one-slot plan's peak, the KV cache of more
    slots does not fit: no batched plan comes back (the checker refuses it)."""
    import dataclasses

    from planner.checker import memory_peaks
    from planner.domain import Cluster

    cost = cost_model_for(inst)
    sched = solve(inst, cost, SolveOptions(time_limit_s=3, slots=(1,))).schedule
    peak = memory_peaks(inst, sched)["gpu0"]["gpu_bytes"]
    host = inst.cluster.hosts[0]
    gpu = dataclasses.replace(host.gpus[0], memory_bytes=peak + 2**20)
    tight = dataclasses.replace(inst, cluster=Cluster((dataclasses.replace(
        host, gpus=(gpu,)),)))
    assert check_plan(tight, sched) == []
    assert batch_slots(tight, cost, sched, (8,), "mean_response") is None
    assert batch_slots(inst, cost, sched, (8,), "mean_response") is not None


def test_profiles_cover_a_gpu_type_without_reference_data(tmp_path: Path) -> None:
    """A GPU type gpus.json lacks is planned from its profiles (the analytic fallback
    complains only when asked about that GPU); engines split over two such GPUs, which
    no profile measures, are left out rather than failing the solve; the analytic model
    alone still refuses the type with a one-line reason."""
    import json
    import shutil

    from planner.costmodel import CostModelError

    prof = tmp_path / "prof"
    shutil.copytree(ROOT / "profiles" / "h200", prof)
    for d in list(prof.glob("*/h200")):
        for f in d.glob("*.json"):
            f.write_text(f.read_text().replace('"h200"', '"b300-custom"'))
        d.rename(d.parent / "b300-custom")
    doc = json.loads(INSTANCE.read_text())
    doc["profiles"] = [str(prof)]
    doc["requests"] = doc["requests"][:12]
    gpus = doc["cluster"]["hosts"][0]["gpus"]
    gpus[0]["type"] = "b300-custom"
    one = tmp_path / "one.json"
    one.write_text(json.dumps(doc))
    gpus[0]["memory_gib"] = 3  # the 8B model (4 GB) fits neither GPU alone
    gpus.append({"id": "gpu1", "type": "b300-custom", "memory_gib": 3})
    two = tmp_path / "two.json"
    two.write_text(json.dumps(doc))
    for path in (one, two):
        inst = load_instance(path)
        cost = cost_model_for(inst)
        assert cost.covered("8b", "gpu0")
        plan = solve(inst, cost, SolveOptions(time_limit_s=2))
        assert check_plan(inst, plan.schedule) == []
        assert not any(e.shares for e in plan.schedule.engines)
    with pytest.raises(CostModelError, match=r"b300-custom.*no reference data"):
        cost_model_for(load_instance(one), "analytic")
