"""Large instances at short time limits: does `planner solve` write a CP-SAT plan, and how
good is it?

Five generated instances (165-479 requests, bursty arrivals, log-normal lengths; the
clusters and models of `instances/mixed.json` and `instances/swap.json`; mean response,
tardiness and SLO attainment) are solved at 8 and 15 s, as a user would run them. One CSV
row per solve: the status (UNKNOWN where the start plan was written without a CP-SAT
solution), the objective, the wall time and the start of the notes.

    .venv/bin/python benchmarks/short_limits.py --out /tmp/short
    .venv/bin/python benchmarks/short_limits.py --checkout /tmp/old --out /tmp/short-old

`--checkout DIR` runs the planner of another checkout (a `git worktree` of an older
commit) on the same instances, to compare before and after a change. These are the runs of
docs/solver.md, "A first solution late".
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: (name, `planner instance generate` arguments)
INSTANCES = [
    ("mixed-tardiness", "--like instances/mixed.json --rate 0.08 --duration 600 --seed 101 "
                        "--objective tardiness"),
    ("mixed-response-a", "--like instances/mixed.json --rate 0.1 --duration 600 --seed 102 "
                         "--objective mean_response"),
    ("mixed-response-b", "--like instances/mixed.json --rate 0.05 --duration 600 --seed 103 "
                         "--objective mean_response"),
    ("swap-tardiness", "--like instances/swap.json --rate 0.2 --duration 600 --seed 104 "
                       "--objective tardiness"),
    ("mixed-slo", "--like instances/mixed.json --rate 0.12 --duration 600 --seed 105 "
                  "--objective slo_attainment"),
]
COMMON = "--arrivals bursty --lengths lognormal"
LIMITS = (8, 15)


def planner(checkout: Path | None) -> list[str]:
    """The planner's CLI, from this checkout or another one (put first on sys.path)."""
    pre = f"import sys; sys.path.insert(0, {str(checkout)!r}); " if checkout else ""
    return [sys.executable, "-c", pre + "from planner.cli import main; main()"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/short-limits"))
    ap.add_argument("--checkout", type=Path, default=None,
                    help="another checkout's planner (e.g. a git worktree of an older commit)")
    args = ap.parse_args()
    args.out = args.out.resolve()  # the commands run in the repository's root
    args.out.mkdir(parents=True, exist_ok=True)
    cli = planner(args.checkout)
    rows = []
    for name, gen in INSTANCES:
        inst = args.out / f"{name}.json"
        subprocess.run([*cli, "instance", "generate", *gen.split(), *COMMON.split(),
                        "-o", str(inst)], check=True, cwd=ROOT, capture_output=True)
        n = len(json.loads(inst.read_text())["requests"])
        for limit in LIMITS:
            plan = args.out / f"{name}-{limit}s.plan.json"
            done = subprocess.run([*cli, "solve", str(inst), "--time-limit", str(limit),
                                   "-o", str(plan)], cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{name} {limit}s: exit {done.returncode}: {done.stderr[-300:]}")
                return 1
            s = json.loads(plan.read_text())["solver"]
            row = {"instance": name, "requests": n, "time_limit_s": limit,
                   "status": s["status"], "cp_sat_plan": not s["status"].startswith("UNKNOWN"),
                   "objective": s["objective_name"], "value": round(s["objective"], 4),
                   "wall_s": s["wall_s"], "notes": s["notes"][:120]}
            rows.append(row)
            print(f"{name:17s} n={n:<4d} {limit:>2d} s  {row['status'][:40]:40s} "
                  f"{row['objective']} {row['value']}  {row['wall_s']} s")
    with open(args.out / "short_limits.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{sum(r['cp_sat_plan'] for r in rows)} of {len(rows)} solves wrote a CP-SAT plan; "
          f"{args.out / 'short_limits.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
