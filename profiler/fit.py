"""Cost-function fits: physically motivated linear forms, cross-validated, stored as plain data.

Every fitted quantity has the form ``value = intercept + sum(coef_i * feature_i)``
over named features computed from a measurement's settings and the model's
architecture (:func:`derive_features`). Coefficients are non-negative where the
physics says so (more bytes or more tokens never take less time).

Fits use the median of each setting's repetitions, weighted by ``1/median^2`` so
the least squares minimise *relative* error (what MAPE measures). The held-out
error is leave-one-setting-out: each setting's median is predicted by a fit that
never saw that setting (with fewer than three settings, leave-one-row-out).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from profiler.models import GgufArch

FIT_FORM = "linear"

#: llama.cpp attends over the used KV cells rounded up to this many (its KV padding);
#: decode time steps with it, so decode is fitted against ``kv_cells``, not raw context.
KV_PAD = 256


def kv_cells(context: float) -> float:
    """KV cells a decode step at ``context`` cached tokens attends over (incl. its own)."""
    return float(math.ceil((context + 1) / KV_PAD) * KV_PAD)


@dataclass(frozen=True)
class QuantitySpec:
    """One fitted quantity: which measurement kind, which candidate features, its unit."""

    kind: str
    unit: str
    features: tuple[str, ...]
    positive: bool = True
    integer: bool = False
    doc: str = ""


#: The quantities a profile fits, by measurement ``kind``.
QUANTITIES: dict[str, QuantitySpec] = {q.kind: q for q in (
    # host weight bytes first: one model's GPU and host weight bytes add up to its whole
    # weight, so only one of them adds rank beyond the intercept, and only the host one
    # can take the positive slope (bytes read at host bandwidth per token) that a GPU
    # profile needs (with the GPU one first, its slope had to be negative, was clamped
    # to 0, and a model with its output layer on the host predicted as fast as one with
    # every layer on the GPU: measured 2x slower on an H200)
    QuantitySpec("decode_s_per_token", "s",
                 ("host_weight_bytes", "gpu_weight_bytes", "kv_cells", "kv_cells_x_host_frac"),
                 doc="a + c*host_weight_bytes (+ b*gpu_weight_bytes) + d*kv_cells, where "
                     "kv_cells = context+1 rounded up to the KV padding (256)"),
    QuantitySpec("prefill_s", "s",
                 ("prompt_tokens", "prompt_tokens_sq", "prompt_tokens_x_host_frac"),
                 doc="a + b*prompt + c*prompt^2 (attention)"),
    QuantitySpec("load_s", "s", ("gpu_weight_bytes", "n_ctx"),
                 doc="warm load (file in page cache): e + f*gpu_weight_bytes + g*n_ctx"),
    QuantitySpec("cold_load_s", "s", ("gpu_weight_bytes", "n_ctx"),
                 doc="cold load (file evicted from page cache)"),
    QuantitySpec("first_load_s", "s", ("gpu_weight_bytes", "n_ctx"),
                 doc="first load in a fresh worker process, file in the page cache"),
    QuantitySpec("busy_load_s", "s", ("gpu_weight_bytes", "n_ctx"),
                 doc="warm load while another engine on the host decodes"),
    QuantitySpec("unload_s", "s", ("gpu_weight_bytes", "n_ctx")),
    QuantitySpec("kv_save_s", "s", ("bytes",), doc="g + h*state_bytes"),
    QuantitySpec("kv_restore_s", "s", ("bytes",), doc="g + h*state_bytes"),
    QuantitySpec("busy_kv_save_s", "s", ("bytes",),
                 doc="kv_save_s while another engine on the host decodes"),
    QuantitySpec("busy_kv_restore_s", "s", ("bytes",),
                 doc="kv_restore_s while another engine on the host decodes"),
    QuantitySpec("kv_bytes", "bytes", ("context",), integer=True, doc="state bytes vs context"),
    QuantitySpec("host_bytes", "bytes", ("host_weight_bytes", "host_kv_bytes", "n_ctx"),
                 integer=True, doc="worker RSS while resident"),
    QuantitySpec("gpu_bytes", "bytes", ("gpu_weight_bytes", "gpu_kv_bytes"), integer=True,
                 doc="NVML per-process GPU memory while resident"),
)}


def derive_features(point: Mapping[str, float], arch: GgufArch | None) -> dict[str, float]:
    """All named features of one setting.

    ``point`` holds raw settings: ``n_gpu_layers``, ``n_ctx``, ``context``,
    ``prompt_tokens``, ``bytes`` (missing ones count as 0).
    """
    ngl = float(point.get("n_gpu_layers", 0) or 0)
    n_ctx = float(point.get("n_ctx", 0) or 0)
    ctx = float(point.get("context", 0) or 0)
    prompt = float(point.get("prompt_tokens", 0) or 0)
    out = {"n_gpu_layers": ngl, "n_ctx": n_ctx, "context": ctx, "prompt_tokens": prompt,
           "prompt_tokens_sq": prompt * prompt, "bytes": float(point.get("bytes", 0) or 0)}
    if arch is not None:
        n_layers = arch.n_layers
        on_gpu = min(ngl, n_layers)
        gpu_w = on_gpu * arch.layer_bytes + (arch.other_bytes if ngl > n_layers else 0.0)
        host_frac = 1.0 - on_gpu / n_layers
        kv_all = n_ctx * arch.kv_bytes_per_token
    else:
        gpu_w, host_frac, kv_all = 0.0, 1.0, 0.0
    weight = float(arch.weight_bytes) if arch is not None else 0.0
    out.update(gpu_weight_bytes=gpu_w, host_weight_bytes=weight - gpu_w,
               host_frac=host_frac, context_x_host_frac=ctx * host_frac,
               kv_cells=kv_cells(ctx), kv_cells_x_host_frac=kv_cells(ctx) * host_frac,
               prompt_tokens_x_host_frac=prompt * host_frac,
               gpu_kv_bytes=kv_all * (1 - host_frac), host_kv_bytes=kv_all * host_frac)
    return out


@dataclass(frozen=True)
class LinearFit:
    """A fitted cost function as plain data; :meth:`predict` evaluates it."""

    quantity: str
    unit: str
    features: tuple[str, ...]
    coefficients: tuple[float, ...]
    intercept: float
    form: str = FIT_FORM
    cv: dict[str, Any] = field(default_factory=dict)
    train_mape: float | None = None
    n_settings: int = 0
    n_rows: int = 0
    dropped: tuple[str, ...] = ()
    doc: str = ""

    def predict(self, features: Mapping[str, float]) -> float:
        """Evaluate at a feature mapping (as made by :func:`derive_features`)."""
        return float(self.intercept + sum(c * float(features[f])
                                          for f, c in zip(self.features, self.coefficients,
                                                          strict=True)))

    def coefficient(self, feature: str) -> float:
        return dict(zip(self.features, self.coefficients, strict=True)).get(feature, 0.0)

    def to_json(self) -> dict[str, Any]:
        return {"quantity": self.quantity, "form": self.form, "unit": self.unit,
                "expression": self.expression(), "features": list(self.features),
                "coefficients": list(self.coefficients), "intercept": self.intercept,
                "cv": self.cv, "train_mape": self.train_mape, "n_settings": self.n_settings,
                "n_rows": self.n_rows, "dropped_features": list(self.dropped), "doc": self.doc}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LinearFit:
        if d.get("form", FIT_FORM) != FIT_FORM:
            raise ValueError(f"unknown fit form {d.get('form')!r}")
        return cls(quantity=d["quantity"], unit=d.get("unit", ""),
                   features=tuple(d["features"]),
                   coefficients=tuple(float(c) for c in d["coefficients"]),
                   intercept=float(d["intercept"]), cv=dict(d.get("cv", {})),
                   train_mape=d.get("train_mape"), n_settings=int(d.get("n_settings", 0)),
                   n_rows=int(d.get("n_rows", 0)), dropped=tuple(d.get("dropped_features", ())),
                   doc=d.get("doc", ""))

    def expression(self) -> str:
        terms = [f"{self.intercept:.6g}"] + [f"{c:.6g}*{f}" for f, c in
                                             zip(self.features, self.coefficients, strict=True)]
        return f"{self.quantity} = " + " + ".join(terms)


def _select_features(x: np.ndarray, names: tuple[str, ...]) -> list[int]:
    """Columns that add rank beyond the intercept and the columns kept before them."""
    kept: list[int] = []
    if x.shape[0] == 0:
        return kept
    base = [np.ones(x.shape[0])]
    for j in range(x.shape[1]):
        col = x[:, j]
        scale = float(np.max(np.abs(col))) or 1.0
        trial = np.column_stack([*base, col / scale])
        if np.linalg.matrix_rank(trial, tol=1e-9 * trial.shape[0]) == trial.shape[1]:
            base.append(col / scale)
            kept.append(j)
    return kept


def _fit_weighted(x: np.ndarray, y: np.ndarray, positive: bool) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LinearRegression

    if x.shape[1] == 0:
        w = 1.0 / np.maximum(np.abs(y), 1e-12) ** 2
        return np.zeros(0), float(np.sum(w * y) / np.sum(w))
    scale = np.max(np.abs(x), axis=0)
    scale[scale == 0] = 1.0
    reg = LinearRegression(positive=positive)
    reg.fit(x / scale, y, sample_weight=1.0 / np.maximum(np.abs(y), 1e-12) ** 2)
    return np.asarray(reg.coef_, dtype=float) / scale, float(reg.intercept_)


def _mape(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - y) / np.maximum(np.abs(y), 1e-12)))


def fit_quantity(spec: QuantitySpec, rows: Iterable[Mapping[str, Any]],
                 arch: GgufArch | None) -> LinearFit | None:
    """Fit one quantity from measurement rows of its kind (``None`` if there are none).

    Rows need ``setting`` (the group id), ``value`` and the raw settings.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r["kind"] == spec.kind:
            groups.setdefault(str(r["setting"]), []).append(r)
    if not groups:
        return None
    keys = sorted(groups)
    feats = []
    ys = []
    row_feats = []
    row_ys = []
    row_group = []
    for gi, k in enumerate(keys):
        g = groups[k]
        f = [derive_features(r, arch) for r in g]
        feats.append([float(np.mean([fr[n] for fr in f])) for n in spec.features])
        ys.append(float(np.median([float(r["value"]) for r in g])))
        for fr, r in zip(f, g, strict=True):
            row_feats.append([fr[n] for n in spec.features])
            row_ys.append(float(r["value"]))
            row_group.append(gi)
    x = np.asarray(feats, dtype=float)
    y = np.asarray(ys, dtype=float)
    kept = _select_features(x, spec.features) if len(keys) > 1 else []
    xk = x[:, kept]
    coef, icpt = _fit_weighted(xk, y, spec.positive)
    xr = np.asarray(row_feats, dtype=float)[:, kept]
    yr = np.asarray(row_ys, dtype=float)
    train = _mape(xr @ coef + icpt, yr)

    cv: dict[str, Any]
    if len(keys) >= 3:
        preds = np.empty(len(keys))
        for i in range(len(keys)):
            mask = np.arange(len(keys)) != i
            kk = _select_features(x[mask], spec.features)
            c, b = _fit_weighted(x[mask][:, kk], y[mask], spec.positive)
            preds[i] = float(x[i, kk] @ c + b)
        cv = {"method": "leave-one-setting-out", "target": "setting median",
              "mape": _mape(preds, y), "max_ape": float(np.max(np.abs(preds - y) / np.abs(y))),
              "n_folds": len(keys)}
    elif len(yr) >= 3:
        # one or two settings: hold out single repetitions against the rest's median
        preds = np.array([np.median(np.delete(yr, i)) for i in range(len(yr))])
        cv = {"method": "leave-one-row-out (constant)", "target": "row",
              "mape": _mape(preds, yr), "max_ape": float(np.max(np.abs(preds - yr) / np.abs(yr))),
              "n_folds": len(yr)}
        if kept:
            cv["note"] = "fewer than 3 settings: the held-out error ignores the features"
    else:
        cv = {"method": "none", "mape": None, "note": "fewer than 3 measurements"}
    return LinearFit(
        quantity=spec.kind, unit=spec.unit, features=tuple(spec.features[j] for j in kept),
        coefficients=tuple(float(c) for c in coef), intercept=icpt, cv=cv, train_mape=train,
        n_settings=len(keys), n_rows=len(yr),
        dropped=tuple(n for j, n in enumerate(spec.features) if j not in kept), doc=spec.doc)


def fit_all(rows: Sequence[Mapping[str, Any]], arch: GgufArch | None) -> dict[str, LinearFit]:
    """Fit every quantity that has measurements."""
    out: dict[str, LinearFit] = {}
    for spec in QUANTITIES.values():
        fit = fit_quantity(spec, rows, arch)
        if fit is not None:
            out[spec.kind] = fit
    return out
