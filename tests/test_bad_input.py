"""Bad input never reaches a traceback: one line per fault, exit code 2, no output file.

The rows of issue 16's table, with their exact inputs, and the other faults it names
(infinities, zero memory, a host with GPUs but no threads, an empty request list).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from planner.cli import cli
from tests.conftest import tiny_dict


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def refused(path: Path, tmp_path: Path, *expected: str) -> list[str]:
    """Solve and validate ``path``: exit 2, only ``Error:`` lines, each expected text in
    them, no plan written; returns the lines."""
    out = tmp_path / "plan.json"
    for args in (["solve", str(path), "--solver", "fcfs-lru", "-o", str(out)],
                 ["validate", str(path)]):
        res = invoke(*args)
        assert res.exit_code == 2, res.output
        lines = res.output.splitlines()
        assert lines and all(ln.startswith("Error: ") for ln in lines), res.output
        for text in expected:
            assert text in res.output, res.output
        assert not out.exists()
    return lines


def with_raw(text_from: str, text_to: str) -> str:
    """tiny.json's text with one literal replaced: NaN and Infinity are not in json.dumps."""
    raw = json.dumps(tiny_dict())
    assert text_from in raw
    return raw.replace(text_from, text_to, 1)


def test_nan_arrival_is_one_line(write_instance: Any, tmp_path: Path) -> None:
    # issue table row 1: "arrival_s": NaN gave a DomainError traceback, exit 1
    p = write_instance(with_raw('"arrival_s": 0.0', '"arrival_s": NaN'))
    lines = refused(p, tmp_path)
    assert lines == [f"Error: {p}: requests[0].arrival_s: NaN is not a number JSON allows "
                     "(give a finite number)"]


@pytest.mark.parametrize("literal, shown", [
    ("Infinity", "Infinity"),  # Python's json reads it
    ("-Infinity", "-Infinity"),
    ("1e999", "Infinity"),  # overflows to an infinity as it is read
])
@pytest.mark.parametrize("field", ['"weight": 2.0', '"memory_gib": 24', '"slo_s": 60'])
def test_infinities_anywhere(write_instance: Any, tmp_path: Path, literal: str, shown: str,
                             field: str) -> None:
    key = field.split(":")[0]
    p = write_instance(with_raw(field, f"{key}: {literal}"))
    lines = refused(p, tmp_path, f"{shown} is not a number JSON allows")
    assert len(lines) == 1


def test_nan_in_a_plan_is_refused(tmp_path: Path) -> None:
    from tests.conftest import ROOT

    inst = str(ROOT / "instances" / "tiny.json")
    assert invoke("solve", inst, "--solver", "fcfs-lru", "-o", "p.json").exit_code == 0
    raw = Path("p.json").read_text()
    Path("bad.json").write_text(raw.replace('"end_s": ', '"end_s": NaN, "x": ', 1))
    res = invoke("validate", "bad.json", "--instance", inst)
    assert res.exit_code == 2
    assert "bad.json: actions[0].end_s: NaN is not a number JSON allows" in res.output


def test_empty_request_list_gives_the_empty_plan(write_instance: Any, tmp_path: Path) -> None:
    # issue table row 2: "requests": [] gave "max() arg is an empty sequence", exit 1.
    # Decided: nothing to serve is a valid instance; its plan is empty (no engines, no
    # actions), OPTIMAL, with zero metrics, and passes the checker.
    d = tiny_dict()
    d["requests"] = []
    p = write_instance(d)
    assert invoke("validate", str(p)).exit_code == 0
    for solver in ("cp-sat", "fcfs-lru", "grouped"):
        out = tmp_path / f"{solver}.json"
        res = invoke("solve", str(p), "--solver", solver, "-o", str(out), "--time-limit", "1")
        assert res.exit_code == 0, res.output
        plan = json.loads(out.read_text())
        assert plan["engines"] == [] and plan["actions"] == [] and plan["requests"] == []
        assert plan["metrics"]["makespan_s"] == 0.0 and plan["metrics"]["n_loads"] == 0
        res = invoke("validate", str(out), "--instance", str(p))
        assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cp-sat.json").read_text())["solver"]["status"] == "OPTIMAL"


def test_request_longer_than_trained_context_reference(write_instance: Any,
                                                       tmp_path: Path) -> None:
    # issue table row 3: prompt_tokens 500,000 for Llama-3-8B (trained context 8,192) was
    # accepted with n_ctx 500,224 and 43 GiB of host memory
    d = tiny_dict()
    d["requests"][0]["prompt_tokens"] = 500_000  # request a, model llama3-8b, 64 out
    lines = refused(write_instance(d), tmp_path)
    assert lines == [f"Error: {tmp_path / 'inst.json'}: requests[0]: request a: prompt_tokens"
                     " + output_tokens = 500,064 is longer than model llama3-8b's trained "
                     "context of 8,192 tokens (n_ctx_train)"]


def test_request_at_the_trained_context_is_served_with_n_ctx_capped(write_instance: Any,
                                                                   tmp_path: Path) -> None:
    d = tiny_dict()
    d["requests"][0]["prompt_tokens"] = 8192 - 64  # exactly the trained context
    res = invoke("solve", str(write_instance(d)), "--solver", "fcfs-lru", "-o", "p.json")
    assert res.exit_code == 0, res.output
    n_ctx = {e["model"]: e["n_ctx"] for e in json.loads(Path("p.json").read_text())["engines"]}
    assert n_ctx["llama3-8b"] == 8192


def test_trained_context_from_gguf(write_instance: Any, tmp_path: Path) -> None:
    from profiler.models import fetch_smollm2, read_arch

    gguf = fetch_smollm2()
    limit = read_arch(gguf).context_length  # SmolLM2-135M: 8,192
    d = tiny_dict()
    d["models"][0] = {"id": "llama3-8b", "gguf": str(gguf)}
    d["requests"][2]["prompt_tokens"] = limit  # request c, 128 output tokens
    lines = refused(write_instance(d), tmp_path)
    assert lines == [f"Error: {tmp_path / 'inst.json'}: requests[2]: request c: prompt_tokens"
                     f" + output_tokens = {limit + 128:,} is longer than model llama3-8b's "
                     f"trained context of {limit:,} tokens (n_ctx_train)"]


def test_trained_context_inline_arch(write_instance: Any, tmp_path: Path) -> None:
    d = tiny_dict()
    d["models"][0] = {"id": "llama3-8b", "arch": {
        "n_layers": 4, "hidden_size": 256, "n_heads": 4, "n_kv_heads": 2, "head_dim": 64,
        "ffn_size": 768, "vocab_size": 1000, "layer_bytes": 10**6, "other_bytes": 10**6,
        "n_ctx_train": 256}}
    refused(write_instance(d), tmp_path, "requests[0]: request a:",
            "trained context of 256 tokens")
    d["models"][0]["arch"]["n_layers"] = "four"
    refused(write_instance(d), tmp_path, "models[0]: arch.n_layers: must be a whole number")


@pytest.mark.parametrize("memory, expected", [
    (0, "cluster.hosts[0].gpus[0].memory_gib: must be > 0 (got 0)"),
    (1e-12, "cluster.hosts[0]: gpu box-gpu0: memory must be positive (at least one byte)"),
    (-1, "cluster.hosts[0].gpus[0].memory_gib: must be > 0 (got -1)"),
    (1e308, "cluster.hosts[0]: box-gpu0: memory_gib must be at most 1048576"),
])
def test_device_with_zero_or_absurd_memory(write_instance: Any, tmp_path: Path, memory: float,
                                           expected: str) -> None:
    d = tiny_dict()
    d["cluster"]["hosts"][0]["gpus"][0]["memory_gib"] = memory
    lines = refused(write_instance(d), tmp_path, expected)
    assert len(lines) == 1


def test_host_memory_zero(write_instance: Any, tmp_path: Path) -> None:
    d = tiny_dict()
    d["cluster"]["hosts"][0]["memory_gib"] = 0
    refused(write_instance(d), tmp_path, "cluster.hosts[0].memory_gib: must be > 0 (got 0)")


@pytest.mark.parametrize("threads, expected", [
    (0, "cluster.hosts[0].threads: must be >= 1 (got 0)"),
    (None, "cluster.hosts[0].threads: wrong type, expected integer (got null)"),
    ("missing", "cluster.hosts[0].threads: missing required field"),
    (2**40, "cluster.hosts[0]: host box: threads must be in [1, 65536]"),
])
def test_host_with_gpus_but_no_threads(write_instance: Any, tmp_path: Path, threads: Any,
                                       expected: str) -> None:
    d = tiny_dict()
    assert d["cluster"]["hosts"][0]["gpus"]  # the host has a GPU
    if threads == "missing":
        del d["cluster"]["hosts"][0]["threads"]
    else:
        d["cluster"]["hosts"][0]["threads"] = threads
    lines = refused(write_instance(d), tmp_path, expected)
    assert len(lines) == 1


@pytest.mark.parametrize("field, value, expected", [
    ("arrival_s", 1e7, "request a: arrival_s must be in [0, 1e+06] seconds"),
    ("weight", 1e300, "request a: weight must be > 0 and at most 1000"),
    ("slo_s", 1e12, "request a: slo_s must be > 0 and at most 1e+06 seconds"),
    ("output_tokens", 2**40, "request a: prompt_tokens + output_tokens must be at most"),
])
def test_request_values_past_their_limits(write_instance: Any, tmp_path: Path, field: str,
                                          value: float, expected: str) -> None:
    d = tiny_dict()
    d["requests"][0][field] = value
    refused(write_instance(d), tmp_path, expected)


@pytest.mark.parametrize("args, expected", [
    (["--time-limit", "nan"], "'nan' is not a finite number"),
    (["--time-limit", "inf"], "is not in the range"),
])
def test_non_finite_options(args: list[str], expected: str) -> None:
    from tests.conftest import ROOT

    res = invoke("solve", str(ROOT / "instances" / "tiny.json"), *args)
    assert res.exit_code == 2 and expected in res.output


def test_generate_refuses_non_finite_rates_and_absurd_counts(tmp_path: Path) -> None:
    for rate, expected in [("nan", "a rate is a finite number >= 0"),
                           ("x=1", "unknown model 'x'"), ("fast", "'fast' is not a number"),
                           ("1e9", "requests; at most 200,000 are generated")]:
        res = invoke("instance", "generate", "-o", "g.json", "--rate", rate)
        assert res.exit_code == 2 and expected in res.output, res.output
        assert not Path("g.json").exists()



def test_generate_names_unknown_models_as_the_option(tmp_path: Path) -> None:
    """`--models` names reference models: an unknown one is named as the option (not as a
    field of the file not yet written), with the names known; nothing is written."""
    for models, expected in [("nosuch", "--models: unknown model 'nosuch' (known: "),
                             ("llama3-8b-q4_k_m,b", "--models: unknown model 'b'"),
                             (",", "--models: no model named (known: ")]:
        res = invoke("instance", "generate", "-o", "g.json", "--models", models)
        assert res.exit_code == 2 and expected in res.output, res.output
        assert "g.json" not in res.output and not Path("g.json").exists()

@pytest.mark.parametrize("value", ['"x"', "true", "[1]", "{}"])
def test_plan_metric_of_the_wrong_type(tmp_path: Path, value: str) -> None:
    # found by benchmarks/fuzz.py: a plan whose metrics.makespan_s was "x" reached float()
    from tests.conftest import ROOT

    inst = str(ROOT / "instances" / "tiny.json")
    assert invoke("solve", inst, "--solver", "fcfs-lru", "-o", "p.json").exit_code == 0
    data = json.loads(Path("p.json").read_text())
    data["metrics"]["makespan_s"] = json.loads(value)
    Path("bad.json").write_text(json.dumps(data))
    res = invoke("validate", "bad.json", "--instance", inst)
    assert res.exit_code == 2 and "metrics.makespan_s: file says" in res.output
    assert "not a number" in res.output


def test_duplicate_ids_are_named_once_each_in_order(write_instance) -> None:  # type: ignore[no-untyped-def]
    """Each id that occurs more than once is named once, sorted (counted in one pass:
    instances hold up to 200,000 requests)."""
    from planner.domain import duplicates
    from tests.conftest import tiny_dict

    assert duplicates(["b", "a", "b", "c", "a", "b"]) == ["a", "b"]
    assert duplicates([]) == [] and duplicates(["x", "y"]) == []
    d = tiny_dict()
    d["requests"] = [dict(d["requests"][0], id=i) for i in ("r2", "r1", "r2", "r1", "r3")]
    res = invoke("validate", str(write_instance(d)))
    assert res.exit_code == 2 and "requests: duplicate request id 'r1'" in res.output
    assert "duplicate request id 'r2'" in res.output and "'r3'" not in res.output
