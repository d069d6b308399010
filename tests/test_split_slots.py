"""Engines with parallel slots and engines split over GPUs (format 1.1): cost model, checker,
plan files and exports, on hand-built plans."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from planner.checker import check_plan
from planner.costmodel import AnalyticCostModel
from planner.domain import GIB, Action, DeviceShare, Engine, EngineConfig, Schedule
from planner.export import llama_server, llama_swap, ollama
from planner.io import load_instance, load_plan, parse_schedule, plan_format


def six_small_requests() -> dict[str, Any]:
    """:func:`two_gpu_dict` with six requests of its small model, 0.2 s apart."""
    data = two_gpu_dict()
    data["requests"] = [{"id": f"r{i}", "model": "small", "arrival_s": 0.2 * i,
                         "prompt_tokens": 128, "output_tokens": 200} for i in range(6)]
    return data


def two_gpu_dict() -> dict[str, Any]:
    """A 70B model on a host with two 24 GiB GPUs and too little RAM to offload layers to."""
    return {
        "format": "planner.instance/1", "name": "two-gpu",
        "cluster": {"hosts": [{"id": "box", "cpu": "desktop-dual-channel", "threads": 16,
                               "memory_gib": 16,
                               "gpus": [{"id": "g0", "type": "rtx-4090", "memory_gib": 24},
                                        {"id": "g1", "type": "rtx-4090", "memory_gib": 24}]}]},
        "models": [{"id": "big", "reference": "llama2-70b-q4_k_m"},
                   {"id": "small", "reference": "llama3-8b-q4_k_m"}],
        "requests": [
            {"id": "a", "model": "big", "arrival_s": 0.0, "prompt_tokens": 128,
             "output_tokens": 32},
            {"id": "b", "model": "small", "arrival_s": 0.0, "prompt_tokens": 64,
             "output_tokens": 16},
            {"id": "c", "model": "small", "arrival_s": 0.5, "prompt_tokens": 64,
             "output_tokens": 16}]}


@pytest.fixture
def two_gpu(write_instance):  # type: ignore[no-untyped-def]
    return load_instance(write_instance(two_gpu_dict()))


def test_split_memory_per_gpu_and_time(two_gpu) -> None:  # type: ignore[no-untyped-def]
    cost = AnalyticCostModel.for_instance(two_gpu)
    n = cost.n_layers("big")
    one = EngineConfig("big", "g0", n + 1, 1024)
    assert cost.gpu_bytes(one) > 24 * GIB  # does not fit one GPU
    split = EngineConfig("big", "g0", n + 1, 1024, split=(("g0", 0.5), ("g1", 0.5)))
    shares = cost.gpu_shares(split)
    assert set(shares) == {"g0", "g1"} and all(b < 24 * GIB for b in shares.values())
    assert sum(shares.values()) == cost.gpu_bytes(split)
    assert shares["g1"] > shares["g0"]  # the output layer sits on the last GPU
    # layer split: the GPUs take turns, plus the hop between them
    assert cost.decode_s_per_token(split, 100) > cost.decode_s_per_token(one, 100)
    assert cost.decode_s_per_token(split, 100) < 1.05 * cost.decode_s_per_token(one, 100)


def test_slots_count_kv_of_every_slot_and_batch_steps(two_gpu) -> None:  # type: ignore[no-untyped-def]
    cost = AnalyticCostModel.for_instance(two_gpu)
    c1 = EngineConfig("small", "g0", 33, 1024)
    c4 = EngineConfig("small", "g0", 33, 1024, n_parallel=4)
    arch = two_gpu.model("small").arch
    assert cost.gpu_bytes(c4) - cost.gpu_bytes(c1) == pytest.approx(
        3 * 1024 * arch.kv_bytes_per_token, rel=0.01)
    one = cost.step_s(c4, 1, 200)
    four = cost.step_s(c4, 4, 200)
    assert one < four < 4 * one  # a batch reads the weights once
    assert cost.run_s_at(c4, 64, 0, 16, active=1) == cost.run_s(c4, 64, 0, 16)
    assert cost.run_s_at(c4, 64, 0, 16, active=4) > cost.run_s(c4, 64, 0, 16)


def faults(inst, sched: Schedule) -> list[Any]:  # type: ignore[no-untyped-def]
    """Violations other than requests the hand-built plan leaves out on purpose."""
    return [v for v in check_plan(inst, sched) if "never served" not in v.message]


def _split_engine(cost: AnalyticCostModel) -> Engine:
    cfg = EngineConfig("big", "g0", 81, 1024, split=(("g0", 0.5), ("g1", 0.5)))
    shares = cost.gpu_shares(cfg)
    return Engine("e1", "big", "g0", 81, 1024, sum(shares.values()), cost.host_bytes(cfg),
                  shares=tuple(DeviceShare(d, f, shares[d]) for d, f in cfg.split))


def test_checker_counts_split_shares_and_lanes(two_gpu) -> None:  # type: ignore[no-untyped-def]
    cost = AnalyticCostModel.for_instance(two_gpu)
    e = _split_engine(cost)
    acts = (Action("load", "e1", "g0", 0, 5), Action("run", "e1", "g0", 5, 9, "a", 0, 32))
    assert faults(two_gpu, Schedule((e,), acts)) == []
    # a small engine on g1 cannot run while the split engine computes there
    small = Engine("e2", "small", "g1", 0, 1024, 0, cost.host_bytes(
        EngineConfig("small", "g1", 0, 1024)))
    acts2 = (*acts, Action("load", "e2", "g1", 4, 6),
             Action("run", "e2", "g1", 6, 8, "b", 0, 16),
             Action("run", "e2", "g1", 8, 10, "c", 0, 16))
    v = faults(two_gpu, Schedule((e, small), acts2))
    assert any(x.rule == 2 and "another engine" in x.message for x in v), v
    assert any(x.rule == 2 and "transfer lane of g1" in x.message for x in v), v
    # shares that do not add up, or a GPU of another host, are rule-1 faults
    bad = Engine("e1", "big", "g0", 81, 1024, e.gpu_bytes + 1, e.host_bytes, shares=e.shares)
    assert any(x.rule == 1 for x in faults(two_gpu, Schedule((bad,), acts)))
    # each GPU's share counts against that GPU
    fat = Engine("e1", "big", "g0", 81, 1024, 30 * GIB, e.host_bytes,
                 shares=(DeviceShare("g0", 0.2, 5 * GIB), DeviceShare("g1", 0.8, 25 * GIB)))
    assert any(x.rule == 4 and "GPU g1" in x.message
               for x in faults(two_gpu, Schedule((fat,), acts)))


def test_checker_slots_allow_overlap_up_to_n_parallel(two_gpu) -> None:  # type: ignore[no-untyped-def]
    cost = AnalyticCostModel.for_instance(two_gpu)
    cfg = EngineConfig("small", "g0", 33, 1024, n_parallel=2)
    e = Engine("e1", "small", "g0", 33, 1024, cost.gpu_bytes(cfg), cost.host_bytes(cfg),
               n_parallel=2)
    acts = (Action("load", "e1", "g0", 0, 1), Action("run", "e1", "g0", 1, 3, "b", 0, 16),
            Action("run", "e1", "g0", 1.5, 3.5, "c", 0, 16))
    assert faults(two_gpu, Schedule((e,), acts)) == []
    one = Engine("e1", "small", "g0", 33, 1024, e.gpu_bytes, e.host_bytes, n_parallel=1)
    v = faults(two_gpu, Schedule((one,), acts))
    assert any(x.rule == 2 and "1 slot" in x.message for x in v), v


def test_plan_format_and_round_trip(two_gpu) -> None:  # type: ignore[no-untyped-def]
    cost = AnalyticCostModel.for_instance(two_gpu)
    e = _split_engine(cost)
    sched = Schedule((e,), (Action("load", "e1", "g0", 0, 5),))
    assert plan_format(sched) == "planner.plan/1.1"
    plain = Schedule((Engine("e9", "small", "g0", 0, 512, 0, 1),), ())
    assert plan_format(plain) == "planner.plan/1"
    from planner.io import engine_to_json

    data = {"format": "planner.plan/1.1", "instance": {"name": "x", "sha256": ""},
            "solver": {"name": "hand", "status": "FEASIBLE"},
            "engines": [engine_to_json(e)], "actions": [], "requests": [],
            "metrics": {k: 0 for k in ("makespan_s", "mean_response_s", "p95_response_s",
                                       "weighted_mean_response_s", "slo_attainment",
                                       "n_loads", "n_kv_saves", "n_recomputes")}}
    back = parse_schedule(data, "x")
    assert back.engines[0] == e


def test_v1_plan_reads_as_before(tiny, write_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from planner.baselines.policies import fcfs_lru
    from planner.domain import Plan, SolverInfo
    from planner.io import plan_to_json, write_json_atomic

    inst = load_instance(write_instance(tiny))
    sched = fcfs_lru(inst, AnalyticCostModel.for_instance(inst))
    # no slots, no split engines, no loads on demand (fcfs-lru's, format 1.1)
    sched = dataclasses.replace(sched, actions=tuple(
        dataclasses.replace(a, on_demand=None) for a in sched.actions))
    doc = plan_to_json(Plan(inst.name, inst.sha256, SolverInfo("fcfs-lru", "FEASIBLE"), sched),
                       inst)
    assert doc["format"] == "planner.plan/1"
    assert all("n_parallel" not in e and "devices" not in e for e in doc["engines"])
    write_json_atomic(tmp_path / "p.json", doc)
    data, back = load_plan(tmp_path / "p.json")
    assert back.engines == sched.engines and check_plan(inst, back, data) == []


def test_exports_set_parallel_and_tensor_split(two_gpu) -> None:  # type: ignore[no-untyped-def]
    cost = AnalyticCostModel.for_instance(two_gpu)
    e = _split_engine(cost)
    cfg = EngineConfig("small", "g0", 33, 1024, n_parallel=4)
    e2 = Engine("e2", "small", "g0", 33, 1024, cost.gpu_bytes(cfg), cost.host_bytes(cfg),
                n_parallel=4)
    sched = Schedule((e, e2), (Action("load", "e1", "g0", 0, 5),
                               Action("run", "e1", "g0", 5, 9, "a", 0, 32),
                               Action("load", "e2", "g0", 5, 6)))
    sh = llama_server(two_gpu, sched)
    assert "CUDA_VISIBLE_DEVICES=0,1 llama-server" in sh
    assert "--split-mode layer --tensor-split 0.5,0.5" in sh
    assert "-c 4096 --alias small --parallel 4" in sh
    swap = llama_swap(two_gpu, sched)
    assert "concurrencyLimit: 4" in swap
    files = ollama(two_gpu, sched)
    assert any("OLLAMA_NUM_PARALLEL=4" in t for t in files.values())
    assert json.dumps(files)  # plain text


def test_model_that_fits_only_split_is_planned_checked_and_exported(
        write_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Acceptance: a 70B model on two 24 GiB GPUs of a host with 6 GiB of RAM (no room to
    offload layers to the host) is planned split, passes the checker and exports with
    --tensor-split."""
    from planner.export import export
    from planner.service import SolveOptions, prepare, solve

    data = two_gpu_dict()
    data["cluster"]["hosts"][0]["memory_gib"] = 6
    inst, cost = prepare(write_instance(data))
    plan = solve(inst, cost, SolveOptions(time_limit_s=10, workers=1))
    big = [e for e in plan.schedule.engines if e.model == "big"]
    assert big and all(e.devices == ("g0", "g1") for e in big)
    assert check_plan(inst, plan.schedule) == []
    for name in ("fcfs-lru", "grouped", "static"):
        assert plan.baselines[name].get("error"), name  # none of them can place it
    (path,) = export(inst, plan.schedule, "llama-server", tmp_path / "out")
    line = next(x for x in path.read_text().splitlines() if "--alias big" in x)
    assert line.startswith("CUDA_VISIBLE_DEVICES=0,1 llama-server")
    assert "--split-mode layer --tensor-split 0.5,0.5" in line


def test_solver_with_slots_overlaps_runs_and_passes_the_checker(
        write_instance) -> None:  # type: ignore[no-untyped-def]
    from planner.service import SolveOptions, prepare, solve

    inst, cost = prepare(write_instance(six_small_requests()))
    plan = solve(inst, cost, SolveOptions(time_limit_s=10, workers=1, slots=(1, 2, 4)))
    assert check_plan(inst, plan.schedule) == []
    one = solve(inst, cost, SolveOptions(time_limit_s=10, workers=1, slots=(1,)))
    slotted = [e for e in plan.schedule.engines if e.n_parallel > 1]
    runs = sorted((a for a in plan.schedule.actions if a.kind == "run"),
                  key=lambda a: (a.engine, a.start_s))
    overlap = any(b.start_s < a.end_s - 1e-9 and a.engine == b.engine
                  for a, b in itertools.pairwise(runs))
    from planner.metrics import compute_metrics

    m, m1 = (compute_metrics(inst, p.schedule.actions) for p in (plan, one))
    assert m.weighted_mean_response_s <= m1.weighted_mean_response_s + 1e-6
    if slotted:
        assert overlap


def test_batched_ends_follow_concurrency(two_gpu) -> None:  # type: ignore[no-untyped-def]
    """A run alone on a 4-slot engine ends well before its conservative (4 busy slots)
    end; runs that share the slots end later than alone; none ends past its bound."""
    from planner.slots import batched_ends

    cost = AnalyticCostModel.for_instance(two_gpu)
    cfg = EngineConfig("small", "g0", 33, 1024, n_parallel=4)
    alone = batched_ends(cost, cfg, [(0.0, 64, 100)])[0]
    bound = cost.run_s_at(cfg, 64, 0, 100, active=4)
    assert alone < bound
    assert alone == pytest.approx(cost.run_s_at(cfg, 64, 0, 100, active=1), rel=0.25)
    shared = batched_ends(cost, cfg, [(0.0, 64, 100), (0.0, 64, 100), (0.1, 64, 50)])
    assert shared[0] > alone and shared[2] < shared[0] + 1e-9 + bound
    assert all(e <= 0.1 + bound for e in shared)


def test_slot_runs_of_two_engines_on_one_device_take_turns() -> None:
    """The executor lets the runs of one slot engine decode together, but another
    engine's runs on the same device wait for all of them (rule 2), and vice versa."""
    from planner.executor import dependencies

    acts = [Action("load", "e1", "g0", 0, 1), Action("load", "e2", "g0", 1, 2),
            Action("run", "e1", "g0", 2, 5, request="a", tokens_from=0, tokens_to=8),
            Action("run", "e1", "g0", 2, 6, request="b", tokens_from=0, tokens_to=8),
            Action("run", "e2", "g0", 6, 8, request="c", tokens_from=0, tokens_to=8),
            Action("run", "e2", "g0", 6, 9, request="d", tokens_from=0, tokens_to=8),
            Action("run", "e1", "g0", 9, 10, request="e", tokens_from=0, tokens_to=8)]
    deps = dependencies(acts, {"e1": 4, "e2": 4})
    assert deps[2] == deps[3] == {0}  # e1's runs together, after e1's load
    assert {2, 3} <= deps[4] and {2, 3} <= deps[5] and 4 not in deps[5]
    assert {4, 5} <= deps[6]  # e1 again: after all of e2's runs


def test_retime_gives_slot_runs_the_executors_times(two_gpu) -> None:  # type: ignore[no-untyped-def]
    """A slot plan with an idle wait before its unload (Ollama's keep-alive) and more
    runs than slots: retimed, the runs queue for a slot at most n_parallel at a time,
    end as the batching replay ends them, the unload follows at once, and the plan
    passes the checker."""
    import dataclasses

    from planner.retime import retime
    from planner.slots import batched_times

    b, c = (r for r in two_gpu.requests if r.id in ("b", "c"))
    two_gpu = dataclasses.replace(two_gpu, requests=(
        b, c, dataclasses.replace(c, id="d", arrival_s=0.6)))
    cost = AnalyticCostModel.for_instance(two_gpu)
    cfg = EngineConfig("small", "g0", 33, 1024, n_parallel=2)
    eng = Engine("e1", "small", "g0", 33, 1024, cost.gpu_bytes(cfg), cost.host_bytes(cfg),
                 n_parallel=2)
    reqs = {r.id: r for r in two_gpu.requests}
    bound = cost.run_s_at(cfg, 64, 0, 16, active=2)
    acts = (Action("load", "e1", "g0", 0, 1),
            Action("run", "e1", "g0", 1, 1 + bound, request="b", tokens_from=0,
                   tokens_to=16),
            Action("run", "e1", "g0", 1, 1 + bound, request="c", tokens_from=0,
                   tokens_to=16),
            Action("run", "e1", "g0", 1 + bound, 1 + 2 * bound, request="d", tokens_from=0,
                   tokens_to=16),
            Action("unload", "e1", "g0", 30, 31))
    sched = Schedule((eng,), acts)
    assert check_plan(two_gpu, sched) == []
    out = retime(two_gpu, cost, sched)
    assert out is not sched and check_plan(two_gpu, out) == []
    load = next(a for a in out.actions if a.kind == "load")
    runs = sorted((a for a in out.actions if a.kind == "run"), key=lambda a: a.request)
    unload = next(a for a in out.actions if a.kind == "unload")
    want = batched_times(cost, cfg, [(max(load.end_s, reqs[r].arrival_s),
                                      reqs[r].prompt_tokens, 16) for r in ("b", "c", "d")])
    assert runs[2].start_s >= min(runs[0].end_s, runs[1].end_s) - 1e-6  # waited for a slot
    for a, (at, end) in zip(runs, want, strict=True):
        assert (a.start_s, a.end_s) == (pytest.approx(at, abs=1e-5), pytest.approx(end, abs=1e-5))
    assert unload.start_s == pytest.approx(max(a.end_s for a in runs), abs=1e-5)
    assert unload.start_s < 30



def test_retime_follows_a_long_chain_of_slot_groups(two_gpu) -> None:  # type: ignore[no-untyped-def]
    """Two 2-slot engines on one GPU take turns 50 times, two runs a turn (SPEC rule 2):
    each turn waits for the batched ends of the one before. Retimed, every turn starts
    when the previous one's last run ends and its pair ends as the batching replay ends
    it, all the way down the chain. (Re-timing that placed actions in plan order took a
    round per turn and, after its 40 rounds, kept the plan's conservative times.)"""
    import dataclasses

    from planner.retime import retime
    from planner.slots import batched_times

    turns = 50
    proto = next(r for r in two_gpu.requests if r.id == "b")
    reqs = tuple(dataclasses.replace(proto, id=f"r{i:03d}", arrival_s=0.0)
                 for i in range(2 * turns))
    inst = dataclasses.replace(two_gpu, requests=reqs)
    cost = AnalyticCostModel.for_instance(inst)
    cfg = EngineConfig("small", "g0", 33, 1024, n_parallel=2)
    engines = tuple(Engine(e, "small", "g0", 33, 1024, cost.gpu_bytes(cfg),
                           cost.host_bytes(cfg), n_parallel=2) for e in ("e1", "e2"))
    bound = cost.run_s_at(cfg, proto.prompt_tokens, 0, proto.output_tokens, active=2)
    acts = [Action("load", "e1", "g0", 0, 1), Action("load", "e2", "g0", 1, 2)]
    for k in range(turns):
        at = 2 + k * bound
        for r in reqs[2 * k: 2 * k + 2]:
            acts.append(Action("run", ("e1", "e2")[k % 2], "g0", at, at + bound,
                               request=r.id, tokens_from=0, tokens_to=r.output_tokens))
    sched = Schedule(engines, tuple(acts))
    assert check_plan(inst, sched) == []
    out = retime(inst, cost, sched)
    assert out is not sched and check_plan(inst, out) == []
    runs = {a.request: a for a in out.actions if a.kind == "run"}
    loaded = {a.engine: a.end_s for a in out.actions if a.kind == "load"}
    ready = 0.0
    for k in range(turns):
        pair = [runs[r.id] for r in reqs[2 * k: 2 * k + 2]]
        ready = max(ready, loaded[("e1", "e2")[k % 2]])
        want = batched_times(cost, cfg, [(ready, proto.prompt_tokens,
                                          proto.output_tokens)] * 2)
        for a, (admitted, end) in zip(pair, want, strict=True):
            assert a.start_s == pytest.approx(admitted, abs=1e-5)
            assert a.end_s == pytest.approx(end, abs=1e-5)
        ready = max(a.end_s for a in pair)

def test_a_slot_solve_reports_a_bound_for_slot_plans_whatever_plan_it_returns(
        write_instance, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """With `--slots` a person allowed slot plans, so the bound must hold for them even
    when the plan written has one-slot engines (batching did not help, or the search left
    slots out): the one-slot bounds assume one request at a time per device. Here the
    baselines, CP-SAT and batching are held to one slot, so the plan has none."""
    import dataclasses

    import planner.service as service
    import planner.solver as solver_pkg
    from planner.service import SolveOptions, prepare, solve
    from planner.solver.bound import slot_plan_bound

    inst, cost = prepare(write_instance(six_small_requests()))
    real_base, real_cpsat = service.run_baselines, solver_pkg.solve_cpsat
    monkeypatch.setattr(service, "run_baselines", lambda i, c, slots=1: real_base(i, c))
    monkeypatch.setattr(service, "_batched", lambda i, c, s, info, o, k: (s, info))
    monkeypatch.setattr(solver_pkg, "solve_cpsat", lambda i, c, o, opts, h, **kw: real_cpsat(
        i, c, o, dataclasses.replace(opts, slots=(1,)), h, **kw))
    plan = solve(inst, cost, SolveOptions(time_limit_s=6, workers=1, slots=(1, 2, 4)))
    assert not any(e.n_parallel > 1 for e in plan.schedule.engines)
    want, name = slot_plan_bound(inst, cost, "mean_response", 4)
    assert plan.solver.bound == pytest.approx(want)
    assert name in plan.solver.notes


def test_split_engine_puts_more_layers_on_the_faster_gpu(write_instance) -> None:  # type: ignore[no-untyped-def]
    """On an RTX 4090 and an L4 (24 GiB each), a model neither holds whole (the 14B F16
    one) is split with most layers on the 4090: the fastest of every two-GPU split that
    fits (each layer count tried), faster than llama.cpp's default split in proportion to
    memory and than the 4090 alone with layers left on the host CPU. On two equal GPUs
    the default split stays."""
    from planner.baselines.sim import context_sizes
    from planner.costmodel.analytic import split_layers
    from planner.solver.data import SPLIT_PROBE, config_fits, split_config

    d = two_gpu_dict()
    host = d["cluster"]["hosts"][0]
    host["memory_gib"] = 64
    host["gpus"][1]["type"] = "l4"
    d["models"] = [{"id": "m14", "reference": "qwen2.5-14b-f16"}]
    d["requests"] = [{"id": "a", "model": "m14", "arrival_s": 0.0, "prompt_tokens": 128,
                      "output_tokens": 128}]
    inst = load_instance(write_instance(d))
    cost = AnalyticCostModel.for_instance(inst)
    n_ctx = context_sizes(inst)["m14"]
    got = split_config(inst, cost, "m14", "box", n_ctx)
    assert got is not None and config_fits(inst, cost, got)
    layers = cost.n_layers("m14")

    def secs(c: EngineConfig) -> float:
        return cost.run_s(c, SPLIT_PROBE[0], 0, SPLIT_PROBE[1])

    counts = split_layers(layers, got.split)
    assert sum(counts) == layers and counts[0] > 3 * counts[1] > 0
    every = [EngineConfig("m14", "g0", got.n_gpu_layers, n_ctx, 1,
                          (("g0", k / layers), ("g1", 1 - k / layers)))
             for k in range(1, layers)]
    fitting = [c for c in every if config_fits(inst, cost, c)]
    assert secs(got) <= min(secs(c) for c in fitting) + 1e-9
    default = EngineConfig("m14", "g0", got.n_gpu_layers, n_ctx, 1, (("g0", 0.5), ("g1", 0.5)))
    alone = min(secs(EngineConfig("m14", "g0", g, n_ctx)) for g in range(layers + 2)
                if cost.fits(EngineConfig("m14", "g0", g, n_ctx), 24 * GIB, 64 * GIB))
    assert secs(got) < 0.8 * secs(default) and secs(got) < alone
    host["gpus"][1]["type"] = "rtx-4090"  # equal GPUs: nothing to gain from moving layers
    inst = load_instance(write_instance(d))
    got = split_config(inst, AnalyticCostModel.for_instance(inst), "m14", "box", n_ctx)
    assert got is not None and [f for _, f in got.split] == [0.5, 0.5]


def one_model_slot_dict() -> dict[str, Any]:
    """Qwen2.5-14B F16 alone on a 24 GiB RTX 4090: its splits that run fast fill the GPU,
    so no two of its engines there fit together; 20 requests over 10 minutes."""
    import random

    rng = random.Random(13)
    return {
        "format": "planner.instance/1", "name": "one-model-slots",
        "cluster": {"hosts": [{"id": "box", "cpu": "desktop-dual-channel", "threads": 16,
                               "memory_gib": 64,
                               "gpus": [{"id": "g0", "type": "rtx-4090", "memory_gib": 24}]}]},
        "models": [{"id": "m14", "reference": "qwen2.5-14b-f16"}],
        "requests": [{"id": f"r{i:02d}", "model": "m14", "arrival_s": 30.0 * i + rng.random(),
                      "prompt_tokens": rng.randint(200, 1200),
                      "output_tokens": rng.randint(30, 400)} for i in range(20)]}


def test_slot_lanes_pair_only_engines_that_fit_together(write_instance) -> None:  # type: ignore[no-untyped-def]
    """Runs of two engines that cannot be resident at once never overlap (they lie inside
    their resident periods, SPEC rules 3 and 4), so the slot model's pairwise no-overlap
    constraints leave them out. Before, this one-model instance had 14,400 pairs and CP-SAT
    found no plan with slots in 60 s (feasibility jump spent 8 s in one step): the solve
    wrote the static baseline."""
    from planner.service import SolveOptions, prepare, run_baselines, solve
    from planner.solver.data import build_data, co_resident
    from planner.solver.solve import CANDIDATE_OPTIONS, PERIODS
    from planner.solver.steps import slot_pairs

    inst, cost = prepare(write_instance(one_model_slot_dict()))
    base = {k: v.schedule for k, v in run_baselines(inst, cost, 2).items()
            if v.schedule is not None}
    data = build_data(inst, cost, base, CANDIDATE_OPTIONS, PERIODS, True, None, slots=(1, 2))
    gpu = [e for e in data.engines if e.on_gpu]
    big = [e for e in gpu if e.gpu_mib > data.gpu_mib["g0"] / 2]
    assert big and any(e.slots > 1 for e in big)
    for a in big:
        for b in gpu:
            fits = dict(a.gpu_share_mib)["g0"] + dict(b.gpu_share_mib)["g0"] <= \
                data.gpu_mib["g0"]
            assert co_resident(data, a, b) == co_resident(data, b, a) == fits
    naive = 0
    for d in data.devices:
        keys = [e.key for e in data.engines if d in e.devices]
        count = {k: sum(k in rd.run for rd in data.requests) * PERIODS for k in keys}
        n = sum(count.values())
        naive += sum(c * (n - c) for k, c in count.items()
                     if next(e for e in data.engines if e.key == k).slots > 1)
    assert 0 < slot_pairs(data, PERIODS) < naive / 2

    plan = solve(inst, cost, SolveOptions(time_limit_s=15, workers=2, slots=(1, 2)))
    assert not plan.solver.status.startswith("UNKNOWN"), plan.solver.status
    assert check_plan(inst, plan.schedule) == []


def test_a_slot_search_without_a_plan_hands_its_time_to_the_model_without_slots(
        write_instance, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """When CP-SAT finds no plan with slot engines in its time (its pairwise lanes can
    keep it from any), the time left goes to the model with one slot per engine: a CP-SAT
    plan comes back, not a baseline with status UNKNOWN. Here the slot model is made to
    find nothing."""
    import planner.solver.solve as solve_mod
    from planner.service import SolveOptions, prepare, solve

    real = solve_mod.CPModel.solve
    slot_models = []

    def no_plan_with_slots(self, params):  # type: ignore[no-untyped-def]
        if any(e.slots > 1 for e in self.data.engines):
            slot_models.append(self)
            return None
        return real(self, params)

    monkeypatch.setattr(solve_mod.CPModel, "solve", no_plan_with_slots)
    inst, cost = prepare(write_instance(six_small_requests()))
    plan = solve(inst, cost, SolveOptions(time_limit_s=8, workers=1, slots=(1, 2)))
    assert slot_models  # the slot model was tried
    assert not plan.solver.status.startswith("UNKNOWN"), plan.solver.status
    assert "slots left out: CP-SAT found no plan with them" in plan.solver.notes
    assert check_plan(inst, plan.schedule) == []


def test_a_slot_plan_meeting_every_slo_is_optimal_without_a_search(
        write_instance) -> None:  # type: ignore[no-untyped-def]
    """A start plan with slot engines that meets every SLO cannot be beaten, whatever the
    bound: it is written at once, OPTIMAL. Before, slot plans were never held to be
    optimal, and the slot search, finding none of its own in time, wrote it as UNKNOWN."""
    from planner.service import SolveOptions, prepare, solve

    data = two_gpu_dict()
    data["objective"] = "slo_attainment"
    data["requests"] = [{"id": f"r{i}", "model": "small", "arrival_s": 0.2 * i,
                         "prompt_tokens": 128, "output_tokens": 200, "slo_s": 600.0}
                        for i in range(6)]
    inst, cost = prepare(write_instance(data))
    plan = solve(inst, cost, SolveOptions(time_limit_s=8, workers=1, slots=(1, 2)))
    assert plan.solver.status == "OPTIMAL", plan.solver.status
    assert plan.solver.objective == 1.0
    assert check_plan(inst, plan.schedule) == []


def test_slot_models_keep_their_pairwise_lanes_as_pairs(write_instance,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """CP-SAT's presolve would merge the slot model's pairwise exclusions into cliques (on a
    67-request CPU instance 21,766 pairs became 4,342 no-overlaps of 581,718 intervals, and
    one step of its feasibility-jump worker took 6.2 s of a 3.7 s limit, with no plan):
    slot models are solved with no-overlap merging off, the others as before."""
    from ortools.sat.python import cp_model

    import planner.solver.model as model_mod
    from planner.service import SolveOptions, prepare, solve

    seen: list[tuple[bool, float]] = []
    slot_model: list[bool] = []  # whether the CPModel being solved has slot engines
    real, real_solver = model_mod.CPModel.solve, cp_model.CpSolver.solve

    def record(self, params):  # type: ignore[no-untyped-def]
        slot_model.append(any(e.slots > 1 for e in self.data.engines))
        return real(self, params)

    def spy(solver, model, *a):  # type: ignore[no-untyped-def]
        seen.append((slot_model[-1], solver.parameters.merge_no_overlap_work_limit))
        return real_solver(solver, model, *a)

    monkeypatch.setattr(model_mod.CPModel, "solve", record)
    monkeypatch.setattr(cp_model.CpSolver, "solve", spy)
    inst, cost = prepare(write_instance(six_small_requests()))
    plan = solve(inst, cost, SolveOptions(time_limit_s=6, workers=1, slots=(1, 2)))
    assert check_plan(inst, plan.schedule) == []
    default = cp_model.CpSolver().parameters.merge_no_overlap_work_limit
    assert default > 0
    assert {limit for slots, limit in seen if slots} == {0.0}
    assert {limit for slots, limit in seen if not slots} == {default}


def test_the_one_slot_cp_sat_plan_kept_by_a_failed_slot_search_is_no_unknown(
        write_instance, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """With no time left for the model without slots, a slot search that finds nothing
    writes its best start plan; when that is the one-slot CP-SAT plan, the status credits
    CP-SAT (FEASIBLE) rather than saying no CP-SAT solution was found (UNKNOWN), as
    `benchmarks/sweep.py` seed 4 case 3 (20 requests, 3 s, `--slots 1,2,4`) wrote."""
    import planner.solver.solve as solve_mod
    from planner.service import SolveOptions, prepare, solve

    real = solve_mod.CPModel.solve

    def no_plan_with_slots(self, params):  # type: ignore[no-untyped-def]
        return None if any(e.slots > 1 for e in self.data.engines) else real(self, params)

    monkeypatch.setattr(solve_mod.CPModel, "solve", no_plan_with_slots)
    monkeypatch.setattr(solve_mod, "SLOTLESS_MIN_S", 1e9)  # no time for the retry
    inst, cost = prepare(write_instance(six_small_requests()))
    plan = solve(inst, cost, SolveOptions(time_limit_s=6, workers=1, slots=(1, 2)))
    assert check_plan(inst, plan.schedule) == []
    status = plan.solver.status
    assert status.startswith("FEASIBLE (start plan cp-sat (one slot"), status
    assert "no better CP-SAT solution in time" in status
