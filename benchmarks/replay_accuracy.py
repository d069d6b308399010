"""Replay accuracy on CPU instances: predicted against measured on real llama.cpp engines.

For the CPU demo, for `instances/cpu-preempt.json` (built so that its plan preempts:
the KV copies and reloads of a preemption, replayed as a server does them; generated
instances rarely preempt; re-timed for this machine first, :func:`timed_to_this_machine`)
and for freshly generated CPU instances with bursty arrivals
(seeds never used in development), solve, replay with `planner execute`, and report
per instance:

- response time (completion minus arrival) error: median, p90 and max of
  |measured - predicted| / measured: the headline;
- the same median (p90) per action kind (run, load, unload, kv_save, kv_restore);
- peak host memory predicted, measured and the budget;
- whether the profiles the plan used match this machine (`planner profile check`).

Before each replay the demo's profiles are probed, as `make demo` does, and measured
again where they drift by more than 10% (``--no-recheck`` skips this).

Bursty arrivals are built here: the generator's requests (models and lengths) get new
arrival times from a two-level process: bursts arrive as a Poisson process, each burst
brings a geometric number of requests (mean ``--burst``) spaced by exponential gaps of
mean ``--gap`` seconds; the mean rate over the duration stays ``--rate``.

Run by hand (not in CI), after `make demo` (models and profiles/local in place):

    .venv/bin/python benchmarks/replay_accuracy.py --seeds 9001 9002 9003
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

PLANNER = str(Path(sys.executable).with_name("planner"))
KINDS = ("run", "load", "unload", "kv_save", "kv_restore")


def sh(*args: str) -> None:
    subprocess.run([PLANNER, *args], check=True, stdout=subprocess.DEVNULL)


def make_bursty(path: Path, seed: int, burst: float, gap: float) -> None:
    """Give an instance's requests bursty arrival times (same count, same mean rate)."""
    data = json.loads(path.read_text())
    reqs = data["requests"]
    n = len(reqs)
    if n == 0:
        return
    span = max(r["arrival_s"] for r in reqs) or 1.0
    rng = np.random.default_rng(seed + 7777)
    times: list[float] = []
    burst_rate = n / burst / span
    t = float(rng.exponential(1 / burst_rate))
    while len(times) < n:
        k = int(rng.geometric(1 / burst))
        u = t
        for _ in range(k):
            times.append(u)
            u += float(rng.exponential(gap))
        t += float(rng.exponential(1 / burst_rate))
    times = sorted(times[:n])
    order = rng.permutation(n)  # which request lands in which slot
    for slot, i in enumerate(order):
        reqs[i]["arrival_s"] = round(times[slot], 3)
    reqs.sort(key=lambda r: (r["arrival_s"], r["id"]))
    data["description"] = (data.get("description", "") +
                           f"; bursty arrivals (bursts of {burst} on average, {gap} s gaps, "
                           f"seed {seed})")
    path.write_text(json.dumps(data, indent=1))


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def row(name: str, rep: dict[str, Any]) -> dict[str, Any]:
    s = rep["summary"]
    dev = next(d for d in rep["devices"] if d.get("predicted_peak_host_bytes") is not None)
    prof = rep.get("profiles_here", [])
    return {
        "instance": name, "requests": len(rep["requests"]), "status": rep["status"],
        "profiles_match": all(p.get("matches") for p in prof) if prof else None,
        # how unsteady the machine was at the check before the replay (decode probe
        # repetitions a fraction of a second apart: (max - min) / median, worst model)
        "probe_spread": max((p.get("decode_spread") or 0.0 for p in prof), default=None),
        "response": s["response"], "completion": s["completion"],
        **{k: s[k] for k in KINDS},
        "peak_host_mib": {"predicted": dev["predicted_peak_host_bytes"] / 2**20,
                          "measured": (dev.get("measured_peak_host_bytes") or 0) / 2**20,
                          "budget": (dev.get("budget_host_bytes") or 0) / 2**20},
        "refusals": len(rep.get("memory_refusals", [])),
        # per KV copy: what the executor added to the engine worker's own time (ms)
        "kv_executor_ms": [round(1e3 * (a["measured_end_s"] - a["measured_start_s"]
                                        - a["engine_s"]), 2)
                           for a in rep["actions"] if a["kind"] in ("kv_save", "kv_restore")
                           and a.get("engine_s") is not None
                           and a.get("measured_end_s") is not None],
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| instance | requests | profiles match here | probe spread | "
           "response median / p90 / max | "
           "run median / p90 | load median / p90 | kv_save / kv_restore median | "
           "peak host MiB predicted / measured / budget |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["peak_host_mib"]
        match = {True: "yes", False: "no", None: "-"}[r["profiles_match"]]
        out.append(
            f"| {r['instance']} | {r['requests']} | {match} | {pct(r['probe_spread'])} | "
            f"{pct(r['response']['median'])} / {pct(r['response']['p90'])} / "
            f"{pct(r['response']['max'])} | {pct(r['run']['median'])} / {pct(r['run']['p90'])} | "
            f"{pct(r['load']['median'])} / {pct(r['load']['p90'])} | "
            f"{pct(r['kv_save']['median'])} / {pct(r['kv_restore']['median'])} | "
            f"{m['predicted']:.0f} / {m['measured']:.0f} / {m['budget']:.0f} |")
    return "\n".join(out)


LONG = 500  # output tokens: the long light requests of instances/cpu-preempt.json


def timed_to_this_machine(template: Path, out: Path, share: float = 0.35,
                          gap_s: float = 30.0) -> Path:
    """``template`` (instances/cpu-preempt.json) with arrival times set from this
    machine's cost model, so that its plan preempts on a slow machine and a fast one
    alike: each long request (at least LONG output tokens) opens an episode; the heavier
    requests after it in the file arrive once it has run ``share`` of its predicted run
    (its `fcfs-lru` plan alone, from the instance's profiles), keeping their spacing; the
    next episode starts ``gap_s`` after this one's long request would have ended."""
    data = json.loads(template.read_text())
    data["profiles"] = [str((template.parent / p).resolve()) for p in data.get("profiles", [])]
    reqs = data["requests"]
    run: dict[str, tuple[float, float]] = {}  # long request -> (start, duration) alone
    for r in (r for r in reqs if r["output_tokens"] >= LONG):
        one = out.with_name(f"{out.stem}-{r['id']}.json")
        one.write_text(json.dumps(dict(data, requests=[dict(r, arrival_s=0.0)])))
        plan = one.with_suffix(".plan.json")
        sh("solve", str(one), "--solver", "fcfs-lru", "-o", str(plan))
        a = next(a for a in json.loads(plan.read_text())["actions"] if a["kind"] == "run")
        run[r["id"]] = (a["start_s"], a["end_s"] - a["start_s"])
    t = 0.0
    first_heavy: float | None = None
    offset = 0.0
    for r in reqs:  # in the file's order: a long request, then its heavier ones
        if r["id"] in run:
            start, dur = run[r["id"]]
            r["arrival_s"] = round(t, 3)
            offset, first_heavy = t + start + share * dur, None
            t += start + dur + gap_s
        else:
            first_heavy = r["arrival_s"] if first_heavy is None else first_heavy
            r["arrival_s"] = round(offset + r["arrival_s"] - first_heavy, 3)
    reqs.sort(key=lambda r: (r["arrival_s"], r["id"]))
    data["description"] += (f" Arrival times set for this machine by "
                            f"benchmarks/replay_accuracy.py (share {share}).")
    out.write_text(json.dumps(data, indent=1))
    return out


def kv_check(instance: Path, contexts: tuple[int, ...] = (100, 450, 900), reps: int = 3
             ) -> list[dict[str, Any]]:
    """KV save/restore through /dev/shm files at contexts no sweep measured, against what
    the instance's profiles predict (as the executor does them: caller-side time)."""
    import statistics

    from planner.costmodel import cost_model_for
    from planner.domain import EngineConfig
    from planner.io import load_instance
    from profiler.engine import Engine, state_dir

    inst = load_instance(instance)
    cost = cost_model_for(inst)
    dev = inst.cluster.devices[0].id
    out = []
    with Engine(threads=inst.cluster.hosts[0].threads) as eng:
        for m in inst.models:
            if not m.gguf_path:
                continue
            eng.load(m.gguf_path, n_ctx=1024)
            cfg = EngineConfig(m.id, dev, 0, 1024)
            prompt = [10 + (7 * i) % 300 for i in range(max(contexts))]
            for ctx in contexts:
                eng.reset()
                eng.prefill(prompt[:ctx])
                path = state_dir() / "bench.kv"
                eng.restore_state_file(eng.save_state_file(path))  # warm-up, as the sweep
                saves, restores = [], []
                for _ in range(reps):
                    st = eng.save_state_file(path)
                    saves.append(st.wall_s)
                    restores.append(eng.restore_state_file(st).wall_s)
                    path.unlink()
                for kind, vals, pred in (("kv_save", saves, cost.kv_save_s(cfg, ctx)),
                                         ("kv_restore", restores, cost.kv_restore_s(cfg, ctx))):
                    meas = statistics.median(vals)
                    out.append({"model": m.id, "context": ctx, "kind": kind,
                                "predicted_s": pred, "measured_s": meas,
                                "error": abs(meas - pred) / meas})
            eng.unload()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[9001, 9002, 9003])
    ap.add_argument("--rate", type=float, default=0.3, help="arrivals/s, all models together")
    ap.add_argument("--burst", type=float, default=3.0, help="mean requests per burst")
    ap.add_argument("--gap", type=float, default=0.4, help="mean seconds between a burst's "
                                                           "arrivals")
    ap.add_argument("--solver", default="cp-sat")
    ap.add_argument("--time-limit", default="20")
    ap.add_argument("--no-demo", action="store_true", help="Without the CPU demo.")
    ap.add_argument("--no-preempt", action="store_true",
                    help="Without instances/cpu-preempt.json (its plan preempts: KV copies "
                         "and reloads replayed as a server does them).")
    ap.add_argument("--no-recheck", action="store_true",
                    help="Do not probe (and re-profile on drift) before each replay.")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/replay"))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/replay_accuracy"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cases = [] if args.no_demo else [("cpu-demo", Path("instances/cpu-demo.json"))]
    if not args.no_preempt:
        cases.append(("cpu-preempt", timed_to_this_machine(
            Path("instances/cpu-preempt.json"), args.out / "cpu-preempt.json")))
    for seed in args.seeds:
        inst = args.out / f"cpu-bursty-{seed}.json"
        sh("instance", "generate", "--like", "instances/cpu-demo.json", "--rate",
           str(args.rate / 3), "--duration", "60", "--prompt-median", "96",
           "--output-median", "32", "--max-prompt", "384", "--max-output", "96",
           "--seed", str(seed), "-o", str(inst))
        make_bursty(inst, seed, args.burst, args.gap)
        cases.append((inst.stem, inst))
    rows = []
    console = Console()

    def say(m: str) -> None:
        console.print(m, soft_wrap=True)

    for name, inst in cases:
        if not args.no_recheck:
            # as `make demo` does: the profiles must hold on this machine *now* (a shared
            # VM's speed drifts by tens of percent within minutes); drifting ones are
            # measured again, and the check is cached for the replay report
            from planner.demo import prepare_profiles

            prepare_profiles(inst, say)
        plan = args.out / f"{name}.plan.json"
        rep = args.out / f"{name}.report.json"
        sh("solve", str(inst), "--solver", args.solver, "--time-limit", args.time_limit,
           "-o", str(plan))
        sh("execute", str(plan), "--instance", str(inst), "-o", str(rep))
        rows.append(row(name, json.loads(rep.read_text())))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    table = markdown(rows)
    kv = kv_check(Path("instances/cpu-demo.json"))
    errs = {k: [x["error"] for x in kv if x["kind"] == k] for k in ("kv_save", "kv_restore")}
    kv_line = ("KV copies at contexts no sweep measured (100, 450, 900 tokens; 3 models; "
               "/dev/shm files, caller-side): " + ", ".join(
                   f"{k} error median {pct(float(np.median(v)))}, max {pct(max(v))}"
                   for k, v in errs.items()))
    table += "\n\n" + kv_line
    print(table)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".md").write_text(table + "\n")
    args.results.with_suffix(".json").write_text(json.dumps({"replays": rows, "kv_check": kv},
                                                            indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
