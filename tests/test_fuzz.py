"""The fuzz suite's CI share: a fixed number of examples, derandomized (a fixed seed).

The long run is ``benchmarks/fuzz.py``. See tests/fuzzing.py for the inputs and the
property (exit code 0 or 2, no traceback, no partial output file).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import fuzzing
from tests.fuzzing import Stats

CI = settings(max_examples=25, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))


@CI
@given(fuzzing.instances())
def test_schema_instances(instance: dict[str, Any]) -> None:
    stats = Stats()
    fuzzing.check_instance(stats, fuzzing.instance_json(instance))
    assert not stats.problems, stats.problems


@CI
@given(st.sampled_from(["tiny", "cpu"]), st.data())
def test_mutated_instances(seed: str, data: st.DataObject) -> None:
    raw = data.draw(fuzzing.mutations(fuzzing.seeds()[seed][0]))
    stats = Stats()
    fuzzing.check_instance(stats, raw)
    assert not stats.problems, stats.problems


@CI
@given(st.sampled_from(["tiny", "cpu"]), st.data())
def test_mutated_plans(seed: str, data: st.DataObject) -> None:
    instance, plan = fuzzing.seeds()[seed]
    raw = data.draw(fuzzing.mutations(plan))
    stats = Stats()
    fuzzing.check_plan_file(stats, raw, instance)
    assert not stats.problems, stats.problems


def test_the_property_can_fail(monkeypatch: Any) -> None:
    """The checks see a traceback and a partial file when there is one."""
    import planner.service

    def bug(*a: Any, **k: Any) -> None:
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(planner.service, "prepare", bug)
    stats = Stats()
    fuzzing.check_instance(stats, fuzzing.seeds()["tiny"][0])
    assert stats.internal_errors == 2 and any("exit code 70" in p for p in stats.problems)
