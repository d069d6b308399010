"""Decode and prefill speed with llama.cpp's extra buffer types on and off (issue 17).

Measures the demo's models (SmolLM2-135M Q4_1 and the two synthetic Q8_0 llama
models) on this machine's real engines, once with extra buffer types (CPU
weight repacking, and AMX where the build has it) on and once off. "On" is only
measured where it does not crash: an engine that dies on its first prefill falls
back (``Engine.fallbacks``) and the row says so instead of giving a speed.

Run by hand (not in CI):

    .venv/bin/python benchmarks/extra_bufts.py                 # the demo's models, 1 thread
    .venv/bin/python benchmarks/extra_bufts.py --threads 2 --reps 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from planner.demo import ensure_models
from profiler import cpuopts
from profiler.devices import cpu_model_name
from profiler.engine import Engine


def tokens(n: int) -> list[int]:
    return [10 + (7919 * i) % 20000 for i in range(n)]


def measure(model: Path, enabled: bool, threads: int, prompt: int, decode: int,
            reps: int) -> dict[str, Any]:
    with Engine(threads=threads, extra_bufts=enabled) as eng:
        eng.load(model, n_ctx=prompt + decode + 16)
        eng.prefill(tokens(8))  # the first compute: where the AMX path crashes
        eng.decode(2)
        pre, dec = [], []
        for _ in range(reps):
            eng.reset()
            pre.append(prompt / eng.prefill(tokens(prompt)).seconds)
            dec.append(decode / eng.decode(decode).seconds)
        crashed = [f.to_json() for f in eng.fallbacks]
        return {"model": model.name, "extra_bufts": enabled, "engine_used": eng.extra_bufts,
                "crashed": crashed, "prefill_tok_s": statistics.median(pre),
                "decode_tok_s": statistics.median(dec), "reps": reps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", type=Path,
                    help="GGUF file (repeatable; default: the demo's three models)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    os.environ.pop(cpuopts.ENV_VAR, None)  # each row asks for its own setting
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    print(f"CPU: {cpu_model_name()}; llama-cpp-python {llama_cpp.__version__}; "
          f"AMX_INT8 reported: {cpuopts.has_amx(info)}; default here: "
          f"{'on' if cpuopts.resolve_extra_bufts(info).enabled else 'off'}; "
          f"threads {args.threads}")
    rows = []
    print(f"{'model':40} {'extra bufts':>11} {'prefill tok/s':>14} {'decode tok/s':>13}")
    for model in args.model or ensure_models():
        for enabled in (True, False):
            r = measure(model, enabled, args.threads, args.prompt, args.decode, args.reps)
            rows.append(r)
            if r["crashed"]:
                code = r["crashed"][0]["exitcode"]
                print(f"{r['model']:40} {'on':>11}  crashed (exit code {code}); fell back to off")
            else:
                print(f"{r['model']:40} {'on' if enabled else 'off':>11} "
                      f"{r['prefill_tok_s']:14.1f} {r['decode_tok_s']:13.1f}")
            sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model_name(), "system_info": info,
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
