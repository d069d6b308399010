"""Show a profile: a rich table of its fits and a PNG of measured points with fitted curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from profiler.fit import derive_features
from profiler.store import Profile


def _fmt(value: float, unit: str) -> str:
    if unit == "bytes":
        return f"{value / 2**20:,.1f} MiB"
    if unit == "s":
        return f"{value * 1e3:,.2f} ms" if abs(value) < 1 else f"{value:,.3f} s"
    return f"{value:.4g}"


def fits_table(profile: Profile) -> Table:
    """One row per fitted quantity: form, held-out MAPE, a typical prediction."""
    d = profile.doc
    dev = d["device"]
    title = (f"{profile.model_key} on {dev['kind']} {dev['type']} ({d['build'].get('slug', '')})"
             + ("  [synthetic weights]" if profile.synthetic_weights else ""))
    t = Table(title=title)
    t.add_column("quantity", no_wrap=True)
    t.add_column("fit", overflow="fold")
    t.add_column("held-out MAPE", justify="right")
    t.add_column("settings", justify="right")
    t.add_column("median range", justify="right")
    by_kind: dict[str, list[float]] = {}
    for s in d.get("summary", []):
        by_kind.setdefault(s["kind"], []).append(float(s["median"]))
    for q, f in profile.fits.items():
        mape = f.cv.get("mape")
        meds = by_kind.get(q, [])
        rng = f"{_fmt(min(meds), f.unit)} .. {_fmt(max(meds), f.unit)}" if meds else ""
        t.add_row(q, f.expression().split(" = ", 1)[1],
                  "n/a" if mape is None else f"{100 * mape:.1f}%", str(f.n_settings), rng)
    return t


def _panel(ax: Any, profile: Profile, kind: str, xname: str, xlabel: str,
           scale: float = 1.0, ylabel: str = "") -> None:
    rows = [r for r in profile.rows() if r["kind"] == kind]
    if not rows:
        ax.set_visible(False)
        return
    fit = profile.fits.get(kind)
    xs = np.array([float(r[xname]) for r in rows])
    ys = np.array([float(r["value"]) for r in rows]) * scale
    ngls = sorted({int(r["n_gpu_layers"]) for r in rows})
    arch = profile.arch
    for ngl in ngls:
        m = np.array([int(r["n_gpu_layers"]) == ngl for r in rows])
        n_ctx = int(rows[int(np.argmax(m))]["n_ctx"])
        label = f"ngl={ngl}" if len(ngls) > 1 else "measured"
        pts = ax.plot(xs[m], ys[m], "o", ms=3, alpha=0.6, label=label)
        if fit is not None:
            grid = np.linspace(0, xs[m].max() * 1.05, 400)
            pred = [fit.predict(derive_features({"n_gpu_layers": ngl, "n_ctx": n_ctx,
                                                 xname: g}, arch)) * scale for g in grid]
            ax.plot(grid, pred, "-", color=pts[0].get_color(),
                    label="fit" if len(ngls) == 1 else None)
    title = kind
    if fit is not None and fit.cv.get("mape") is not None:
        title += f"  (held-out MAPE {100 * fit.cv['mape']:.1f}%)"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def plot_profile(profile: Profile, out: Path) -> Path:
    """Measured points and fitted curves, one panel per quantity, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    a = axes.ravel()
    _panel(a[0], profile, "decode_s_per_token", "context", "context tokens", 1e3,
           "ms per token")
    _panel(a[1], profile, "prefill_s", "prompt_tokens", "prompt tokens", 1.0, "s")
    _panel(a[2], profile, "kv_save_s", "bytes", "state bytes", 1e3, "ms")
    _panel(a[3], profile, "kv_restore_s", "bytes", "state bytes", 1e3, "ms")
    _panel(a[4], profile, "load_s", "n_ctx", "n_ctx", 1.0, "s (warm load)")
    _panel(a[5], profile, "host_bytes", "n_ctx", "n_ctx", 2**-20, "MiB (worker RSS)")
    dev = profile.doc["device"]
    fig.suptitle(f"{profile.model_key} on {dev['kind']} {dev['type']}"
                 + (" (synthetic weights)" if profile.synthetic_weights else ""))
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
