"""Polish (``planner/solver/polish/``): local moves on a finished plan.

The hand-made cost model of ``tests/test_solver.py`` (10 layers of 1 GiB, loads 2 s,
unloads 1 s, 0.1 s per token with every layer on the GPU).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import replace

import pytest

from planner.checker import check_plan
from planner.domain import (
    GIB,
    Action,
    Cluster,
    DeviceShare,
    Engine,
    EngineConfig,
    Gpu,
    Host,
    Instance,
    Model,
    Request,
    Schedule,
)
from planner.metrics import compute_metrics, objective_key
from planner.solver.polish import compact, polish
from planner.solver.polish.ruins import listed_ruins, ruin_recreate
from planner.solver.polish.timing import Score
from tests.test_bounds import _random_instance
from tests.test_solver import RoundCost, arch, baselines, instance


def _mean(inst, sched: Schedule) -> float:  # type: ignore[no-untyped-def]
    return compute_metrics(inst, sched.actions).weighted_mean_response_s


def act(kind: str, e: Engine, s: float, t: float, req: str | None = None,
        n: int = 0) -> Action:
    """An action of ``e`` on its device; a run of ``req`` produces tokens 0 to ``n``."""
    return Action(kind, e.id, e.device, s, t, req, 0 if req else None, n if req else None)


def test_a_run_moves_into_an_earlier_period_and_the_empty_one_goes() -> None:
    """A and B (10 GiB each) on a 10 GiB GPU. The plan serves a1, then swaps to B for b,
    then back to A for a2 (arrived at 0.5 s):

    load A [0,2] a1 [2,4] unload A [4,5] load B [5,7] b [7,9] unload B [9,10]
    load A [10,12] a2 [12,13] unload A [13,14]: responses 4, 9, 12.5, mean 8.5.

    Moving a2 into A's first period empties the second, which goes too. Right after
    a1 it would give responses 4, 4.5, 10 (mean 6.1667); right after the load, shorter
    first: a2 [2,3] a1 [3,5] unload A [5,6] load B [6,8] b [8,10] unload B [10,11]:
    responses 5, 2.5, 10, mean 5.8333, two loads instead of three.
    """
    inst = instance(10, [("a1", "A", 0.0, 20), ("b", "B", 0.0, 20), ("a2", "A", 0.5, 10)],
                    host_gib=1)
    ea = Engine("eA", "A", "g0", 10, 64, 10 * GIB, 0)
    eb = Engine("eB", "B", "g0", 10, 64, 10 * GIB, 0)

    plan = Schedule((ea, eb), (
        act("load", ea, 0, 2), act("run", ea, 2, 4, "a1", 20), act("unload", ea, 4, 5),
        act("load", eb, 5, 7), act("run", eb, 7, 9, "b", 20), act("unload", eb, 9, 10),
        act("load", ea, 10, 12), act("run", ea, 12, 13, "a2", 10), act("unload", ea, 13, 14)))
    assert check_plan(inst, plan) == []
    assert _mean(inst, plan) == pytest.approx(8.5)
    out, moves = polish(inst, RoundCost(), plan, "mean_response", time.perf_counter() + 5)
    assert moves == 1
    assert check_plan(inst, out) == []
    assert _mean(inst, out) == pytest.approx(17.5 / 3)
    assert sum(1 for a in out.actions if a.kind == "load") == 2
    a2 = next(a for a in out.actions if a.request == "a2")
    assert (a2.engine, a2.start_s, a2.end_s) == ("eA", 2.0, 3.0)


def two_gpus(requests: list[tuple[str, float, int]], slow_gib: int = 5) -> Instance:
    """Model A's requests on a 10 GiB GPU ("fast": every layer fits, 0.1 s per token)
    and a ``slow_gib`` one ("slow": at 5 GiB half the layers, 0.2 s per token) of one
    host."""
    gpus = (Gpu("fast", "test-gpu", 10 * GIB, "h"),
            Gpu("slow", "test-gpu", slow_gib * GIB, "h"))
    reqs = tuple(Request(rid, "A", t, 16, n, 1.0, None) for rid, t, n in requests)
    return Instance("t", Cluster((Host("h", "test-cpu", 8, 64 * GIB, gpus),)),
                    (Model("A", arch("A")),), reqs, "mean_response")


def test_a_run_moves_into_a_period_of_its_own_on_a_faster_gpu() -> None:
    """r0 (100 tokens, at 0) on the fast GPU, r1 (200 tokens, at 20 s) on the slow one:

    fast: load [0,2] r0 [2,12] unload [12,13]; slow: load [0,2] r1 [20,60] unload [60,61]

    responses 12 and 40, mean 26. The fast engine is gone before r1 arrives, so no move
    into its period serves r1 sooner; a new period of it after its unload does: load
    [13,15], r1 [20,40] (0.1 s per token), unload [40,41]: mean (12 + 20) / 2 = 16, and
    the slow GPU's period, empty now, goes. The fast engine's unload at 12 s and load at
    13 s then serve nothing (r1 waits for its arrival either way): it stays loaded.
    """
    inst = two_gpus([("r0", 0.0, 100), ("r1", 20.0, 200)])
    fast = Engine("eF", "A", "fast", 10, 512, 10 * GIB, 0)
    slow = Engine("eS", "A", "slow", 5, 512, 5 * GIB, 5 * GIB)

    plan = Schedule((fast, slow), (
        act("load", fast, 0, 2), act("load", slow, 0, 2), act("run", fast, 2, 12, "r0", 100),
        act("unload", fast, 12, 13), act("run", slow, 20, 60, "r1", 200),
        act("unload", slow, 60, 61)))
    assert check_plan(inst, plan) == []
    assert _mean(inst, plan) == pytest.approx(26.0)
    out, moves = polish(inst, RoundCost(), plan, "mean_response", time.perf_counter() + 5)
    assert moves == 2
    assert check_plan(inst, out) == []
    assert _mean(inst, out) == pytest.approx(16.0)
    assert [(a.kind, a.engine, a.start_s, a.end_s) for a in out.actions] == [
        ("load", "eF", 0.0, 2.0), ("run", "eF", 2.0, 12.0), ("run", "eF", 20.0, 40.0),
        ("unload", "eF", 40.0, 41.0)]


def test_a_run_moves_to_an_engine_the_plan_did_not_have() -> None:
    """r0 (100 tokens, at 0) on the slow GPU, the only engine of the plan:

    slow: load [0,2] r0 [2,22] unload [22,23]: response 22.

    Without other engines no move helps. Given the fast GPU's configuration (every layer
    on it) as an extra engine, r0 moves into a period of its own there: load [0,2]
    r0 [2,12] unload [12,13], response 12; the slow period, empty now, goes, and the new
    engine joins the plan's engines.
    """
    inst = two_gpus([("r0", 0.0, 100)])
    slow = Engine("eS", "A", "slow", 5, 512, 5 * GIB, 5 * GIB)
    plan = Schedule((slow,), (
        Action("load", "eS", "slow", 0, 2), Action("run", "eS", "slow", 2, 22, "r0", 0, 100),
        Action("unload", "eS", "slow", 22, 23)))
    assert check_plan(inst, plan) == []
    same, moves = polish(inst, RoundCost(), plan, "mean_response", time.perf_counter() + 5)
    assert (same, moves) == (plan, 0)
    fast = EngineConfig("A", "fast", 10, 512)
    out, moves = polish(inst, RoundCost(), plan, "mean_response", time.perf_counter() + 5,
                        [fast, EngineConfig("A", "slow", 5, 512)])  # the second: the plan's
    assert moves == 1
    assert check_plan(inst, out) == []
    assert _mean(inst, out) == pytest.approx(12.0)
    new = next(e for e in out.engines if e.id not in ("eS",))
    assert (new.model, new.device, new.n_gpu_layers, new.gpu_bytes) == ("A", "fast", 10,
                                                                         10 * GIB)
    assert [(a.kind, a.engine, a.start_s, a.end_s) for a in out.actions] == [
        ("load", new.id, 0.0, 2.0), ("run", new.id, 2.0, 12.0), ("unload", new.id, 12.0, 13.0)]
    assert len(out.engines) == 2


def s_fast_l_slow(n_s: int, n_l: int, slow_gib: int
                  ) -> tuple[Instance, Engine, Engine, Schedule]:
    """Requests S and L (``n_s`` and ``n_l`` tokens, both at 0) on :func:`two_gpus`, and
    the plan that loads an engine on each GPU at once and runs S on the fast one, L on
    the slow one (``slow_gib`` layers), each followed by its unload."""
    inst = two_gpus([("S", 0.0, n_s), ("L", 0.0, n_l)], slow_gib=slow_gib)
    fast = Engine("eF", "A", "fast", 10, 512, 10 * GIB, 0)
    slow = Engine("eS", "A", "slow", slow_gib, 512, slow_gib * GIB, (10 - slow_gib) * GIB)
    s_end = 2 + 0.1 * n_s
    l_end = 2 + 0.1 * (1 + (10 - slow_gib) / 5) * n_l
    plan = Schedule((fast, slow), (
        act("load", fast, 0, 2), act("load", slow, 0, 2), act("run", fast, 2, s_end, "S", n_s),
        act("unload", fast, s_end, s_end + 1), act("run", slow, 2, l_end, "L", n_l),
        act("unload", slow, l_end, l_end + 1)))
    return inst, fast, slow, plan


def test_ruin_and_recreate_puts_the_runs_back_one_by_one_in_their_best_places() -> None:
    """S (40 tokens) on the fast GPU, L (100) on a slow one of 4 GiB (4 of 10 layers,
    0.22 s per token), both at 0:

    fast: load [0,2] S [2,6] unload [6,7]; slow: load [0,2] L [2,24] unload [24,25]

    responses 6 and 24, mean 15. The first ruin is L (the costliest) with the fast GPU's
    run that overlaps its stay (S). Both out, both periods go; L back first, in its best
    place: a period of its own on the fast GPU, load [0,2] L [2,12] (response 12, the
    slow GPU would give 24); then S: right after the load, before L, gives responses 6
    and 16 (mean 11), after L 12 and 16 (14), a period of its own on the slow GPU 12 and
    10.8 (11.4): before L, mean 11.
    """
    inst, fast, slow, plan = s_fast_l_slow(40, 100, slow_gib=4)
    assert check_plan(inst, plan) == []
    assert _mean(inst, plan) == pytest.approx(15.0)
    order = list(plan.actions)
    by_model = {"A": [fast, slow]}
    score = Score(inst, "mean_response")
    ruin = next(listed_ruins(order, by_model, score))
    assert ruin == ("L", ["S"])
    got = ruin_recreate(inst, RoundCost(), plan, order, by_model, score,
                        score(order, [a.end_s for a in order]), *ruin,
                        time.perf_counter() + 5)
    assert got is not None
    out = Schedule((fast, slow), tuple(got[0]))
    assert check_plan(inst, out) == []
    assert _mean(inst, out) == pytest.approx(11.0)
    assert [(a.kind, a.engine, a.request, a.start_s, a.end_s) for a in out.actions] == [
        ("load", "eF", None, 0.0, 2.0), ("run", "eF", "S", 2.0, 6.0),
        ("run", "eF", "L", 6.0, 16.0), ("unload", "eF", None, 16.0, 17.0)]


def test_random_ruins_go_on_once_the_listed_ones_fail(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """S (60 tokens) and L (100), both at 0, weight 1; a fast GPU (0.1 s per token) and
    a slow one of 8 GiB (8 of 10 layers, 0.14 s per token). The plan:

    fast: load [0,2] S [2,8] unload [8,9]; slow: load [0,2] L [2,16] unload [16,17]

    mean 12. Swapping them (L on the fast GPU, 12; S on the slow one, 10.4) gives 11.2,
    but no single move does: L after S on the fast GPU ends at 18 (mean 13), L before S
    makes S end at 18 (mean 15), S beside L on the slow GPU waits for it. A ruin of L
    with the fast GPU's run (S) finds the swap. With the listed ruins taken away (as if
    each had failed) the polish stops at 12; random ruins (a request drawn by its
    weighted response, runs of a random device near a random instant of its stay) go on
    and one of them is that ruin.
    """
    from planner.solver.polish import loop

    inst, _fast, _slow, plan = s_fast_l_slow(60, 100, slow_gib=8)
    assert check_plan(inst, plan) == []
    assert _mean(inst, plan) == pytest.approx(12.0)
    monkeypatch.setattr(loop, "listed_ruins", lambda *args: iter(()))
    monkeypatch.setattr(loop, "RANDOM_RUINS", False)
    t = time.perf_counter()
    alone, moves = polish(inst, RoundCost(), plan, "mean_response", t + 30)
    assert moves == 0 and alone is plan
    assert time.perf_counter() - t < 15  # it stopped long before its deadline
    monkeypatch.setattr(loop, "RANDOM_RUINS", True)
    t = time.perf_counter()
    out, moves = polish(inst, RoundCost(), plan, "mean_response", t + 30)
    assert time.perf_counter() - t < 15  # the random ruins stalled: it stopped early
    assert moves >= 2
    assert check_plan(inst, out) == []
    assert _mean(inst, out) == pytest.approx(11.2)
    assert sorted((a.engine, a.request) for a in out.actions if a.kind == "run") == [
        ("eF", "L"), ("eS", "S")]


def test_random_ruins_take_runs_of_every_device_part_of_the_time(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A random ruin's runs are those of one device nearest a random instant, or (a
    CROSS_DEVICE share of the draws, where the runs are on two devices) of both: a request
    can then leave the GPU for the host CPU while others come back in one ruin. Twelve runs,
    alternating between a GPU and the host CPU, each device's runs 10 s apart; with a second
    GPU, one device's runs only."""
    from types import SimpleNamespace

    from planner.solver.polish import ruins

    movable = {f"r{i}": Action("run", "eG" if i % 2 else "eC", "g0" if i % 2 else "host",
                               5.0 * i, 5.0 * i + 4.0, f"r{i}", tokens_from=0, tokens_to=10)
               for i in range(12)}
    cluster = SimpleNamespace(device=lambda d: SimpleNamespace(kind="cpu" if d == "host"
                                                               else "gpu"))
    score = SimpleNamespace(arrival={q: a.start_s - 1.0 for q, a in movable.items()},
                            weight=dict.fromkeys(movable, 1.0),
                            instance=SimpleNamespace(cluster=cluster))

    def devices_of_draws(share: float) -> list[int]:
        monkeypatch.setattr(ruins, "CROSS_DEVICE", share)
        rng = random.Random(3)
        out = []
        for _ in range(200):
            got = ruins.random_ruin(movable, score, rng)  # type: ignore[arg-type]
            assert got is not None
            q, victims = got
            assert q not in victims and len(victims) <= ruins.RANDOM_RUIN_SIZE
            out.append(len({movable[x].device for x in victims}))
        return out

    assert set(devices_of_draws(0.0)) == {1}
    every = devices_of_draws(1.0).count(2)  # one device only where the request was between
    assert every > 150
    assert 40 < devices_of_draws(0.5).count(2) < every
    movable["r12"] = Action("run", "eH", "g1", 60.0, 64.0, "r12", tokens_from=0, tokens_to=10)
    score.arrival["r12"], score.weight["r12"] = 59.0, 1.0
    assert max(devices_of_draws(1.0)) == 1  # (none where g1 alone is drawn for r12)


def test_a_plan_with_an_engine_split_over_gpus_is_polished_around_it() -> None:
    """S serves model A split over g0 and g1 (5 GiB on each); B (model B, 5 of 10 layers,
    0.2 s per token) is on g1 alone. The plan:

    S: load [0,2] a1 [2,12] (100 tokens); B: load [12,14] b1 [14,16] unload [16,17]
    load [17,19] b2 [19,21] unload [21,22]

    responses 12, 16, 21 (mean 16.33). The polish serves B's requests first, in one
    period, and everything of S waits for B's actions on g1's lanes (SPEC rule 2: a
    split engine holds both lanes of every GPU it spans): B load [0,2] b1 [2,4]
    b2 [4,6] unload [6,7], S load [7,9] (after B's unload in g1's transfer lane) a1
    [9,19]: responses 4, 6, 19, mean 9.67. (Before split engines' lanes were counted,
    compaction let B's actions overlap S's on g1, the checker refused every move and
    the polish kept none.)"""
    gpus = (Gpu("g0", "test-gpu", 10 * GIB, "h"), Gpu("g1", "test-gpu", 10 * GIB, "h"))
    reqs = (Request("a1", "A", 0.0, 16, 100, 1.0, None),
            Request("b1", "B", 0.0, 16, 10, 1.0, None),
            Request("b2", "B", 0.0, 16, 10, 1.0, None))
    inst = Instance("t", Cluster((Host("h", "test-cpu", 8, 64 * GIB, gpus),)),
                    (Model("A", arch("A")), Model("B", arch("B"))), reqs, "mean_response")
    split = Engine("S", "A", "g0", 10, 512, 10 * GIB, 0,
                   shares=(DeviceShare("g0", 0.5, 5 * GIB), DeviceShare("g1", 0.5, 5 * GIB)))
    b = Engine("B", "B", "g1", 5, 512, 5 * GIB, 5 * GIB)

    plan = Schedule((split, b), (
        act("load", split, 0, 2), act("run", split, 2, 12, "a1", 100),
        act("load", b, 12, 14), act("run", b, 14, 16, "b1", 10), act("unload", b, 16, 17),
        act("load", b, 17, 19), act("run", b, 19, 21, "b2", 10), act("unload", b, 21, 22)))
    assert check_plan(inst, plan) == []
    assert _mean(inst, plan) == pytest.approx(49 / 3)
    out, moves = polish(inst, RoundCost(), plan, "mean_response", time.perf_counter() + 5)
    assert moves >= 1
    assert check_plan(inst, out) == []
    assert _mean(inst, out) == pytest.approx(29 / 3)
    assert [(a.kind, a.engine, a.request or "", a.start_s, a.end_s) for a in out.actions] == [
        ("load", "B", "", 0.0, 2.0), ("run", "B", "b1", 2.0, 4.0),
        ("run", "B", "b2", 4.0, 6.0), ("unload", "B", "", 6.0, 7.0),
        ("load", "S", "", 7.0, 9.0), ("run", "S", "a1", 9.0, 19.0)]


def test_a_reload_that_serves_nothing_goes_at_an_equal_objective() -> None:
    """A's engine is unloaded after a1 and loaded again before a2 arrives (10 s): the
    reload changes no response (4 and 1 s either way) but costs the machine a load.
    Staying resident keeps the objective and drops the unload and the load."""
    inst = instance(10, [("a1", "A", 0.0, 20), ("a2", "A", 10.0, 10)], host_gib=1)
    ea = Engine("eA", "A", "g0", 10, 64, 10 * GIB, 0)
    plan = Schedule((ea,), (
        act("load", ea, 0, 2), act("run", ea, 2, 4, "a1", 20), act("unload", ea, 4, 5),
        act("load", ea, 5, 7), act("run", ea, 10, 11, "a2", 10), act("unload", ea, 11, 12)))
    assert check_plan(inst, plan) == []
    out, moves = polish(inst, RoundCost(), plan, "mean_response", time.perf_counter() + 5)
    assert moves == 1
    assert check_plan(inst, out) == []
    assert _mean(inst, out) == pytest.approx(_mean(inst, plan)) == pytest.approx(2.5)
    assert [a.kind for a in out.actions] == ["load", "run", "run", "unload"]


def test_a_state_saved_and_restored_with_nothing_between_is_not_saved() -> None:
    """a1's state is saved after 10 of its 20 tokens and restored right away on the same
    engine, nothing else running there between (a split CP-SAT may leave when it costs
    almost nothing): the two runs become one, the copies go, and a1 ends 1 s earlier."""
    inst = instance(10, [("a1", "A", 0.0, 20)], host_gib=1)
    ea = Engine("eA", "A", "g0", 10, 64, 10 * GIB, 0)
    plan = Schedule((ea,), (
        act("load", ea, 0, 2),
        Action("run", "eA", "g0", 2, 3, "a1", 0, 10),
        Action("kv_save", "eA", "g0", 3, 3.5, "a1", bytes=26 * 1024),
        Action("kv_restore", "eA", "g0", 3.5, 4, "a1", bytes=26 * 1024),
        Action("run", "eA", "g0", 4, 5, "a1", 10, 20),
        act("unload", ea, 5, 6)))
    assert check_plan(inst, plan) == []
    out, _moves = polish(inst, RoundCost(), plan, "mean_response", time.perf_counter() + 5)
    assert check_plan(inst, out) == []
    [run] = [a for a in out.actions if a.kind == "run"]
    assert (run.tokens_from, run.tokens_to, run.start_s, run.end_s) == (0, 20, 2.0, 4.0)
    assert not any(a.kind.startswith("kv_") for a in out.actions)


def test_compact_refuses_an_order_the_executor_would_read_otherwise() -> None:
    """Two runs on two devices' lanes with no dependency between them: compacted, the
    second starts before the first, so plan order differs from the given order; fine
    as long as the executor waits for the same actions. A run placed before its
    engine's load in the list cannot be compacted into a valid order of the same
    meaning: compact still returns times, and the checker (not compact) rejects it."""
    inst = instance(20, [("a", "A", 0.0, 10), ("b", "B", 0.0, 10)])
    ea = Engine("eA", "A", "g0", 10, 64, 10 * GIB, 0)
    seq = [Action("load", "eA", "g0", 0, 2), Action("run", "eA", "g0", 0, 1, "a", 0, 10)]
    got = compact(seq, {"a": 0.0, "b": 0.0})
    assert got is not None and [(a.start_s, a.end_s) for a in got] == [(0, 2), (2, 3)]
    bad = compact(list(reversed(seq)), {"a": 0.0, "b": 0.0})
    assert bad is None or check_plan(inst, Schedule((ea,), tuple(bad))) != []


def test_polish_never_worsens_a_plan_and_keeps_it_valid() -> None:
    """Baseline plans (fcfs-lru, grouped, static) of 40 random small instances, some
    with swaps forced on 1-3 GPUs: the polished plan passes the checker and is never
    worse under each objective; on some it is better."""
    rng = random.Random(11)
    better = 0
    tried = 0
    cost = RoundCost()
    for k in range(40):
        inst = _random_instance(rng, many=k % 2 == 1)
        for objective in ("mean_response", "makespan"):
            for _name, sched in baselines(inst, cost).items():
                tried += 1
                before = objective_key(compute_metrics(inst, sched.actions), objective)
                out, moves = polish(inst, cost, sched, objective, time.perf_counter() + 2)
                assert check_plan(inst, out) == []
                after = objective_key(compute_metrics(inst, out.actions), objective)
                assert after <= before
                if out is not sched:  # moves kept, or the plan compacted
                    assert after < before
                    better += 1
                else:
                    assert moves == 0
    assert tried > 100
    assert better > 0


def test_a_plan_with_slot_engines_is_left_as_it_is() -> None:
    """Runs side by side on a slot engine last longer than alone (planner.slots), so
    moving or compacting them with fixed durations would mislead: no polish."""
    from dataclasses import replace

    inst = instance(20, [("a", "A", 0.0, 20), ("b", "B", 0.0, 20), ("a2", "A", 0.5, 10)])
    sched = next(iter(baselines(inst, RoundCost()).values()))
    slots = replace(sched, engines=tuple(replace(e, n_parallel=2) for e in sched.engines))
    out, moves = polish(inst, RoundCost(), slots, "mean_response", time.perf_counter() + 2)
    assert out is slots and moves == 0


def _without_and_with_pauses(monkeypatch, inst: Instance, cost: RoundCost,  # type: ignore[no-untyped-def]
                             plan: Schedule) -> tuple[Schedule, Schedule]:
    """``plan`` (checked valid) polished without pauses, then with them (checked valid)."""
    from planner.solver.polish import loop

    assert check_plan(inst, plan) == []
    out = []
    for on in (False, True):
        monkeypatch.setattr(loop, "PAUSES", on)
        got, _ = polish(inst, cost, plan, "mean_response", time.perf_counter() + 10)
        assert check_plan(inst, got) == []
        out.append(got)
    return out[0], out[1]


class PrefillCost(RoundCost):
    """RoundCost with a prefill of 0.1 s per prompt token (16 tokens: 1.6 s), so that
    recomputing a paused request's context costs more than its KV save and restore."""

    def prefill_s(self, cfg: EngineConfig, prompt_tokens: int) -> float:
        return 0.1 * prompt_tokens


def test_a_long_light_request_is_paused_for_a_short_one_on_its_engine(monkeypatch  # type: ignore[no-untyped-def]
                                                                      ) -> None:
    """L (100 tokens, at 0) and S (10, at 5 s), weight 1, one engine of A on a 10 GiB
    GPU; prefill 1.6 s, 0.1 s per token, KV save and restore 0.5 s each. The plan:

    load [0,2] L [2,13.6] S [13.6,16.2] unload: responses 13.6 and 11.2, mean 12.4.

    S first (a single move) gives S [5,7.6] L [7.6,19.2]: 19.2 and 2.6, mean 10.9. Pausing
    L when S arrives (14 tokens done by 5 s): L [2,5] save [5,5.5] S [5.5,8.1]
    restore [8.1,8.6] L's rest [8.6,17.2]: 17.2 and 3.1, mean 10.15 (recomputing L's 30
    tokens of context instead costs 3 s: 10.9 again). Without pauses the polish stops at
    10.9; with them it finds the pause.
    """
    inst = instance(10, [("L", "A", 0.0, 100), ("S", "A", 5.0, 10)], host_gib=1)
    ea = Engine("eA", "A", "g0", 10, 512, 10 * GIB, 0)
    plan = Schedule((ea,), (
        act("load", ea, 0, 2), act("run", ea, 2, 13.6, "L", 100),
        act("run", ea, 13.6, 16.2, "S", 10), act("unload", ea, 16.2, 17.2)))
    assert _mean(inst, plan) == pytest.approx(12.4)
    without, out = _without_and_with_pauses(monkeypatch, inst, PrefillCost(), plan)
    assert _mean(inst, without) == pytest.approx(10.9)
    assert _mean(inst, out) == pytest.approx(10.15)
    assert [(a.kind, a.request, a.tokens_from, a.tokens_to, a.start_s, a.end_s)
            for a in out.actions if a.kind != "unload"] == [
        ("load", None, None, None, 0.0, 2.0), ("run", "L", 0, 14, 2.0, 5.0),
        ("kv_save", "L", None, None, 5.0, 5.5), ("run", "S", 0, 10, 5.5, 8.1),
        ("kv_restore", "L", None, None, 8.1, 8.6), ("run", "L", 14, 100, 8.6, 17.2)]


def test_a_run_is_paused_for_another_models_request_without_copying_its_state(
        monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """L (model A, 100 tokens, at 0) and S (model B, 10 tokens, at 5 s) on a 20 GiB GPU
    that holds an engine of each (10 GiB apiece); 0.1 s per token, no prefill. The plan:

    load A [0,2] load B [2,4]; L [2,12] S [12,13]: responses 12 and 8, mean 10.

    S first gives S [5,6] L [6,16]: mean 8.5. Pausing L when S arrives, on A's engine,
    which stays resident with L's state (no copy: nothing else ran on it):
    L [2,5] S [5,6] L's rest [6,13]: responses 13 and 1, mean 7.
    """
    inst = instance(20, [("L", "A", 0.0, 100), ("S", "B", 5.0, 10)], host_gib=1)
    ea = Engine("eA", "A", "g0", 10, 512, 10 * GIB, 0)
    eb = Engine("eB", "B", "g0", 10, 512, 10 * GIB, 0)
    plan = Schedule((ea, eb), (
        act("load", ea, 0, 2), act("load", eb, 2, 4), act("run", ea, 2, 12, "L", 100),
        act("run", eb, 12, 13, "S", 10), act("unload", ea, 12, 13),
        act("unload", eb, 13, 14)))
    assert _mean(inst, plan) == pytest.approx(10.0)
    without, out = _without_and_with_pauses(monkeypatch, inst, RoundCost(), plan)
    assert _mean(inst, without) == pytest.approx(8.5)
    assert _mean(inst, out) == pytest.approx(7.0)
    assert [(a.engine, a.request, a.tokens_from, a.tokens_to, a.start_s, a.end_s)
            for a in out.actions if a.kind == "run"] == [
        ("eA", "L", 0, 30, 2.0, 5.0), ("eB", "S", 0, 10, 5.0, 6.0),
        ("eA", "L", 30, 100, 6.0, 13.0)]
    assert not any(a.kind in ("kv_save", "kv_restore") for a in out.actions)


def test_a_long_run_is_paused_and_its_model_swapped_out_for_a_heavy_request() -> None:
    """L (model A, 1,000 tokens, weight 1, at 0) and S (model B, 10 tokens, weight 10, at
    50 s) on a 10 GiB GPU that holds one engine at a time (10 GiB each); 0.1 s per
    token, no prefill (a recompute is free), loads 2 s, unloads 1 s. The plan, L then S:

    load A [0,2] L [2,102] unload A load B [103,105] S [105,106]: weighted sum
    102 + 10 * 56 = 662.

    The pause move pauses L when S arrives (480 tokens done) and swaps A out for B:
    L [2,50] unload A [50,51] load B [51,53] S [53,54] unload B [54,55] load A [55,57]
    L's rest recomputed [57,109]: 109 + 10 * 4 = 149 (with a KV save and restore
    instead: 155). (S first, L waiting for it, is the best plan without a pause: 164;
    the whole polish finds that one first, by a ruin, and in it L cannot start before S
    arrives, so the move is shown on its own.)
    """
    from planner.solver.polish.pauses import pause_moves

    inst = instance(10, [("L", "A", 0.0, 1000), ("S", "B", 50.0, 10)], host_gib=64)
    inst = replace(inst, requests=tuple(replace(r, weight=10.0) if r.id == "S" else r
                                        for r in inst.requests))
    ea = Engine("eA", "A", "g0", 10, 2048, 10 * GIB, 0)
    eb = Engine("eB", "B", "g0", 10, 2048, 10 * GIB, 0)
    plan = Schedule((ea, eb), (
        act("load", ea, 0, 2), act("run", ea, 2, 102, "L", 1000), act("unload", ea, 102, 103),
        act("load", eb, 103, 105), act("run", eb, 105, 106, "S", 10),
        act("unload", eb, 106, 107)))
    assert check_plan(inst, plan) == []
    assert _mean(inst, plan) == pytest.approx(662 / 11)
    score = Score(inst, "mean_response")
    order = list(plan.actions)
    got = pause_moves(inst, RoundCost(), plan, order, {"A": [ea], "B": [eb]}, score,
                      score(order, [a.end_s for a in order]), time.perf_counter() + 10)
    assert got is not None
    out = replace(plan, actions=tuple(got[0]))
    assert check_plan(inst, out) == []
    assert _mean(inst, out) == pytest.approx(149 / 11)
    assert [(a.kind, a.engine, a.start_s, a.end_s) for a in out.actions][:7] == [
        ("load", "eA", 0.0, 2.0), ("run", "eA", 2.0, 50.0), ("unload", "eA", 50.0, 51.0),
        ("load", "eB", 51.0, 53.0), ("run", "eB", 53.0, 54.0), ("unload", "eB", 54.0, 55.0),
        ("load", "eA", 55.0, 57.0)]
    rest = out.actions[7]
    assert (rest.request, rest.tokens_from, rest.recompute, rest.end_s) == ("L", 480, True,
                                                                            109.0)


def test_a_pause_timed_too_early_runs_on_until_the_heavier_request_comes(monkeypatch  # type: ignore[no-untyped-def]
                                                                         ) -> None:
    """The case above, paused too early (as when a move has started L's first part
    sooner than its pause was timed for): L's 4 tokens [2,4] save [4,4.5], the GPU idle
    until S arrives at 5 s, S [5,7.6] restore [7.6,8.1] L's rest [8.1,17.7]: responses
    17.7 and 2.6, mean 10.15. The first part made as long as the idle time allows (9
    tokens by 4.5 s) leaves S where it was and L's rest shorter: L [2,4.5] save
    [4.5,5] S [5,7.6] restore [7.6,8.1] L's rest [8.1,17.2]: mean 9.9 (better than
    pausing when S arrives, which delays S by the save: 10.15)."""
    from planner.solver.polish import loop

    inst = instance(10, [("L", "A", 0.0, 100), ("S", "A", 5.0, 10)], host_gib=1)
    ea = Engine("eA", "A", "g0", 10, 512, 10 * GIB, 0)
    part = [act("run", ea, 2, 4, "L", 4),
            Action("kv_save", "eA", "g0", 4, 4.5, "L", bytes=1),
            act("run", ea, 5, 7.6, "S", 10),
            Action("kv_restore", "eA", "g0", 7.6, 8.1, "L", bytes=1),
            replace(act("run", ea, 8.1, 17.7, "L", 100), tokens_from=4)]
    plan = Schedule((ea,), (act("load", ea, 0, 2), *part, act("unload", ea, 17.7, 18.7)))
    assert check_plan(inst, plan) == []
    assert _mean(inst, plan) == pytest.approx(10.15)
    got = []
    for on in (False, True):
        monkeypatch.setattr(loop, "RESPLITS", on)
        monkeypatch.setattr(loop, "PAUSES", False)
        out, _ = polish(inst, PrefillCost(), plan, "mean_response", time.perf_counter() + 5)
        assert check_plan(inst, out) == []
        got.append(out)
    assert _mean(inst, got[0]) == pytest.approx(10.15)
    assert _mean(inst, got[1]) == pytest.approx(9.9)
    assert [(a.kind, a.request, a.tokens_from, a.tokens_to, a.start_s, a.end_s)
            for a in got[1].actions if a.kind != "unload"] == [
        ("load", None, None, None, 0.0, 2.0), ("run", "L", 0, 9, 2.0, 4.5),
        ("kv_save", "L", None, None, 4.5, 5.0), ("run", "S", 0, 10, 5.0, 7.6),
        ("kv_restore", "L", None, None, 7.6, 8.1), ("run", "L", 9, 100, 8.1, 17.2)]


def test_the_runs_of_each_period_and_of_two_periods_in_a_row_are_ruins() -> None:
    """A GPU serves A (a1, a2), then B (b), then A again (a3): each period's runs, and
    those of each two periods one after the other, are ruins (the most runs first), so
    that a period can move whole or two can trade places."""
    from planner.solver.polish.moves import movable_runs
    from planner.solver.polish.ruins import _periods

    inst = instance(10, [("a1", "A", 0.0, 10), ("a2", "A", 0.0, 10), ("b", "B", 0.0, 10),
                         ("a3", "A", 0.0, 10)], host_gib=1)
    ea = Engine("eA", "A", "g0", 10, 64, 10 * GIB, 0)
    eb = Engine("eB", "B", "g0", 10, 64, 10 * GIB, 0)
    plan = Schedule((ea, eb), (
        act("load", ea, 0, 2), act("run", ea, 2, 3, "a1", 10), act("run", ea, 3, 4, "a2", 10),
        act("unload", ea, 4, 5), act("load", eb, 5, 7), act("run", eb, 7, 8, "b", 10),
        act("unload", eb, 8, 9), act("load", ea, 9, 11), act("run", ea, 11, 12, "a3", 10),
        act("unload", ea, 12, 13)))
    assert check_plan(inst, plan) == []
    order = list(plan.actions)
    movable = movable_runs(order, {"A": [ea], "B": [eb]})
    assert _periods(order, movable) == [["a1", "a2", "b"], ["a1", "a2"], ["b", "a3"],
                                        ["b"], ["a3"]]
    ruins = [{q, *xs} for q, xs in listed_ruins(order, {"A": [ea], "B": [eb]},
                                                Score(inst, "mean_response"))]
    assert {"a1", "a2", "b"} in ruins and {"a1", "a2"} in ruins and {"b", "a3"} in ruins


def _three_polished_with_and_without_handoffs(monkeypatch, cost: RoundCost, t: float  # type: ignore[no-untyped-def]
                                               ) -> tuple[Instance, list[Schedule], str]:
    """a, b, c (40 tokens each, at 0) run one after the other, ``t`` s each, on one engine
    of A (``eg``) on a 10 GiB GPU; that plan polished without hand-overs, then with them,
    the host CPU's engine of A offered (``extra``), both checked valid: (the instance, the
    two plans, the id the CPU engine got)."""
    from planner.solver.polish import loop

    inst = instance(10, [("a", "A", 0.0, 40), ("b", "A", 0.0, 40), ("c", "A", 0.0, 40)])
    eg = Engine("eg", "A", "g0", 10, 512, 10 * GIB, 0)
    plan = Schedule((eg,), (
        act("load", eg, 0, 2), act("run", eg, 2, 2 + t, "a", 40),
        act("run", eg, 2 + t, 2 + 2 * t, "b", 40), act("run", eg, 2 + 2 * t, 2 + 3 * t, "c", 40),
        act("unload", eg, 2 + 3 * t, 3 + 3 * t)))
    assert check_plan(inst, plan) == []
    out = []
    for on in (False, True):
        monkeypatch.setattr(loop, "HANDOFFS", on)
        got, _ = polish(inst, cost, plan, "mean_response", time.perf_counter() + 10,
                        extra=[EngineConfig("A", "h", 0, 512)])
        assert check_plan(inst, got) == []
        out.append(got)
    return inst, out, next(e.id for e in out[1].engines if e.device == "h")


class HandoffCost(RoundCost):
    """A GPU engine (every layer on the GPU) prefills 0.1 s per prompt token and decodes
    0.1 s per token; a CPU engine (none) prefills ten times slower (1 s per token: 16 s
    for a 16-token prompt) but decodes only 1.5 times slower (0.15 s), as a host CPU
    against a GPU for a large model."""

    def prefill_s(self, cfg: EngineConfig, prompt_tokens: int) -> float:
        return (0.1 if cfg.n_gpu_layers else 1.0) * prompt_tokens

    def decode_s_per_token(self, cfg: EngineConfig, context_tokens: int) -> float:
        return 0.1 if cfg.n_gpu_layers == self.LAYERS else 0.15


def test_a_request_prefilled_on_the_gpu_is_decoded_on_the_host_cpu(monkeypatch  # type: ignore[no-untyped-def]
                                                                   ) -> None:
    """a, b, c (40 tokens each, at 0) on one engine of A on a 10 GiB GPU (5.6 s a run):
    load [0,2] a [2,7.6] b [7.6,13.2] c [13.2,18.8]: responses 7.6, 13.2, 18.8, mean 13.2.
    On the host CPU a whole run takes 22 s (16 s of prefill), so no move to it helps.
    Handed over, c's prompt and first 4 tokens go on the GPU first, [2,4], its state is
    saved [4,4.5] and restored on the CPU engine [4.5,5], which decodes its other 36
    tokens [5,10.4]; a [4.5,10.1] and b [10.1,15.7] wait for the save only: mean
    (10.1 + 15.7 + 10.4) / 3 = 12.0667."""

    cost = HandoffCost()
    inst, got, ec = _three_polished_with_and_without_handoffs(monkeypatch, cost, 5.6)
    assert _mean(inst, got[0]) == pytest.approx(13.2)
    assert _mean(inst, got[1]) == pytest.approx(12.0667, abs=1e-4)
    assert [(a.kind, a.engine, a.request, a.tokens_from, a.tokens_to, a.start_s, a.end_s)
            for a in got[1].actions if a.request is not None] == [
        ("run", "eg", "c", 0, 4, 2.0, 4.0), ("kv_save", "eg", "c", None, None, 4.0, 4.5),
        ("kv_restore", ec, "c", None, None, 4.5, 5.0), ("run", "eg", "a", 0, 40, 4.5, 10.1),
        ("run", ec, "c", 4, 40, 5.0, 10.4), ("run", "eg", "b", 0, 40, 10.1, 15.7)]


class RelayCost(HandoffCost):
    """As HandoffCost, with a GPU prefill of 0.01 s per token, a CPU decode three times
    slower than the GPU's (0.3 s a token) and KV copies of 0.05 s."""

    def prefill_s(self, cfg: EngineConfig, prompt_tokens: int) -> float:
        return (0.01 if cfg.n_gpu_layers else 1.0) * prompt_tokens

    def decode_s_per_token(self, cfg: EngineConfig, context_tokens: int) -> float:
        return 0.1 if cfg.n_gpu_layers == self.LAYERS else 0.3

    def kv_save_s(self, cfg: EngineConfig, context_tokens: int) -> float:
        return 0.05

    def kv_restore_s(self, cfg: EngineConfig, context_tokens: int) -> float:
        return 0.05


def test_the_host_cpu_decodes_part_of_a_waiting_request_then_hands_it_back(monkeypatch  # type: ignore[no-untyped-def]
                                                                           ) -> None:
    """a, b, c (40 tokens each, at 0) on one engine of A (4.16 s a run): a [2,6.16]
    b [6.16,10.32] c [10.32,14.48], mean 10.32. On the CPU, 3 times slower at decoding, a
    whole hand-over does not pay (c's 36 tokens take 10.8 s there: 10.39). A relay does:
    b's prompt and 4 tokens on the GPU [2,2.56], saved [2.56,2.61], restored on the CPU
    [2.61,2.66], which makes tokens 4-15 [2.66,5.96] (as many as fit before b's run was to
    start) while a runs [2.61,6.77]; saved [5.96,6.01], restored on the GPU after a
    [6.77,6.82], b's rest [6.82,9.32], c [9.32,13.48]: mean (6.77 + 9.32 + 13.48) / 3 =
    9.8567."""
    inst, got, ec = _three_polished_with_and_without_handoffs(monkeypatch, RelayCost(), 4.16)
    assert _mean(inst, got[0]) == pytest.approx(10.32)
    assert _mean(inst, got[1]) == pytest.approx(9.8567, abs=1e-4)
    assert [(a.kind, a.engine, a.request, a.tokens_from, a.tokens_to, a.start_s, a.end_s)
            for a in got[1].actions if a.request is not None] == [
        ("run", "eg", "b", 0, 4, 2.0, 2.56), ("kv_save", "eg", "b", None, None, 2.56, 2.61),
        ("kv_restore", ec, "b", None, None, 2.61, 2.66), ("run", "eg", "a", 0, 40, 2.61, 6.77),
        ("run", ec, "b", 4, 15, 2.66, 5.96), ("kv_save", ec, "b", None, None, 5.96, 6.01),
        ("kv_restore", "eg", "b", None, None, 6.77, 6.82), ("run", "eg", "b", 15, 40, 6.82, 9.32),
        ("run", "eg", "c", 0, 40, 9.32, 13.48)]


def test_a_handed_over_request_is_one_whole_gpu_run_for_batching(monkeypatch  # type: ignore[no-untyped-def]
                                                                 ) -> None:
    """Slot batching (solver/batching.py) re-dispatches a one-slot plan's GPU runs; a
    request prefilled on the GPU and decoded on the CPU (the hand-over above) becomes one
    whole run on its GPU engine there, all its tokens (not the 4 of its GPU piece), and
    its KV copies go; the lane's mean run time (the unit of batching's patience) counts
    its whole run, 5.6 s like a's and b's, not its GPU piece's 2 s."""
    from planner.solver.batching import _mean_runs, _Run, _whole_runs

    inst, got, _ = _three_polished_with_and_without_handoffs(monkeypatch, HandoffCost(), 5.6)
    whole = _whole_runs(inst, got[1])
    c = [a for a in whole.actions if a.request == "c"]
    assert [(a.kind, a.engine, a.tokens_from, a.tokens_to) for a in c] == [
        ("run", "eg", 0, 40)]
    assert c[0].end_s - c[0].start_s == pytest.approx(2.0)  # the GPU piece's times
    runs = [_Run(i, a.engine, 0.0, 16, (a.tokens_to or 0) - (a.tokens_from or 0), 99.0)
            for i, a in enumerate(whole.actions) if a.kind == "run"]
    assert _mean_runs(HandoffCost(), whole, {"g0": runs}) == {"g0": pytest.approx(5.6)}


def _same_key(got: tuple[float, ...], whole: tuple[float, ...]) -> None:
    """A key scored from a candidate's change equals the whole candidate's, but for the
    float error of summing in another order (keys are rounded to 1e-9)."""
    assert got[0] == whole[0]
    assert got[1] == pytest.approx(whole[1], rel=0, abs=2e-9)


def test_candidates_timed_from_their_change_get_the_whole_plans_keys() -> None:
    """Every candidate the single moves and the ruins score (a run put after each action
    of its model's engines, or in a period of its own) is timed and scored from the last
    kept state before its change (``Prefix.key``, with the index it is known to share up
    to) and only until its waiting state is the plan's again: its key equals the one from
    timing the whole candidate (to the float error of summing in another order), on
    fcfs-lru plans of random instances of 30 requests (over 40 actions: the kept states
    are used), swaps forced (two models of 10 GiB on a 10-15 GiB GPU)."""
    from planner.executor.deps import earliest_times, plan_order
    from planner.solver.polish.moves import movable_runs, placements

    rng = random.Random(5)
    cost = RoundCost()
    checked = 0
    for _ in range(6):
        reqs = [(f"r{i:02d}", rng.choice("AB"), round(rng.uniform(0, 60), 1),
                 rng.choice([5, 10, 20, 30])) for i in range(30)]
        inst = instance(rng.choice([10, 15]), reqs)
        inst = replace(inst, requests=tuple(replace(r, weight=rng.choice([1.0, 2.0]))
                                            for r in inst.requests))
        sched = baselines(inst, cost)["fcfs-lru"]
        order = plan_order(sched)
        assert len(order) > 40
        by_model: dict[str, list[Engine]] = {}
        for e in sched.engines:
            by_model.setdefault(e.model, []).append(e)
        score = Score(inst, "mean_response")
        for q in movable_runs(order, by_model):
            at = next(i for i, a in enumerate(order) if a.kind == "run" and a.request == q)
            rest = order[:at] + order[at + 1:]
            for key, cand in placements(inst, cost, rest, order[at], by_model, score.arrival,
                                        score, (float("inf"),), time.perf_counter() + 60,
                                        skip=at - 1):
                _same_key(key, score(cand, earliest_times(cand, score.arrival)[1]))
                checked += 1
    assert checked > 1000


def _random_plans(seed: int, n_plans: int, spread: float):  # type: ignore[no-untyped-def]
    """fcfs-lru plans of random instances of 30 requests (two models of 10 GiB on a
    10-15 GiB GPU, so swaps are forced), arrivals over ``spread`` seconds: with a long
    spread the GPU idles between bursts."""
    from planner.executor.deps import plan_order

    rng = random.Random(seed)
    cost = RoundCost()
    for _ in range(n_plans):
        reqs = [(f"r{i:02d}", rng.choice("AB"), round(rng.uniform(0, spread), 1),
                 rng.choice([5, 10, 20, 30])) for i in range(30)]
        inst = instance(rng.choice([10, 15]), reqs)
        inst = replace(inst, requests=tuple(replace(r, weight=rng.choice([1.0, 2.0]))
                                            for r in inst.requests))
        sched = baselines(inst, cost)["fcfs-lru"]
        by_model: dict[str, list[Engine]] = {}
        for e in sched.engines:
            by_model.setdefault(e.model, []).append(e)
        yield inst, cost, sched, plan_order(sched), by_model


def test_the_bound_on_a_places_key_is_never_above_it(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``Prefix.run_bounds`` (a run's own response plus the least delay it passes down
    its lane, through the swaps too) is at most the key of the plan with the run put
    there, timed whole: for every run, after every action of its engine and in a period
    of its own at every slot, on busy and on idle random plans. The placements timed,
    best bound first, still find the best place of all."""
    from planner.executor.deps import earliest_times
    from planner.solver.polish import moves
    from planner.solver.polish.moves import drop_empty, movable_runs, period_slots, placements
    from planner.solver.polish.timing import Prefix

    checked = tight = found = 0
    for spread in (60.0, 2000.0):
        for inst, cost, sched, order, by_model in _random_plans(7, 5, spread):
            score = Score(inst, "mean_response")
            for run in movable_runs(order, by_model).values():
                at = next(i for i, a in enumerate(order) if a is run)
                rest = drop_empty(order[:at] + order[at + 1:], run.engine)
                prefix = Prefix(rest, score.arrival)
                e = next(x for x in sched.engines if x.id == run.engine)
                load = Action("load", e.id, e.device, 0.0, cost.load_s(e.config))
                unload = Action("unload", e.id, e.device, 0.0, cost.unload_s(e.config))
                places = [(j, (run,), prefix.end[j]) for j, x in enumerate(rest)
                          if x.engine == e.id and x.kind in ("load", "run")]
                places += [(j, (load, run, unload), load.end_s + (
                    prefix.end[j] if j >= 0 and rest[j].kind == "unload" else 0.0))
                    for j in period_slots(rest, e)]
                bounds = prefix.run_bounds(score, [j for j, _p, _r in places], run,
                                           [ready for _j, _p, ready in places])
                assert bounds is not None
                for (j, put, _ready), bound in zip(places, bounds, strict=True):
                    cand = [*rest[:j + 1], *put, *rest[j + 1:]]
                    key = score(cand, earliest_times(cand, score.arrival)[1])
                    assert bound[0] == key[0]
                    assert bound[1] <= key[1] + 1e-9
                    tight += bound[1] > key[1] - 1e-6
                    checked += 1
                args = (inst, cost, order[:at] + order[at + 1:], run, by_model,
                        score.arrival, score, (math.inf,), time.perf_counter() + 60)
                pruned = placements(*args)[:1]
                monkeypatch.setattr(moves, "_beyond", lambda bound, bar: False)
                every = placements(*args)[:1]  # every place timed
                monkeypatch.undo()
                assert pruned == every
                found += bool(every)
    assert checked > 2000 and found > 200
    assert tight > checked // 10  # (a bound that is never tight would prune nothing)


def test_a_candidate_is_timed_only_until_it_meets_the_plan_again() -> None:
    """On a plan whose GPU idles between bursts, a run put in delays its lane only
    until the next idle time: ``Prefix.key`` stops timing there (the rest of the plan
    keeps its times) and still gives the key of the whole candidate timed."""
    from planner.executor.deps import earliest_times
    from planner.solver.polish.moves import drop_empty, movable_runs
    from planner.solver.polish.timing import Prefix

    timed = tails = 0
    for inst, _cost, _sched, order, by_model in _random_plans(11, 4, 3000.0):
        score = Score(inst, "mean_response")
        for run in movable_runs(order, by_model).values():
            at = next(i for i, a in enumerate(order) if a is run)
            rest = drop_empty(order[:at] + order[at + 1:], run.engine)
            prefix = Prefix(rest, score.arrival)
            for j, x in enumerate(rest):
                if x.engine != run.engine or x.kind not in ("load", "run"):
                    continue
                cand = [*rest[:j + 1], run, *rest[j + 1:]]
                before = prefix.timed
                _same_key(prefix.key(score, cand, j + 1, inserted=1),
                          score(cand, earliest_times(cand, score.arrival)[1]))
                timed += prefix.timed - before
                tails += len(cand) - (j + 1) // 16 * 16
    assert tails > 2000
    assert timed < tails / 3
