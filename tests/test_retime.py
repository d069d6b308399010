"""Plan times as the executor runs them: first loads, loads beside runs, dispatch order."""

from __future__ import annotations

import dataclasses

import pytest

from planner.checker import check_plan
from planner.costmodel.analytic import AnalyticCostModel
from planner.domain import Action, EngineConfig, Schedule
from planner.retime import retime
from tests.test_checker import E1, E2, instance


class Loads(AnalyticCostModel):
    """The analytic model with round load figures: warm 1 s, first 2 s, beside a run 1.5 s."""

    def load_s(self, cfg: EngineConfig) -> float:
        return 1.0

    def first_load_s(self, cfg: EngineConfig) -> float:
        return 2.0

    def busy_load_s(self, cfg: EngineConfig) -> float:
        return 1.5


def two_requests() -> object:
    inst = instance()
    return dataclasses.replace(inst, requests=tuple(q for q in inst.requests
                                                    if q.id in ("a", "b")))


def test_first_and_busy_loads_by_hand() -> None:
    inst = two_requests()
    cost = Loads.for_instance(inst)  # type: ignore[arg-type]
    acts = (Action("load", "e1", "box-gpu0", 0, 1),
            Action("run", "e1", "box-gpu0", 1, 5, request="a", tokens_from=0, tokens_to=64),
            Action("load", "e2", "box-gpu0", 1, 2),
            Action("run", "e2", "box-gpu0", 5, 7, request="b", tokens_from=0, tokens_to=32))
    sched = Schedule((E1, E2), acts)
    assert check_plan(inst, sched) == []  # type: ignore[arg-type]
    out = {(a.kind, a.engine): a for a in retime(inst, cost, sched).actions}  # type: ignore[arg-type]
    # load e1: first load, nothing runs beside it: 2 s -> [0, 2]
    assert (out[("load", "e1")].start_s, out[("load", "e1")].end_s) == (0, 2)
    # run a: 4 s as planned, after its engine's load -> [2, 6]
    assert (out[("run", "e1")].start_s, out[("run", "e1")].end_s) == (2, 6)
    # load e2: first load (2 s idle) wholly beside run a, stretched by 1.5/1 -> [2, 5]
    assert out[("load", "e2")].start_s == 2
    assert out[("load", "e2")].end_s == pytest.approx(5)
    # run b: after run a (compute lane) and its load -> [6, 8]
    assert (out[("run", "e2")].start_s, out[("run", "e2")].end_s) == (6, 8)


def test_a_later_load_is_warm_on_a_cpu_and_fresh_on_a_gpu() -> None:
    """e1 loaded, unloaded and loaded again, nothing beside its loads. On the host CPU
    the second load is warm (1 s): the worker stays. With layers on the GPU the executor
    starts a new worker after each unload (a CUDA process keeps its context), so every
    load is a first load (2 s)."""
    inst = two_requests()
    cost = Loads.for_instance(inst)  # type: ignore[arg-type]
    on_cpu = dataclasses.replace(E1, device="box", n_gpu_layers=0, gpu_bytes=0)
    inst2 = dataclasses.replace(instance(), requests=tuple(
        q for q in instance().requests if q.id in ("a", "c")))
    for eng, second in ((on_cpu, 1.0), (E1, 2.0)):
        acts = tuple(dataclasses.replace(a, device=eng.device) for a in (
            Action("load", "e1", "box-gpu0", 0, 1),
            Action("run", "e1", "box-gpu0", 1, 2, request="a", tokens_from=0, tokens_to=64),
            Action("unload", "e1", "box-gpu0", 2, 2.5),
            Action("load", "e1", "box-gpu0", 2.5, 3.5),
            Action("run", "e1", "box-gpu0", 3.5, 4.5, request="c", tokens_from=0,
                   tokens_to=128)))
        sched = Schedule((eng,), acts)
        assert check_plan(inst2, sched) == []  # type: ignore[arg-type]
        out = retime(inst2, cost, sched).actions  # type: ignore[arg-type]
        assert out != acts  # re-timed (the checker passed it)
        loads = [a for a in out if a.kind == "load"]
        assert loads[0].end_s - loads[0].start_s == pytest.approx(2.0)  # first
        assert loads[1].end_s - loads[1].start_s == pytest.approx(second)
        run_c = next(a for a in out if a.request == "c")
        assert run_c.start_s == pytest.approx(loads[1].end_s)  # as soon as it is loaded


def test_an_invalid_plan_is_returned_untouched() -> None:
    inst = two_requests()
    cost = Loads.for_instance(inst)  # type: ignore[arg-type]
    # request b is never served (rule 5): the checker rejects the retimed plan too
    bad = Schedule((E1,), (Action("load", "e1", "box-gpu0", 0, 1),
                           Action("run", "e1", "box-gpu0", 1, 5, request="a", tokens_from=0,
                                  tokens_to=64)))
    assert retime(inst, cost, bad) is bad  # type: ignore[arg-type]


class Copies(Loads):
    """Every load 1 s; a KV copy 1 s alone; a save beside a run 2 s, a restore 1 s."""

    def first_load_s(self, cfg: EngineConfig) -> float:
        return 1.0

    def busy_load_s(self, cfg: EngineConfig) -> float:
        return 1.0

    def kv_save_s(self, cfg: EngineConfig, context_tokens: int) -> float:
        return 1.0

    def kv_restore_s(self, cfg: EngineConfig, context_tokens: int) -> float:
        return 1.0

    def busy_kv_s(self, kind: str, cfg: EngineConfig, context_tokens: int) -> float:
        return 2.0 if kind == "kv_save" else 1.0


def _preempted_beside_a_run() -> tuple[object, Schedule]:
    """Request a is saved on e1 while request c runs on a second llama3-8b engine (same
    GPU, so the same host), then restored and finished."""
    e1b = dataclasses.replace(E1, id="e1b")
    inst = dataclasses.replace(instance(), requests=tuple(
        q for q in instance().requests if q.id in ("a", "c")))
    acts = (Action("load", "e1", "box-gpu0", 0, 1),
            Action("load", "e1b", "box-gpu0", 1, 2),
            Action("run", "e1", "box-gpu0", 1, 3, request="a", tokens_from=0, tokens_to=32),
            Action("kv_save", "e1", "box-gpu0", 3, 4, request="a", bytes=1000),
            Action("run", "e1b", "box-gpu0", 3, 6, request="c", tokens_from=0, tokens_to=128),
            Action("kv_restore", "e1", "box-gpu0", 6, 7, request="a", bytes=1000),
            Action("run", "e1", "box-gpu0", 7, 8, request="a", tokens_from=32, tokens_to=64))
    sched = Schedule((E1, e1b), acts)
    assert check_plan(inst, sched) == []  # type: ignore[arg-type]
    return inst, sched


def test_kv_copy_beside_a_run_is_stretched_by_hand() -> None:
    inst, sched = _preempted_beside_a_run()
    out = {(a.kind, a.request, a.tokens_from): a
           for a in retime(inst, Copies.for_instance(inst), sched).actions}  # type: ignore[arg-type]
    save, rest = out[("kv_save", "a", None)], out[("kv_restore", "a", None)]
    # the save starts after run a [1, 3] and lies wholly beside run c [3, 6]: its 1 s of
    # work goes at half speed there (2 s beside a run): [3, 5]
    assert save.start_s == pytest.approx(3) and save.end_s == pytest.approx(5)
    # the restore goes as soon as the save is done, beside run c too, but costs the same
    # there: [5, 6]; the rest of a follows run c on the compute lane: [6, 7]
    assert (rest.start_s, rest.end_s) == (pytest.approx(5), pytest.approx(6))
    assert (out[("run", "a", 32)].start_s, out[("run", "a", 32)].end_s) == (
        pytest.approx(6), pytest.approx(7))


def test_kv_copy_without_a_busy_measurement_keeps_its_time() -> None:
    inst, sched = _preempted_beside_a_run()
    cost = AnalyticCostModel.for_instance(inst)  # type: ignore[arg-type]
    save = next(a for a in retime(inst, cost, sched).actions  # type: ignore[arg-type]
                if a.kind == "kv_save")
    assert save.end_s - save.start_s == pytest.approx(1.0)  # as planned
