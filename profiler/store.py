"""The profile store: raw measurements (CSV, one row per measurement) and profile JSON.

Layout under a profiles directory::

    profiles/<model-key>/<device-slug>/<build-slug>.csv    raw measurements, appended row by row
    profiles/<model-key>/<device-slug>/<build-slug>.json   format "planner.profile/1"

The JSON embeds the measurements too (columns + rows) so one file is a whole
profile; the CSV is the crash-safe journal a sweep resumes from.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from profiler.atomic import write_text_atomic
from profiler.fit import LinearFit, derive_features, fit_all
from profiler.models import GgufArch

PROFILE_FORMAT = "planner.profile/1"

#: Columns of the measurement table, in order.
COLUMNS: tuple[str, ...] = (
    "kind", "setting", "n_gpu_layers", "n_ctx", "context", "prompt_tokens", "threads",
    "repetition", "value", "unit", "bytes", "source", "timestamp",
)
_INT_COLUMNS = ("n_gpu_layers", "n_ctx", "context", "prompt_tokens", "threads", "repetition",
                "bytes")


class ProfileError(ValueError):
    """A profile file is missing, malformed or of another format."""


def profile_paths(root: Path, model_key: str, device_slug: str, build_slug: str
                  ) -> tuple[Path, Path]:
    """``(csv_path, json_path)`` of one (model, device, build) profile."""
    base = Path(root) / model_key / device_slug
    return base / f"{build_slug}.csv", base / f"{build_slug}.json"


def set_aside(json_path: Path) -> list[Path]:
    """Move a profile aside (its JSON, its measurement journal and its slot journal) so
    that the next sweep measures afresh; returns where the files went."""
    json_path = Path(json_path)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for p in (json_path, json_path.with_suffix(".csv"), json_path.with_suffix(".batch.csv")):
        if p.is_file():
            dest = p.with_name(f"{p.stem}.stale-{stamp}{p.suffix}.old")
            p.replace(dest)
            moved.append(dest)
    return moved


def make_row(kind: str, value: float, unit: str, *, setting: str, n_gpu_layers: int = 0,
             n_ctx: int = 0, context: int = 0, prompt_tokens: int = 0, threads: int = 0,
             repetition: int = 0, nbytes: int = 0, source: str = "measured") -> dict[str, Any]:
    return {"kind": kind, "setting": setting, "n_gpu_layers": n_gpu_layers, "n_ctx": n_ctx,
            "context": context, "prompt_tokens": prompt_tokens, "threads": threads,
            "repetition": repetition, "value": value, "unit": unit, "bytes": nbytes,
            "source": source, "timestamp": round(time.time(), 3)}


class MeasurementLog:
    """Appends measurement rows to a CSV, flushing each row (survives Ctrl-C and crashes)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._f: IO[str] = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._w = csv.DictWriter(self._f, fieldnames=list(COLUMNS), extrasaction="ignore")
        if new:
            self._w.writeheader()
            self._f.flush()
        self.written = 0

    def write(self, row: Mapping[str, Any]) -> None:
        self._w.writerow(row)
        self._f.flush()
        self.written += 1

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> MeasurementLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_measurements(path: Path) -> list[dict[str, Any]]:
    """Rows of a measurement CSV with numeric columns parsed; a torn last line is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    with open(path, newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            try:
                row: dict[str, Any] = dict(raw)
                for c in _INT_COLUMNS:
                    row[c] = int(float(row.get(c) or 0))
                row["value"] = float(row["value"])
                row["timestamp"] = float(row.get("timestamp") or 0)
            except (TypeError, ValueError, KeyError):
                continue  # a row cut short by an interruption
            rows.append(row)
    return rows


def summarize(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Median and spread per (kind, setting)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["setting"]), []).append(r)
    out = []
    for (kind, setting), g in sorted(groups.items()):
        v = np.array([float(r["value"]) for r in g])
        first = g[0]
        out.append({
            "kind": kind, "setting": setting, "unit": first["unit"],
            "n_gpu_layers": first["n_gpu_layers"], "n_ctx": first["n_ctx"],
            "context": int(np.median([r["context"] for r in g])),
            "prompt_tokens": first["prompt_tokens"],
            "bytes": int(np.median([r["bytes"] for r in g])),
            "n": len(g), "median": float(np.median(v)), "p25": float(np.percentile(v, 25)),
            "p75": float(np.percentile(v, 75)), "min": float(v.min()), "max": float(v.max()),
            "rel_iqr": float((np.percentile(v, 75) - np.percentile(v, 25)) / np.median(v))
            if np.median(v) else 0.0,
        })
    return out


def build_profile(*, rows: list[dict[str, Any]], arch: GgufArch, device: Mapping[str, Any],
                  build: Mapping[str, Any], settings: Mapping[str, Any],
                  method: Mapping[str, Any], source: Mapping[str, Any],
                  measurements_file: str | None) -> dict[str, Any]:
    """Fit every quantity and assemble the profile JSON document."""
    fits = fit_all(rows, arch)
    return {
        "format": PROFILE_FORMAT,
        "model": {"key": arch.key, "file": arch.file, "name": arch.name, "aliases": arch.aliases,
                  "synthetic_weights": arch.synthetic_weights, "arch": arch.to_json()},
        "synthetic_weights": arch.synthetic_weights,
        "device": dict(device),
        "build": dict(build),
        "source": dict(source),
        "settings": dict(settings),
        "method": dict(method),
        "fits": {k: f.to_json() for k, f in fits.items()},
        "summary": summarize(rows),
        "measurements": {"file": measurements_file, "columns": list(COLUMNS),
                         "rows": [[r.get(c) for c in COLUMNS] for r in rows]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_profile(doc: Mapping[str, Any], path: Path) -> Path:
    """The profile at ``path``, written whole or not at all (an interrupted write
    leaves the old profile, if any)."""
    return write_text_atomic(path, json.dumps(doc, indent=1) + "\n")


@dataclass
class Profile:
    """A profile read back from JSON, with predictions from its fits."""

    doc: dict[str, Any]
    path: Path | None = None

    @property
    def model_key(self) -> str:
        return str(self.doc["model"]["key"])

    @property
    def model_file(self) -> str:
        return str(self.doc["model"].get("file", ""))

    @property
    def arch(self) -> GgufArch:
        return GgufArch.from_json(self.doc["model"]["arch"])

    @property
    def synthetic_weights(self) -> bool:
        return bool(self.doc.get("synthetic_weights", False))

    @property
    def device_kind(self) -> str:
        return str(self.doc["device"]["kind"])

    @property
    def device_type(self) -> str:
        return str(self.doc["device"]["type"])

    @property
    def fits(self) -> dict[str, LinearFit]:
        return {k: LinearFit.from_json(v) for k, v in self.doc.get("fits", {}).items()}

    def has(self, quantity: str) -> bool:
        return quantity in self.doc.get("fits", {})

    def predict(self, quantity: str, *, n_gpu_layers: int = 0, n_ctx: int = 0, context: int = 0,
                prompt_tokens: int = 0, nbytes: int = 0) -> float:
        """Evaluate the fitted ``quantity`` at one setting."""
        if not self.has(quantity):
            raise ProfileError(f"profile {self.path or self.model_key} has no fit for {quantity}")
        fit = LinearFit.from_json(self.doc["fits"][quantity])
        feats = derive_features({"n_gpu_layers": n_gpu_layers, "n_ctx": n_ctx,
                                 "context": context, "prompt_tokens": prompt_tokens,
                                 "bytes": nbytes}, self.arch)
        return fit.predict(feats)

    def rows(self) -> list[dict[str, Any]]:
        m = self.doc.get("measurements", {})
        cols = m.get("columns", [])
        return [dict(zip(cols, r, strict=True)) for r in m.get("rows", [])]


def load_profile(path: Path) -> Profile:
    """Read and check a profile JSON file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"profile not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ProfileError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != PROFILE_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ProfileError(f"{path}: format is {got!r}, expected {PROFILE_FORMAT!r}")
    for key in ("model", "device", "build", "fits"):
        if key not in doc:
            raise ProfileError(f"{path}: missing {key!r}")
    return Profile(doc, path)


def find_profiles(root: Path) -> list[Path]:
    """Every profile JSON under ``root`` (a file is returned as itself)."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.json") if not p.name.endswith(".tmp"))
