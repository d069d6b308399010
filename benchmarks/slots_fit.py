"""Parallel slots: batched decode step time against active sequences, and its fit.

For each profile folder given (default: the demo's, ``profiles/demo``), runs the
profile's slot step (:func:`profiler.batch.add_batch_profile`: a llama.cpp context
with ``n_seq_max`` slots, decode steps with 1/2/4/8 active sequences at two
context depths, and a prompt joining 1/3/7 decoding sequences), merges the fit
into the profile and prints its held-out MAPE (leave-one-setting-out) with the
measured step time per active count.

    flock /tmp/planner-cpu.lock .venv/bin/python benchmarks/slots_fit.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from profiler.batch import (
    BATCH_QUANTITY,
    BatchConfig,
    add_batch_profile,
    batch_journal,
    read_batch_rows,
)
from profiler.store import find_profiles, load_profile


def step_ms(rows: list[dict[str, Any]], threads: int | None = None) -> dict[int, float]:
    """Median decode step in ms per active count at the shallowest depth measured, no
    prompt joining (rows of ``threads`` llama.cpp threads only, where given)."""
    rows = [r for r in rows if threads is None or r["threads"] == threads]
    if not rows:
        return {}
    d0 = min(r["depth"] for r in rows)
    out = {}
    for k in sorted({r["active"] for r in rows}):
        v = [r["value"] for r in rows if r["active"] == k and r["depth"] == d0
             and r["prompt_tokens"] == 0]
        if v:
            out[k] = 1000 * statistics.median(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profiles", nargs="*", type=Path, default=[Path("profiles/demo")])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full", action="store_true", help="the full slot sweep (more depths)")
    ap.add_argument("--models", type=Path, default=Path.home() / ".cache/planner/models")
    args = ap.parse_args()
    cfg = BatchConfig.full() if args.full else BatchConfig.quick()
    print("| model | settings | held-out MAPE (max) | step ms at 1/2/4/8 active (shallowest) "
          "| wall |")
    print("|---|---|---|---|---|")
    for root in args.profiles:
        for path in find_profiles(root):
            prof = load_profile(path)
            if prof.doc.get("settings", {}).get("threads") != args.threads:
                continue
            model = args.models / prof.model_file
            if not model.is_file():
                print(f"skip {path}: {model} missing")
                continue
            csv_path = path.with_suffix(".csv")
            t0 = time.perf_counter()
            doc = add_batch_profile(model, csv_path, path, cfg, threads=args.threads,
                                    n_gpu_layers=int(prof.doc["settings"].get(
                                        "primary_n_gpu_layers", 0)))
            wall = time.perf_counter() - t0
            fit = doc["fits"][BATCH_QUANTITY]
            steps = step_ms(read_batch_rows(batch_journal(csv_path)), args.threads)
            ms = [f"{steps[k]:.1f}" if k in steps else "-" for k in cfg.actives]
            print(f"| {prof.model_key} | {fit['n_settings']} | {100 * fit['cv']['mape']:.1f}% "
                  f"({100 * fit['cv']['max_ape']:.1f}%) | {' / '.join(ms)} | {wall:.0f} s |")


if __name__ == "__main__":
    main()
