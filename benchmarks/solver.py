"""CP-SAT planner against the baselines over generated instances.

Sizes (clusters and model sets) x load levels (arrival rate per model) x seeds;
for each instance: the baselines, then ``solve_cpsat`` with a modest time limit.
Writes a CSV (one row per instance) and a PNG (objective ratio against each
baseline, gap, solve time).

    .venv/bin/python benchmarks/solver.py                     # the documented grid
    .venv/bin/python benchmarks/solver.py --quick             # a smoke run
    .venv/bin/python benchmarks/solver.py --out /tmp/bench --time-limit 20
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Any

from planner.checker import check_plan
from planner.costmodel import cost_model_for
from planner.generate import CLUSTERS, MIXED_MODELS, WorkloadSpec, build_instance
from planner.io import parse_instance
from planner.metrics import compute_metrics
from planner.service import SolveOptions, run_baselines
from planner.solver import solve_cpsat

SWAP_MODELS = ["llama3-8b-q4_k_m", "qwen2.5-14b-f16", "qwen3-8b-f16", "qwen2.5-3b-f16"]
REFS = ["llama3-8b-q4_k_m", "qwen3-32b-q4_k_m", "qwen2.5-3b-f16", "qwen3-8b-f16",
        "qwen2.5-14b-f16", "llama2-70b-q4_k_m"]

EIGHT_GPUS: dict[str, Any] = {"hosts": [
    {"id": f"srv{h}", "cpu": "threadripper-pro-5995wx", "threads": 128, "memory_gib": 512,
     "gpus": [{"id": f"srv{h}-gpu{g}", "type": "rtx-a6000" if h % 2 else "rtx-5000-ada",
               "memory_gib": 48 if h % 2 else 32} for g in range(2)]}
    for h in range(4)]}

# size name -> (cluster, model entries)
SIZES: dict[str, tuple[dict[str, Any], list[dict[str, str]]]] = {
    "1gpu-4models": (CLUSTERS["one-gpu"], [{"id": m, "reference": m} for m in SWAP_MODELS]),
    "4gpu-6models": (CLUSTERS["two-servers"], [{"id": m, "reference": m}
                                               for m in MIXED_MODELS]),
    "8gpu-16models": (EIGHT_GPUS, [{"id": f"m{i:02d}-{REFS[i % len(REFS)]}",
                                    "reference": REFS[i % len(REFS)]} for i in range(16)]),
}
# size -> load level -> requests per second per model
LOADS: dict[str, dict[str, float]] = {
    "1gpu-4models": {"low": 0.02, "high": 0.04},
    "4gpu-6models": {"low": 0.03, "high": 0.06},
    "8gpu-16models": {"high": 0.105},  # about 1,000 requests in 600 s
}


def make_instance(size: str, load: str, seed: int) -> dict[str, Any]:
    cluster, models = SIZES[size]
    rate = LOADS[size][load]
    spec = WorkloadSpec(rates={m["id"]: rate for m in models}, seed=seed)
    return build_instance(f"{size}-{load}-s{seed}", cluster, models, spec)


def run_one(size: str, load: str, seed: int, time_limit: float, workers: int) -> dict[str, Any]:
    inst = parse_instance(make_instance(size, load, seed), f"{size}-{load}-s{seed}",
                          Path("."), "")
    cost = cost_model_for(inst, "analytic")
    base = run_baselines(inst, cost)
    scheds = {k: v.schedule for k, v in base.items() if v.schedule is not None}
    t0 = time.perf_counter()
    sched, info = solve_cpsat(inst, cost, "mean_response",
                              SolveOptions(time_limit_s=time_limit, workers=workers), scheds)
    wall = time.perf_counter() - t0
    m = compute_metrics(inst, sched.actions)
    row: dict[str, Any] = {
        "size": size, "load": load, "seed": seed, "requests": len(inst.requests),
        "status": info.status, "objective_s": round(m.weighted_mean_response_s, 3),
        "bound_s": round(info.bound or 0.0, 3), "gap": round(info.gap or 0.0, 3),
        "solve_s": round(wall, 1), "time_limit_s": time_limit,
        "valid": not check_plan(inst, sched), "loads": m.n_loads,
        "kv_saves": m.n_kv_saves, "recomputes": m.n_recomputes,
    }
    for name, b in base.items():
        if b.metrics is None:
            row[f"{name}_s"] = ""
            row[f"ratio_{name}"] = ""
        else:
            row[f"{name}_s"] = round(b.metrics.weighted_mean_response_s, 3)
            row[f"ratio_{name}"] = round(m.weighted_mean_response_s
                                         / b.metrics.weighted_mean_response_s, 3)
    return row


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['size']}\n{r['load']} s{r['seed']}" for r in rows]
    x = range(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for name, marker in (("fcfs-lru", "o"), ("grouped", "s"), ("static", "^")):
        ys = [r[f"ratio_{name}"] if r[f"ratio_{name}"] != "" else float("nan") for r in rows]
        axes[0].plot(x, ys, marker, label=f"vs {name}")
    axes[0].axhline(0.7, color="grey", ls="--", lw=1, label="0.7 (acceptance)")
    axes[0].set_ylabel("CP-SAT / baseline, weighted mean response")
    axes[0].legend(fontsize=8)
    axes[1].bar(x, [r["gap"] for r in rows])
    axes[1].set_ylabel("gap to the valid lower bound")
    axes[2].bar(x, [r["solve_s"] for r in rows])
    axes[2].set_ylabel("solve time (s)")
    for ax in axes:
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, fontsize=7, rotation=45, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--time-limit", type=float, default=10.0,
                    help="per instance (the 8-GPU size gets 6x)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smallest size, one seed")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    sizes = ["1gpu-4models"] if args.quick else list(SIZES)
    for size in sizes:
        for load in LOADS[size]:
            seeds = 1 if args.quick or size == "8gpu-16models" else args.seeds
            for seed in range(1, seeds + 1):
                limit = args.time_limit * (6 if size == "8gpu-16models" else 1)
                row = run_one(size, load, seed, limit, args.workers)
                print(row, flush=True)
                rows.append(row)
    with (args.out / "solver.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, args.out / "solver.png")
    print(f"wrote {args.out / 'solver.csv'} and {args.out / 'solver.png'}")


if __name__ == "__main__":
    main()
