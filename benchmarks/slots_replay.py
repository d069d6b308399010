"""Parallel slots on CPU: plans with 2-4 slots replayed on real llama.cpp engines.

For generated CPU workloads with overlapping requests per model (the CPU demo's
three models and memory budget, new seeds), this solves with CP-SAT limited to
one slot per engine and with slots among 1/2/4 (`planner solve --slots`), and
runs fcfs-lru (Ollama) with OLLAMA_NUM_PARALLEL = 4; replays the slot plan with
`planner execute` (continuous batching in the engine workers) and prints the
weighted mean response of each plan (predicted) and the replay's per-request
response-time error, |measured - predicted| / measured, median and p90.

Run by hand under the shared lock, after `make demo` and
`benchmarks/slots_fit.py` (the demo profiles with their slot fits):

    flock /tmp/planner-cpu.lock .venv/bin/python benchmarks/slots_replay.py --seeds 201 202
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

PLANNER = str(Path(sys.executable).with_name("planner"))


def sh(*args: str) -> None:
    subprocess.run([PLANNER, *args], check=True, stdout=subprocess.DEVNULL)


def wmean(plan: Path) -> float:
    return float(json.loads(plan.read_text())["metrics"]["weighted_mean_response_s"])


def response_errors(report: dict[str, Any], arrival: dict[str, float]) -> list[float]:
    """|measured - predicted| / measured response time of every measured request."""
    errs = []
    for q in report["requests"]:
        if q["measured_completion_s"] is None:
            continue
        pred = q["predicted_completion_s"] - arrival[q["id"]]
        meas = q["measured_completion_s"] - arrival[q["id"]]
        errs.append(abs(meas - pred) / meas)
    return errs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[201, 202])
    ap.add_argument("--rate", type=float, default=0.6, help="arrivals/s, all models together")
    ap.add_argument("--duration", default="45")
    ap.add_argument("--time-limit", default="20")
    ap.add_argument("--slots", default="1,2,4")
    ap.add_argument("--replay-one-slot", action="store_true",
                    help="also replay the one-slot plan (measured weighted mean response)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/slots"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    top = max(int(x) for x in args.slots.split(","))
    print("| workload | requests | slots used | CP-SAT 1 slot | CP-SAT slots | change | "
          f"fcfs-lru {top} slots | response error median / p90 (CP-SAT plan) | "
          f"(fcfs-lru {top} slots) | measured wmean |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        inst = args.out / f"cpu-slots{seed}.json"
        sh("instance", "generate", "--like", "instances/cpu-demo.json", "--rate",
           str(args.rate / 3), "--duration", args.duration, "--prompt-median", "64",
           "--output-median", "48", "--max-prompt", "192", "--max-output", "96",
           "--seed", str(seed), "-o", str(inst))
        one = args.out / f"cpu-slots{seed}.one.json"
        multi = args.out / f"cpu-slots{seed}.multi.json"
        lru = args.out / f"cpu-slots{seed}.lru.json"
        sh("solve", str(inst), "--slots", "1", "--time-limit", args.time_limit, "-o", str(one))
        sh("solve", str(inst), "--slots", args.slots, "--time-limit", args.time_limit,
           "-o", str(multi))
        sh("solve", str(inst), "--solver", "fcfs-lru", "--slots", str(top), "-o", str(lru))
        plan = json.loads(multi.read_text())
        used = sorted({e.get("n_parallel", 1) for e in plan["engines"]})
        arrival = {q["id"]: q["arrival_s"] for q in json.loads(inst.read_text())["requests"]}
        rep = args.out / f"cpu-slots{seed}.multi.report.json"
        sh("execute", str(multi), "--instance", str(inst), "-o", str(rep))
        r = json.loads(rep.read_text())
        errs = response_errors(r, arrival)
        # the Ollama-like plan always runs its engines with `top` slots: its replay measures
        # the slot engines' predictions even where CP-SAT keeps one slot
        rep_l = args.out / f"cpu-slots{seed}.lru.report.json"
        sh("execute", str(lru), "--instance", str(inst), "-o", str(rep_l))
        errs_l = response_errors(json.loads(rep_l.read_text()), arrival)
        measured = (r["metrics"]["measured"] or {}).get("weighted_mean_response_s")
        if args.replay_one_slot:
            rep1 = args.out / f"cpu-slots{seed}.one.report.json"
            sh("execute", str(one), "--instance", str(inst), "-o", str(rep1))
            m1 = (json.loads(rep1.read_text())["metrics"]["measured"] or {}).get(
                "weighted_mean_response_s")
            measured_s = f"{measured:.2f} s (1 slot: {m1:.2f} s)"
        else:
            measured_s = f"{measured:.2f} s" if measured is not None else "-"
        w1, wm, wl = wmean(one), wmean(multi), wmean(lru)
        print(f"| seed {seed} | {len(arrival)} | {used} | {w1:.2f} s | {wm:.2f} s | "
              f"{100 * (wm / w1 - 1):+.0f}% | {wl:.2f} s | "
              f"{100 * np.median(errs):.1f}% / {100 * np.percentile(errs, 90):.1f}% | "
              f"{100 * np.median(errs_l):.1f}% / {100 * np.percentile(errs_l, 90):.1f}% | "
              f"{measured_s} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
