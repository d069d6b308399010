"""Load test of `planner serve` on the loopback interface (bounded, run by hand).

Starts `planner serve` on a free 127.0.0.1 port with a fresh data folder, submits
``--jobs`` copies of an instance at once from as many client threads, follows each
job's server-sent events until it ends, then fetches every plan and checks it with
the project's checker. Prints (and with --json writes) p50/p95/max time from
submission to done, how many jobs ended done with a valid plan, and none lost.

    flock /tmp/planner-cpu.lock .venv/bin/python benchmarks/serve_load.py
    .venv/bin/python benchmarks/serve_load.py --jobs 50 --workers 2 --time-limit 1 \\
        --json benchmarks/results/serve_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from planner.checker import check_plan
from planner.io import load_instance, parse_schedule

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.loads(resp.read())


def one_job(url: str, body: bytes, time_limit: float) -> dict[str, Any]:
    """Submit, follow the events to the end; times from just before the POST."""
    t0 = time.perf_counter()
    req = urllib.request.Request(f"{url}/v1/jobs?time_limit_s={time_limit}", data=body,
                                 method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        job = json.loads(resp.read())
    accepted = time.perf_counter() - t0
    last, n_solutions = "", 0
    with urllib.request.urlopen(f"{url}/v1/jobs/{job['id']}/events", timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if line.startswith("event: "):
                last = line[7:]
                n_solutions += last == "solution"
                if last in ("done", "failed", "cancelled", "interrupted"):
                    break
    return {"id": job["id"], "accepted_s": accepted, "done_s": time.perf_counter() - t0,
            "final": last, "n_solutions": n_solutions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instance", type=Path, default=ROOT / "instances" / "tiny.json")
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2, help="the server's worker processes")
    ap.add_argument("--time-limit", type=float, default=1.0, help="CP-SAT seconds per job")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    body = args.instance.read_bytes()
    instance = load_instance(args.instance)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = Path(tmp) / "server.log"
        with log.open("w") as out:
            srv = subprocess.Popen([sys.executable, "-c", "from planner.cli import main; main()",
                                    "serve", "--port", str(port), "--data", f"{tmp}/data",
                                    "--workers", str(args.workers), "--log-level", "warning"],
                                   stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
            try:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        get(f"{url}/healthz")
                        break
                    except OSError:
                        if time.monotonic() > deadline or srv.poll() is not None:
                            sys.exit("server did not start:\n" + log.read_text())
                        time.sleep(0.2)
                t0 = time.perf_counter()
                with ThreadPoolExecutor(args.jobs) as pool:
                    results = list(pool.map(lambda _: one_job(url, body, args.time_limit),
                                            range(args.jobs)))
                wall = time.perf_counter() - t0
                listed = get(f"{url}/v1/jobs?limit=10000")["jobs"]
                valid = 0
                for r in results:
                    plan = get(f"{url}/v1/jobs/{r['id']}/plan")
                    ok = not check_plan(instance, parse_schedule(plan, "plan"), plan)
                    valid += ok and r["final"] == "done"
            finally:
                srv.terminate()
                srv.wait(timeout=60)
        tracebacks = log.read_text().count("Traceback")
    done = np.array([r["done_s"] for r in results])
    acc = np.array([r["accepted_s"] for r in results])
    figures = {
        "instance": str(args.instance.relative_to(ROOT) if args.instance.is_relative_to(ROOT)
                        else args.instance),
        "jobs": args.jobs, "server_workers": args.workers, "time_limit_s": args.time_limit,
        "cpus": os.cpu_count(), "wall_s": round(wall, 2),
        "done_valid": int(valid), "listed": len(listed),
        "lost": args.jobs - len({r["id"] for r in results} & {j["id"] for j in listed}),
        "accepted_p50_s": round(float(np.percentile(acc, 50)), 3),
        "accepted_p95_s": round(float(np.percentile(acc, 95)), 3),
        "done_p50_s": round(float(np.percentile(done, 50)), 2),
        "done_p95_s": round(float(np.percentile(done, 95)), 2),
        "done_max_s": round(float(done.max()), 2),
        "jobs_per_s": round(args.jobs / wall, 2),
        "server_log_tracebacks": tracebacks,
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    if valid != args.jobs or figures["lost"] or tracebacks:
        sys.exit(1)


if __name__ == "__main__":
    main()
