"""Random workloads and `planner solve` options, each solve checked against what the
solver promises: a plan that `planner validate` passes, never worse than a baseline,
a bound on the right side of its objective, a CP-SAT plan rather than a written
baseline, and the time limit kept.

Each case draws a generator setting (`planner instance generate`: cluster, a subset
of the reference models, rate, duration, arrivals, lengths, objective) and solve
options (`--time-limit`, and one of `--no-cpu-engines`, `--no-preemption`,
`--no-polish`, `--slots 1,2`, `--workers 1` or none), runs both commands as a user
would, and writes one CSV row per case with what it found (`flags`: empty when
every property held). Faults are counted, not raised; it exits 1 if any case broke
a hard property (exit code, validation, bound, baseline, time).

    .venv/bin/python benchmarks/sweep.py                       # 30 cases, seed 1
    .venv/bin/python benchmarks/sweep.py --cases 60 --seed 2 --out /tmp/sweep
    .venv/bin/python benchmarks/sweep.py --extra '--slots 1,2' --extra '--slots 1,2,4'
    .venv/bin/python benchmarks/sweep.py --reference 20 --cluster instances/swap.json

`--reference S` solves each instance a second time (default options, `S` seconds) and
checks every bound against every plan without parallel slots: a bound is valid for the
instance, not only for the options or the search that gave it, so no plan of any solve
may pass it. `--cluster` names the clusters drawn from: the built-in `one-gpu` and
`two-servers` (the default), or an instance file whose cluster and models are copied
(`planner instance generate --like`). `--execute` replays each plan on a
cluster without GPUs with `planner execute` on this machine's real llama.cpp engines
(`--cluster instances/cpu-demo.json`, after `make demo` has made its models): every request
must be served and the host's measured memory stay within its budget; the response
time's prediction error is recorded.

    .venv/bin/python benchmarks/sweep.py --cluster instances/cpu-demo.json --execute

`--export` writes each plan's deployment with `planner export` to every target (and
llama-swap's legacy groups); an export that fails is a fault.

A `--slots 1,2` case that wrote a baseline (status UNKNOWN) is how the pairwise slot
lanes of engines that never fit together were found (docs/solver.md, "Compute lanes").
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["llama3-8b-q4_k_m", "qwen3-32b-q4_k_m", "llama2-70b-q4_k_m", "qwen2.5-3b-f16",
          "qwen3-8b-f16", "qwen2.5-14b-f16"]
METRIC = {"mean_response": "weighted_mean_response_s", "makespan": "makespan_s",
          "slo_attainment": "slo_attainment", "tardiness": "weighted_tardiness_s"}
EXTRAS = [[], [], ["--no-cpu-engines"], ["--no-preemption"], ["--no-polish"],
          ["--slots", "1,2"], ["--workers", "1"]]
#: seconds a solve may run past its limit (start-up, baselines' replay, writing)
OVERRUN_S = 6.0
#: relative slack for figures rounded in the plan file (metrics have 6 decimals)
ROUNDED = 1e-5


BUILT_IN = ("one-gpu", "two-servers")


def draw(rng: random.Random, extras: list[list[str]],
         clusters: tuple[str, ...] = BUILT_IN) -> tuple[list[str], list[str], str]:
    """(generator arguments, solve arguments, objective) for one case; ``clusters``:
    built-in names or instance files whose cluster and models are copied."""
    cluster = rng.choice(clusters)
    objective = rng.choice(["mean_response", "mean_response", "makespan", "slo_attainment",
                            "tardiness"])
    rate = rng.choice([0.002, 0.01, 0.03, 0.08, 0.2]) / (3 if cluster == "one-gpu" else 1)
    models = ",".join(rng.sample(MODELS, rng.randint(1, 6)))
    place = (["--cluster", cluster, "--models", models] if cluster in BUILT_IN
             else ["--like", cluster])
    gen = [*place, "--rate", str(rate), "--duration", str(rng.choice([30, 120, 600])),
           "--seed", str(rng.randrange(1000, 9999)), "--objective", objective,
           "--arrivals", rng.choice(["poisson", "bursty"]),
           "--lengths", rng.choice(["lognormal", "pareto"])]
    solve = ["--time-limit", str(rng.choice([3, 8, 15])), *rng.choice(extras)]
    return gen, solve, objective


def worse(a: float, b: float, maximise: bool) -> bool:
    """whether ``a`` is worse than ``b`` beyond rounding"""
    slack = ROUNDED * max(1.0, abs(b))
    return a < b - slack if maximise else a > b + slack


def check(plan: dict, objective: str, limit: float, wall: float) -> list[str]:
    """What the plan breaks of the solver's promises (empty: nothing)."""
    flags = []
    key, maximise = METRIC[objective], objective == "slo_attainment"
    value = plan["metrics"].get(key)
    for name, base in plan.get("baselines", {}).items():
        got = (base.get("metrics") or {}).get(key)
        if value is not None and got is not None and worse(value, got, maximise):
            flags.append(f"worse than {name} ({value} against {got})")
    bound = plan["solver"].get("bound")
    if value is not None and bound is not None and worse(bound, value, maximise):
        flags.append(f"bound {bound} past the plan's {value}")
    if wall > limit + OVERRUN_S:
        flags.append(f"ran {wall:.1f} s on a {limit:g} s limit")
    return flags


def slotless(plan: dict) -> bool:
    """whether no engine of the plan has parallel slots (the bounds' class of plans)"""
    return all(int(e.get("n_parallel", 1)) == 1 for e in plan.get("engines", []))


def cross_check(solves: list[tuple[dict, list[str]]], objective: str) -> list[str]:
    """Every solve's bound against every plan without slots, from any solve (each with
    the options it ran with): its own plan, and its baselines where it had no slots."""
    key, maximise = METRIC[objective], objective == "slo_attainment"
    plans: list[tuple[float, str]] = []
    for k, (plan, opts) in enumerate(solves):
        value = plan["metrics"].get(key)
        if value is not None and slotless(plan):
            plans.append((value, f"solve {k}'s plan"))
        if "--slots" not in opts:
            plans += [(b["metrics"][key], f"solve {k}'s {name}")
                      for name, b in plan.get("baselines", {}).items()
                      if (b.get("metrics") or {}).get(key) is not None]
    flags = []
    for k, (plan, _) in enumerate(solves):
        bound = plan["solver"].get("bound")
        if bound is None:
            continue
        for value, where in plans:
            if worse(bound, value, maximise):
                flags.append(f"solve {k}'s bound {bound} past {where} ({value})")
    return flags


def reference(planner: str, inst: Path, sol: Path, limit: float,
              solves: list[tuple[dict, list[str]]], objective: str) -> list[str]:
    """The reference solve (default options, ``limit`` seconds) and the cross check of
    every bound against every slotless plan; flags as :func:`check`'s."""
    opts = ["--time-limit", f"{limit:g}"]
    ran = subprocess.run([planner, "solve", str(inst), "-o", str(sol), *opts],
                         capture_output=True, text=True)
    if ran.returncode or "Traceback" in ran.stderr:
        return [f"reference solve exited {ran.returncode}: {ran.stderr.strip()[-300:]}"]
    return cross_check([*solves, (json.loads(sol.read_text()), opts)], objective)


def replay(planner: str, inst: Path, sol: Path, report: Path, max_s: float
           ) -> tuple[list[str], dict[str, object]]:
    """``planner execute`` of a plan whose cluster has no GPU (flags, CSV fields); plans
    longer than ``max_s`` are not replayed."""
    if any(h.get("gpus") for h in json.loads(inst.read_text())["cluster"]["hosts"]):
        return [], {}
    makespan = json.loads(sol.read_text())["metrics"]["makespan_s"]
    if makespan > max_s:
        return [], {"replay": f"skipped (makespan {makespan:.0f} s)"}
    t = time.perf_counter()
    ran = subprocess.run([planner, "execute", str(sol), "--instance", str(inst), "-o",
                          str(report)], capture_output=True, text=True)
    info: dict[str, object] = {"replay": f"{time.perf_counter() - t:.0f} s"}
    if ran.returncode or "Traceback" in ran.stderr:
        return [f"execute exited {ran.returncode}: {ran.stderr.strip()[-300:]}"], info
    rep = json.loads(report.read_text())
    flags = []
    left = [r["id"] for r in rep["requests"] if r["status"] != "done"]
    if left:
        flags.append(f"replay left {len(left)} requests undone ({', '.join(left[:3])})")
    for d in rep["devices"]:
        peak, budget = d.get("measured_peak_host_bytes"), d.get("budget_host_bytes")
        if peak is not None and budget is not None and peak > budget:
            flags.append(f"replay: {d['id']} held {peak} bytes over its {budget}")
    err = rep["summary"]["response"]
    info.update(response_err_p50=err["median"], response_err_p90=err["p90"])
    return flags, info


EXPORTS = [["--to", "llama-server"], ["--to", "llama-server-router"], ["--to", "llama-swap"],
           ["--to", "llama-swap", "--llama-swap-form", "groups"], ["--to", "ollama"],
           ["--to", "llama-cpp-python"]]


def export(planner: str, inst: Path, sol: Path, folder: Path) -> list[str]:
    """``planner export`` of the plan to every target; a flag per failed one."""
    flags = []
    for k, target in enumerate(EXPORTS):
        ran = subprocess.run([planner, "export", str(sol), "--instance", str(inst), "-o",
                              str(folder / str(k)), *target], capture_output=True, text=True)
        if ran.returncode or "Traceback" in ran.stderr:
            flags.append(f"export {' '.join(target[1:])} exited {ran.returncode}: "
                         f"{(ran.stdout + ran.stderr).strip()[-200:]}")
    return flags


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-requests", type=int, default=400,
                    help="cases whose instance has more requests are skipped")
    ap.add_argument("--extra", action="append", default=None,
                    help="solve flags to draw from instead of the built-in set (repeat; "
                         "'' for none), e.g. --extra '--slots 1,2' --extra=--no-polish (a "
                         "single flag needs the '=')")
    ap.add_argument("--reference", type=float, default=0.0, metavar="S",
                    help="also solve each instance with default options for S seconds and "
                         "check every bound against every plan without slots (0: off)")
    ap.add_argument("--cluster", action="append", default=None,
                    help="a cluster to draw from (repeat): one-gpu, two-servers (the "
                         "default: both) or an instance file, whose cluster and models "
                         "are copied")
    ap.add_argument("--execute", action="store_true",
                    help="replay each plan whose cluster has no GPU with `planner execute` "
                         "(real llama.cpp engines on this machine)")
    ap.add_argument("--export", action="store_true",
                    help="write each plan's deployment to every `planner export` target")
    ap.add_argument("--max-replay", type=float, default=180.0, metavar="S",
                    help="with --execute: plans whose makespan passes S seconds are not "
                         "replayed")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/sweep"),
                    help="folder for the instances, plans and sweep.csv")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    planner = str(Path(sys.executable).with_name("planner"))
    rng = random.Random(args.seed)
    extras = EXTRAS if args.extra is None else [x.split() for x in args.extra]
    clusters = tuple(args.cluster or BUILT_IN)
    for c in clusters:
        if c not in BUILT_IN and not Path(c).is_file():
            ap.error(f"--cluster {c}: neither {' nor '.join(BUILT_IN)} nor an instance file")
    rows, faults = [], 0
    for k in range(args.cases):
        gen, opts, objective = draw(rng, extras, clusters)
        inst, sol = out / f"i{k}.json", out / f"s{k}.json"
        made = subprocess.run([planner, "instance", "generate", "-o", str(inst), *gen],
                              capture_output=True, text=True)
        row: dict[str, object] = {"case": k, "generate": " ".join(gen),
                                  "solve": " ".join(opts), "objective": objective}
        if made.returncode:
            row["flags"] = f"generate exited {made.returncode}: {made.stderr.strip()[-300:]}"
            faults += 1
            rows.append(row)
            continue
        n = len(json.loads(inst.read_text())["requests"])
        row["requests"] = n
        if n == 0 or n > args.max_requests:
            row["flags"] = "skipped"
            rows.append(row)
            continue
        t = time.perf_counter()
        ran = subprocess.run([planner, "solve", str(inst), "-o", str(sol), *opts],
                             capture_output=True, text=True)
        row["wall_s"] = round(time.perf_counter() - t, 1)
        flags = []
        if ran.returncode or "Traceback" in ran.stderr:
            flags.append(f"solve exited {ran.returncode}: {ran.stderr.strip()[-300:]}")
        else:
            plan = json.loads(sol.read_text())
            row.update(status=plan["solver"]["status"], objective_value=plan["solver"]["objective"],
                       bound=plan["solver"].get("bound"), gap=plan["solver"].get("gap"))
            flags += check(plan, objective, float(opts[1]), float(row["wall_s"]))
            valid = subprocess.run([planner, "validate", str(sol), "--instance", str(inst)],
                                   capture_output=True, text=True)
            if valid.returncode:
                flags.append(f"validate: {(valid.stdout + valid.stderr).strip()[-300:]}")
            if args.reference > 0:
                flags += reference(planner, inst, out / f"r{k}.json", args.reference,
                                   [(plan, opts)], objective)
            if args.export:
                flags += export(planner, inst, sol, out / f"export{k}")
            if args.execute and not flags:
                more, info = replay(planner, inst, sol, out / f"report{k}.json",
                                    args.max_replay)
                flags += more
                row.update(info)
        faults += bool(flags)
        # a written baseline is no fault (a short limit on a large instance), but worth a look
        if str(row.get("status", "")).startswith("UNKNOWN"):
            flags.append("no CP-SAT plan")
        row["flags"] = "; ".join(flags)
        rows.append(row)
        print(f"{k:3} n={n:<4} {' '.join(opts):28} {row.get('status', '')[:40]:40} "
              f"{row['flags'] or 'ok'}", flush=True)
    fields = ["case", "requests", "objective", "generate", "solve", "status", "objective_value",
              "bound", "gap", "wall_s", "replay", "response_err_p50", "response_err_p90",
              "flags"]
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} cases, {faults} with a fault; {out / 'sweep.csv'}")
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main())
