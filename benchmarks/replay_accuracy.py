"""Replay accuracy on CPU instances: predicted against measured on real llama.cpp engines.

For the CPU demo and for freshly generated CPU instances (new seeds and loads,
never seen during development), solve, replay with `planner execute`, and print
each action kind's and request completion's median and 90th-percentile
|measured - predicted| / measured.

Run by hand (not in CI), after `make demo` (models and profiles in place):

    .venv/bin/python benchmarks/replay_accuracy.py --seeds 101 102 --rate 0.25
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PLANNER = str(Path(sys.executable).with_name("planner"))


def sh(*args: str) -> None:
    subprocess.run([PLANNER, *args], check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[101, 102])
    ap.add_argument("--rate", type=float, default=0.25, help="arrivals/s, all models together")
    ap.add_argument("--solver", default="cp-sat")
    ap.add_argument("--time-limit", default="20")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/replay"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cases = [("cpu-demo", Path("instances/cpu-demo.json"))]
    for seed in args.seeds:
        inst = args.out / f"cpu-seed{seed}.json"
        sh("instance", "generate", "--like", "instances/cpu-demo.json", "--rate",
           str(args.rate / 3), "--duration", "60", "--prompt-median", "96",
           "--output-median", "32", "--max-prompt", "384", "--max-output", "96",
           "--seed", str(seed), "-o", str(inst))
        cases.append((inst.stem, inst))
    print("| instance | requests | solver | completion median | completion p90 | "
          "run median / p90 | load median / p90 | kv_save median | peak host MiB pred / meas |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, inst in cases:
        plan = args.out / f"{name}.plan.json"
        rep = args.out / f"{name}.report.json"
        sh("solve", str(inst), "--solver", args.solver, "--time-limit", args.time_limit,
           "-o", str(plan))
        sh("execute", str(plan), "--instance", str(inst), "-o", str(rep))
        r = json.loads(rep.read_text())
        s = r["summary"]

        def pct(k: str, q: str, s: dict = s) -> str:  # type: ignore[type-arg]
            v = s[k][q]
            return "-" if v is None else f"{100 * v:.1f}%"

        dev = next(d for d in r["devices"] if d.get("predicted_peak_host_bytes"))
        print(f"| {name} | {len(r['requests'])} | {args.solver} | {pct('completion', 'median')}"
              f" | {pct('completion', 'p90')} | {pct('run', 'median')} / {pct('run', 'p90')} | "
              f"{pct('load', 'median')} / {pct('load', 'p90')} | {pct('kv_save', 'median')} | "
              f"{dev['predicted_peak_host_bytes'] / 2**20:.0f} / "
              f"{dev.get('measured_peak_host_bytes', 0) / 2**20:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
