"""Compare the profiler's decode and prefill tokens/s with llama.cpp's own timing report.

For one model and one setting (threads, n_ctx, n_batch, prompt length, tokens
generated), an engine worker prefills a prompt and decodes tokens while both
clocks run: the profiler's (``time.perf_counter`` around each step in the worker,
what profiles are made of) and llama.cpp's internal ``llama_perf_context``
counters (what ``verbose`` prints as "prompt eval time" and "eval time"). With a
profile, the fitted prediction for the same setting is compared too.

    python benchmarks/profile_vs_llama.py                       # SmolLM2, 2 threads
    python benchmarks/profile_vs_llama.py --profile profiles/smollm2-135m-instruct.q4-1/*/*.json

Ratios are profiler tok/s divided by llama.cpp tok/s (1.00 = identical).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from profiler.engine import Engine
from profiler.models import resolve_model
from profiler.store import load_profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--profile", type=Path, help="profile JSON to compare predictions with")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens")
    ap.add_argument("--gen", type=int, default=128, help="generated tokens")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    path = resolve_model(args.model)
    rows = []
    with Engine(threads=args.threads) as eng:
        eng.load(path, n_ctx=args.n_ctx, n_batch=args.n_batch)
        text = "Benchmarks compare two clocks over the same work, token by token. " * 200
        tokens = eng.tokenize(text)[: args.prompt]
        eng.prefill(tokens[:32])  # warm-up
        eng.decode(16)
        for _ in range(args.reps):
            eng.reset()
            eng.llama_perf(reset=True)
            pre = eng.prefill(tokens)
            dec = eng.decode(args.gen)
            perf = eng.llama_perf(reset=True)
            rows.append({
                "prefill_ours": len(tokens) / pre.seconds,
                "prefill_llama": perf["prompt_tokens"] / perf["prompt_eval_s"],
                "decode_ours": args.gen / dec.seconds,
                "decode_llama": perf["eval_tokens"] / perf["eval_s"],
            })
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"model {path.name}, threads {args.threads}, n_ctx {args.n_ctx}, n_batch "
          f"{args.n_batch}, prompt {args.prompt}, generated {args.gen}, median of {args.reps}")
    print(f"{'':10} {'profiler tok/s':>15} {'llama.cpp tok/s':>16} {'ratio':>7}")
    for what in ("prefill", "decode"):
        ours, theirs = med[f"{what}_ours"], med[f"{what}_llama"]
        print(f"{what:10} {ours:15.1f} {theirs:16.1f} {ours / theirs:7.3f}")
    if args.profile is not None:
        prof = load_profile(args.profile)
        n_ctx = args.n_ctx
        pre_s = prof.predict("prefill_s", n_ctx=n_ctx, prompt_tokens=args.prompt)
        dec_s = sum(prof.predict("decode_s_per_token", n_ctx=n_ctx, context=args.prompt + i)
                    for i in range(args.gen))
        print(f"profile fit: prefill {args.prompt / pre_s:.1f} tok/s (ratio to llama.cpp "
              f"{args.prompt / pre_s / med['prefill_llama']:.3f}), decode "
              f"{args.gen / dec_s:.1f} tok/s (ratio {args.gen / dec_s / med['decode_llama']:.3f})")


if __name__ == "__main__":
    main()
