"""Machine fingerprints: identity, probes, distance; `planner profile check` on real engines."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from planner.cli import cli
from profiler.fingerprint import Distance, backend_of, compare, fingerprint, membw_probe

HERE: dict[str, Any] = {
    "cpu_model": "AMD EPYC", "cores": 2, "threads": 1, "memory_bytes": 25 * 2**30,
    "machine": "x86_64", "hostname": "vm", "machine_id": "aaaa", "cpu_flags_hash": "ff",
    "build": {"engine": "llama-cpp-python", "version": "0.3.36", "backend": "cpu",
              "system_info_hash": "11"},
    "gpus": [], "probes": {"membw_gbps": 20.0},
}


def test_same_machine_within_the_limit_matches() -> None:
    there = copy.deepcopy(HERE)
    there["probes"]["membw_gbps"] = 21.0
    d = compare(there, HERE, (0.0100, 0.0105))  # profile says 10 ms/token, here 10.5 ms
    assert d.same_machine and d.differences == []
    assert d.drift["decode"] == pytest.approx(0.010 / 0.0105 - 1)  # -4.8%: slower here
    assert d.matches and not d.drifts


def test_another_machine_and_drift_are_told() -> None:
    there = copy.deepcopy(HERE)
    there.update(machine_id="bbbb", memory_bytes=16 * 2**30)
    there["build"]["version"] = "0.3.30"
    d = compare(there, HERE, (0.0065, 0.0090))  # 28% slower here
    assert d.same_machine is False
    assert any("machine_id" in x for x in d.differences)
    assert any("memory_bytes" in x for x in d.differences)
    assert any("0.3.30 -> 0.3.36" in x for x in d.differences)
    assert d.drifts and not d.matches
    assert "decode -27.8%" in d.describe()


def test_decode_decides_over_bandwidth_and_no_fingerprint_never_matches() -> None:
    there = copy.deepcopy(HERE)
    there["probes"]["membw_gbps"] = 40.0  # bandwidth halved, decode unchanged
    assert compare(there, HERE, (0.01, 0.01)).matches
    assert not compare(there, HERE).matches  # bandwidth alone decides without decode (-50%)
    there["probes"]["membw_gbps"] = 23.0
    assert compare(there, HERE).matches  # -13%: within bandwidth's wider limit (25%)
    d = compare(None, HERE, (0.01, 0.01))
    assert d.same_machine is None and not d.matches
    assert "no fingerprint" in d.describe()
    assert not Distance(True).matches  # nothing probed: no claim of a match


def test_backend_and_this_machine() -> None:
    assert backend_of("CPU : SSE3 = 1 | AVX2 = 1 |", False) == "cpu"
    assert backend_of("CUDA : ARCHS = 890 | CPU : AVX2 = 1", True) == "cuda"
    assert membw_probe(16 << 20, reps=2) > 0.1  # GB/s
    fp = fingerprint(1)
    assert fp["threads"] == 1 and fp["cores"] >= 1 and fp["memory_bytes"] > 0
    assert fp["build"]["engine"] == "llama-cpp-python" and fp["probes"]["membw_gbps"] > 0


@pytest.mark.engine
def test_profile_check_cli_on_a_fresh_profile(tmp_path: Path) -> None:
    """A profile made here a moment ago matches; the committed reference has no fingerprint."""
    from profiler.models import fetch_smollm2
    from profiler.sweep import SweepConfig, run_sweep

    gguf = fetch_smollm2()
    cfg = SweepConfig(mode="quick", threads=1, load_n_ctx=(256,), warm_reps=1, cold_reps=1,
                      first_reps=1, busy_reps=1, walk_n_ctx=256, depths=(16, 128),
                      decode_block=8, decode_reps=3, kv_reps=1, prompt_lengths=(16, 64, 128),
                      prefill_reps=1)
    res = run_sweep(gguf, tmp_path / "prof", cfg, show_progress=False)
    fp = res.profile["fingerprint"]
    assert fp["threads"] == 1 and fp["probes"]["decode_s_per_token"] > 0
    for q in ("first_load_s", "busy_load_s", "kv_save_s", "kv_restore_s", "busy_kv_save_s",
              "busy_kv_restore_s", "host_bytes"):
        assert q in res.profile["fits"], q
    inst = {"format": "planner.instance/1", "name": "chk",
            "cluster": {"hosts": [{"id": "here", "cpu": "local", "threads": 1,
                                   "memory_gib": 2}]},
            "models": [{"id": "smol", "gguf": str(gguf)}],
            "profiles": [str(tmp_path / "prof")],
            "requests": [{"id": "a", "model": "smol", "arrival_s": 0, "prompt_tokens": 8,
                          "output_tokens": 4}]}
    (tmp_path / "chk.json").write_text(json.dumps(inst))
    out = CliRunner().invoke(cli, ["profile", "check", str(tmp_path / "chk.json"), "--json"],
                             catch_exceptions=False)
    checks = json.loads(out.output)
    assert len(checks) == 1 and checks[0]["models"] == ["smol"]
    c = checks[0]
    assert c["distance"]["same_machine"] is True
    assert c["decode_measured_s"] > 0 and "decode" in c["distance"]["drift"]
    # exit code 0 when it matches (within 10%), 1 otherwise: consistent with the JSON
    assert out.exit_code == (0 if c["matches"] else 1)
    assert c["decode_spread"] is not None and c["decode_spread"] >= 0  # repetitions here


def test_an_unsteady_machine_is_told() -> None:
    """The decode probe's repetitions disagreeing by more than the drift limit (a noisy
    machine or VM host) gets one warning, naming the worst model; a steady one none."""
    from planner.machine import profile_warnings
    from profiler.fingerprint import spread
    from tests.test_checker import instance

    assert spread([0.010]) is None
    assert spread([0.008, 0.010, 0.013]) == pytest.approx(0.5)
    d = compare(HERE, HERE, (0.01, 0.01)).to_json()

    inst = instance()
    threads = inst.cluster.hosts[0].threads

    def check(models: list[str], noise: float | None) -> dict[str, Any]:
        return {"profile": "p.json", "models": models, "threads": threads, "distance": d,
                "description": "same machine", "decode_spread": noise}
    steady = profile_warnings(inst, [check(["a"], 0.04), check(["b"], None)])
    assert steady == []
    noisy = profile_warnings(inst, [check(["a"], 0.04), check(["b"], 0.31)])
    assert len(noisy) == 1 and "unsteady" in noisy[0] and "31%" in noisy[0] and "(b)" in noisy[0]


@pytest.mark.parametrize("checks, profiled", [((True,), 1), ((False, True), 2),
                                               ((False, False), 2)])
def test_demo_reprofiles_a_profile_that_drifts_at_the_check_once(
        monkeypatch: pytest.MonkeyPatch, checks: tuple[bool, ...], profiled: int) -> None:
    """Control flow only (fakes for the models, the sweep and the check); the real
    counterpart is `make demo` itself, whose log shows each decision."""
    import planner.demo as demo

    calls: list[str] = []
    answers = iter(checks)
    monkeypatch.setattr(demo, "ensure_models", lambda: [Path("m.gguf")])
    monkeypatch.setattr(demo, "ensure_profiles", lambda paths, say: calls.append("profile"))
    monkeypatch.setattr(demo, "check_profiles",
                        lambda inst, say: calls.append("check") or next(answers))
    said: list[str] = []
    demo.prepare_profiles(Path("instances/cpu-demo.json"), said.append)
    assert calls.count("profile") == profiled and calls.count("check") == len(checks)
    assert any("re-profiling what still drifts" in s for s in said) == (profiled == 2)


@pytest.mark.parametrize("probes, matches, runs", [
    ((0.0100,), True, 1),                 # within the limit: probed once
    ((0.0085, 0.0099), True, 2),          # one worker 18% off, a fresh one agrees: matches
    ((0.0085, 0.0086), False, 2),         # both workers off: the drift stands
])
def test_a_drifting_decode_probe_is_confirmed_in_a_fresh_worker(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        probes: tuple[float, ...], matches: bool, runs: int) -> None:
    """`planner profile check`: a decode probe beyond the 10% limit is repeated in a new
    worker process, and the probe nearer the profile is kept (one process's probe was
    seen 17% off while replays minutes later ran within 2%). Fake engine and probe; the
    real probe runs in `test_profile_check_cli_on_a_fresh_profile`."""
    import planner.machine as machine
    import profiler.engine as engine_mod
    from tests.test_checker import instance

    class FakeProfile:
        device_kind = "cpu"

        def __init__(self) -> None:
            self.doc = {"fingerprint": HERE, "settings": {"threads": 1}}

        def has(self, q: str) -> bool:
            return q == "decode_s_per_token"

        def predict(self, q: str, **kw: Any) -> float:
            return 0.0100

    started: list[int] = []

    class FakeEngine:
        def __init__(self, threads: int) -> None:
            started.append(threads)

        def close(self) -> None:
            pass

    seq = list(probes)

    def probe(eng: Any, path: Any, ngl: int = 0, n_ctx: int = 256,
              reps: list[float] | None = None) -> float:
        v = seq.pop(0)
        if reps is not None:
            reps.extend([v, v])
        return v

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    inst = instance()
    inst = replace(inst, models=tuple(replace(m, gguf_path=str(gguf)) for m in inst.models))
    model = inst.models[0].id
    monkeypatch.setattr(machine, "used_profiles",
                        lambda i: {tmp_path / "p.json": (FakeProfile(), [model])})
    monkeypatch.setattr(machine, "fingerprint", lambda t: HERE)
    monkeypatch.setattr(machine, "decode_probe", probe)
    monkeypatch.setattr(machine, "_write_cache", lambda checks: None)
    monkeypatch.setattr(engine_mod, "Engine", FakeEngine)
    (c,) = machine.check_instance(inst)
    assert c.matches is matches
    assert len(started) == runs and not seq
    assert ("fresh worker" in c.note) is (runs == 2)
