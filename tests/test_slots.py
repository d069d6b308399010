"""Parallel slots (profiler.batch): the step-time fit, and the real batched engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from profiler.batch import (
    BATCH_QUANTITY,
    BatchConfig,
    batch_settings,
    fit_batch,
    predict_step,
    step_features,
)


def _rows(coef: dict[str, float], noise: float = 0.0, seed: int = 0) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for k, depth, p in batch_settings(BatchConfig.quick()):
        f = step_features(k, depth, p)
        value = coef["a"] + sum(coef[n] * f[n] for n in f)
        for rep in range(3):
            rows.append({"kind": BATCH_QUANTITY, "setting": f"s{k}:{depth}:{p}", "active": k,
                         "depth": depth, "prompt_tokens": p, "batch_tokens": f["batch_tokens"],
                         "n_outputs": f["n_outputs"], "attn_cells": f["attn_cells"],
                         "value": value * (1 + noise * rng.standard_normal()), "repetition": rep})
    return rows


COEF = {"a": 0.006, "batched": 0.008, "wide": 0.003, "batch_tokens": 0.004, "n_outputs": 0.001,
        "attn_cells": 2e-8}


def test_fit_recovers_a_known_step_model() -> None:
    fit = fit_batch(_rows(COEF))
    assert fit is not None
    assert fit.cv["method"] == "leave-one-setting-out" and fit.cv["mape"] < 1e-6
    for k, d, p in ((3, 100, 0), (6, 700, 0), (5, 40, 200)):
        f = step_features(k, d, p)
        truth = COEF["a"] + sum(COEF[n] * f[n] for n in f)
        assert predict_step(fit.to_json(), k, d, p) == pytest.approx(truth, rel=1e-6)


def test_fit_held_out_error_reflects_noise() -> None:
    fit = fit_batch(_rows(COEF, noise=0.05, seed=1))
    assert fit is not None
    assert 0.001 < fit.cv["mape"] < 0.2


def test_step_features_grow_with_slots_and_context() -> None:
    one, four = step_features(1, 100), step_features(4, 100)
    assert one["batched"] == 0 and four["batched"] == 1
    # wider than 8 tokens: llama.cpp's CUDA backend leaves its batched matrix-vector kernels
    assert four["wide"] == 0 and step_features(8, 100)["wide"] == 0
    assert step_features(9, 100)["wide"] == 1 and step_features(1, 100, 16)["wide"] == 1
    assert four["attn_cells"] > one["attn_cells"]
    assert step_features(4, 1000)["attn_cells"] > four["attn_cells"]
    mixed = step_features(3, 100, 64)
    assert mixed["batch_tokens"] == 67 and mixed["n_outputs"] == 4


def test_settings_cover_active_counts_and_joining_prompts() -> None:
    s = batch_settings(BatchConfig.quick())
    assert {k for k, _d, p in s if p == 0} == {1, 2, 4, 8}
    assert {k for k, _d, p in s if p > 0} == {1, 3, 7}


# --------------------------------------------------------------------------- real engine


@pytest.mark.engine
def test_batched_engine_matches_serial_greedy_tokens() -> None:
    """Two sequences decoded together give the tokens each gives alone; a third joins
    while they decode, and the shortest leaves first. The prompts are lists the model
    continues with a wide margin (counting, weekdays, the alphabet): batched and serial
    steps run different CPU kernels (a many-row matrix product against a one-row one),
    so near-ties may break differently on some CPUs (an AVX2-only EPYC flipped one
    token of synthetic prompts), while a batch that mixed up sequences would not
    continue each list. The weekdays stop after " Friday,": with the AMX-safe
    kernels (extra buffer types off) the next token is " Saturday" by 0.13 logits
    over " and", and a token-by-token prefill flips it even on the serial engine."""
    pytest.importorskip("llama_cpp")
    from profiler.batch import BatchEngine
    from profiler.engine import Engine
    from profiler.models import ModelSourceError, fetch_smollm2

    try:
        model: Path = fetch_smollm2()
    except ModelSourceError as exc:
        pytest.skip(str(exc))
    with Engine(threads=1) as ser, BatchEngine(threads=1) as eng:
        ser.load(model, n_ctx=256)
        p0 = ser.tokenize(", ".join(str(i) for i in range(1, 15)) + ",")
        p1 = ser.tokenize("Monday, Tuesday, Wednesday, Thursday,")
        p2 = ser.tokenize("A B C D E F G H I J K L M")
        info = eng.batch_load(model, n_ctx=256, n_parallel=3)
        assert info["n_ctx"] == 3 * 256  # KV cells of all slots
        # the slot context loads with the engine's extra-buffer setting (off on AMX
        # CPUs, where the AMX path crashes the worker); it once bypassed the switch
        assert info["extra_bufts"] is eng.extra_bufts
        eng.batch_add(0, p0, 12)
        eng.batch_add(1, p1, 2)  # " Friday,": the third token is a near tie (below)
        r = eng.batch_step()
        assert r.finished == (1,) and r.steps[0].prompt_tokens == len(p0) + len(p1)
        assert r.steps[1].decode_tokens == 2
        got1 = eng.batch_tokens(1)
        eng.batch_remove(1)
        eng.batch_add(2, p2, 3)  # joins while slot 0 decodes
        r = eng.batch_step()
        assert r.finished == (2,)
        assert r.steps[0].decode_tokens == 1 and r.steps[0].prompt_tokens == len(p2)
        got2 = eng.batch_tokens(2)
        eng.batch_remove(2)
        r = eng.batch_step()
        assert r.finished == (0,)
        got0 = eng.batch_tokens(0)
        for prompt, n, got in ((p0, 12, got0), (p1, 2, got1), (p2, 3, got2)):
            ser.reset()
            ser.prefill(prompt)
            assert list(ser.decode(n).tokens) == got
