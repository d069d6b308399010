"""Preemption study on this machine's llama.cpp engines (the study's Table II, reproduced).

Job A prefills a prompt and decodes; at several points it is preempted: its
state is saved to host RAM (KV save), its engine unloaded, job B loads and runs
on the same device, unloads, then A is reloaded, its state restored, and it
finishes. The overhead of one preemption is KV save + unload + reload + KV
restore (B's own work is not counted); the table gives the share of it spent
reloading (unload + load) and moving KV state.

Run by hand (not in CI):

    .venv/bin/python benchmarks/preemption.py                       # SmolLM2, cached
    .venv/bin/python benchmarks/preemption.py --model a.gguf --model b.gguf --threads 2

The study (arXiv 2605.19593) found 2.6 to 7.3 s per preemption, over 98.5% of
it reload, for 3B-14B F16 models on PCIe Gen4 GPUs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from profiler.engine import Engine
from profiler.models import resolve_model


def prompt_tokens(n: int) -> list[int]:
    return [10 + (7919 * i) % 20000 for i in range(n)]


def study(model: Path, other: Path, threads: int | None, prompt: int, output: int,
          points: list[int], reps: int) -> list[dict[str, float]]:
    rows = []
    with Engine(threads=threads) as a, Engine(threads=threads) as b:
        for point in points:
            for rep in range(reps):
                a.load(model, n_ctx=prompt + output + 16)
                a.prefill(prompt_tokens(prompt))
                a.decode(point)
                t = time.perf_counter()
                state = a.save_state()
                save_s = time.perf_counter() - t
                t = time.perf_counter()
                a.unload()
                unload_s = time.perf_counter() - t
                b.load(other, n_ctx=256)  # job B on the same device
                b.prefill(prompt_tokens(64))
                b.decode(16)
                b.unload()
                t = time.perf_counter()
                a.load(model, n_ctx=prompt + output + 16)
                reload_s = time.perf_counter() - t
                t = time.perf_counter()
                a.restore_state(state)
                restore_s = time.perf_counter() - t
                a.decode(output - point)
                a.unload()
                total = save_s + unload_s + reload_s + restore_s
                rows.append({"point": point, "rep": rep, "save_s": save_s, "unload_s": unload_s,
                             "reload_s": reload_s, "restore_s": restore_s, "total_s": total,
                             "kv_bytes": state.nbytes})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=[],
                    help="GGUF path or 'smollm2' (repeat) [default: smollm2]")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--output", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    models = [resolve_model(m) for m in (args.model or ["smollm2"])]
    other = resolve_model("smollm2")
    points = [args.output // 4, args.output // 2, 3 * args.output // 4]
    print("| model | file MB | preempted at token | KV state MB | overhead s (median) "
          "| reload share | KV save+restore share |")
    print("|---|---|---|---|---|---|---|")
    for m in models:
        rows = study(m, other, args.threads, args.prompt, args.output, points, args.reps)
        for p in points:
            sel = [r for r in rows if r["point"] == p]
            total = statistics.median(r["total_s"] for r in sel)
            reload = statistics.median((r["unload_s"] + r["reload_s"]) / r["total_s"] for r in sel)
            kv = statistics.median((r["save_s"] + r["restore_s"]) / r["total_s"] for r in sel)
            print(f"| {m.name} | {m.stat().st_size / 1e6:.0f} | {p} | "
                  f"{sel[0]['kv_bytes'] / 1e6:.1f} | {total:.3f} | {100 * reload:.1f}% | "
                  f"{100 * kv:.1f}% |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
