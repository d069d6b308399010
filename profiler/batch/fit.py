"""Step-time features and the fit of batched decode steps (see :mod:`profiler.batch`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from profiler.fit import KV_PAD, LinearFit, _fit_weighted, _mape, _select_features

BATCH_QUANTITY = "batch_step_s"
BATCH_FEATURES = ("batched", "wide", "batch_tokens", "n_outputs", "attn_cells")
#: batch tokens up to which llama.cpp's CUDA backend multiplies quantized and float
#: weights with its batched matrix-vector kernels (MMVQ_MAX_BATCH_SIZE and
#: MMVF_MAX_BATCH_SIZE in ggml-cuda); wider batches go to matrix-matrix kernels
NARROW_BATCH = 8
BATCH_DOC = ("seconds of one llama_decode over a batch of several sequences: a + "
             "e*batched + w*wide + b*batch_tokens + c*n_outputs + d*attn_cells; batched = 1 "
             "when the batch holds more than one token (matrix-matrix kernels instead of "
             "matrix-vector on a CPU), wide = 1 when it holds more than 8 (where llama.cpp's "
             "CUDA backend leaves its batched matrix-vector kernels: on an H200 a step of 8 "
             "decoding sequences took 2.1 ms, one with a 16-token prompt beside a single "
             "sequence 2.7), attn_cells = batch_tokens times the unified cache's used cells "
             "(cached tokens of all slots after the step, rounded up to the KV padding)")
#: columns of the batch measurement journal (``<build>.batch.csv``)
BATCH_COLUMNS = ("kind", "setting", "n_gpu_layers", "n_ctx", "n_parallel", "active", "depth",
                 "prompt_tokens", "attn_cells", "batch_tokens", "n_outputs", "threads",
                 "repetition", "value", "unit", "timestamp")


def slot_cells(cached: float) -> float:
    """KV cells one slot's attention reads with ``cached`` tokens (after the step)."""
    return float(math.ceil(max(cached, 1) / KV_PAD) * KV_PAD)


def batch_features(batch_tokens: float, n_outputs: float, attn_cells: float
                   ) -> dict[str, float]:
    """Features of one step: tokens in the batch, rows of logits, attention cells."""
    return {"batched": 1.0 if batch_tokens > 1 else 0.0,
            "wide": 1.0 if batch_tokens > NARROW_BATCH else 0.0,
            "batch_tokens": float(batch_tokens), "n_outputs": float(n_outputs),
            "attn_cells": float(attn_cells)}


def step_features(active: int, depth: float, prompt_tokens: int = 0,
                  prompt_context: int = 0) -> dict[str, float]:
    """A step with ``active`` decoding sequences at ``depth`` cached tokens each, plus
    (``prompt_tokens > 0``) one joining prompt prefilled in the same batch (after
    ``prompt_context`` tokens already in its slot: a recompute)."""
    tokens = active + prompt_tokens
    outputs = active + (1 if prompt_tokens else 0)
    cached = active * (depth + 1) + (prompt_context + prompt_tokens if prompt_tokens else 0)
    return batch_features(tokens, outputs, tokens * slot_cells(cached))


# --------------------------------------------------------------------------- fit


def _row_features(r: Mapping[str, Any]) -> dict[str, float]:
    return batch_features(float(r["batch_tokens"]), float(r["n_outputs"]),
                          float(r["attn_cells"]))


def fit_batch(rows: Sequence[Mapping[str, Any]]) -> LinearFit | None:
    """Fit :data:`BATCH_QUANTITY` on setting medians (weights 1/median^2), with a
    leave-one-setting-out held-out MAPE, as :func:`profiler.fit.fit_quantity` does."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r["kind"] == BATCH_QUANTITY:
            groups.setdefault(str(r["setting"]), []).append(r)
    if len(groups) < 3:
        return None
    keys = sorted(groups)
    x = np.array([[float(np.mean([_row_features(r)[f] for r in groups[k]]))
                   for f in BATCH_FEATURES] for k in keys])
    y = np.array([float(np.median([float(r["value"]) for r in groups[k]])) for k in keys])
    kept = _select_features(x, BATCH_FEATURES)
    coef, icpt = _fit_weighted(x[:, kept], y, True)
    xr = np.array([[_row_features(r)[f] for f in BATCH_FEATURES] for k in keys
                   for r in groups[k]])[:, kept]
    yr = np.array([float(r["value"]) for k in keys for r in groups[k]])
    preds = np.empty(len(keys))
    for i in range(len(keys)):
        mask = np.arange(len(keys)) != i
        kk = _select_features(x[mask], BATCH_FEATURES)
        c, b = _fit_weighted(x[mask][:, kk], y[mask], True)
        preds[i] = float(x[i, kk] @ c + b)
    ape = np.abs(preds - y) / np.abs(y)
    cv = {"method": "leave-one-setting-out", "target": "setting median",
          "mape": float(np.mean(ape)), "max_ape": float(np.max(ape)), "n_folds": len(keys)}
    return LinearFit(quantity=BATCH_QUANTITY, unit="s",
                     features=tuple(BATCH_FEATURES[j] for j in kept),
                     coefficients=tuple(float(c) for c in coef), intercept=icpt, cv=cv,
                     train_mape=_mape(xr @ coef + icpt, yr), n_settings=len(keys),
                     n_rows=len(yr),
                     dropped=tuple(n for j, n in enumerate(BATCH_FEATURES) if j not in kept),
                     doc=BATCH_DOC)


def predict_step(fit: LinearFit | Mapping[str, Any], active: int, depth: float,
                 prompt_tokens: int = 0) -> float:
    """Seconds of one step with ``active`` decoding sequences at ``depth`` (and a joining
    prompt of ``prompt_tokens``), from a fit (or its JSON)."""
    f = fit if isinstance(fit, LinearFit) else LinearFit.from_json(fit)
    return max(1e-6, f.predict(step_features(active, depth, prompt_tokens)))
