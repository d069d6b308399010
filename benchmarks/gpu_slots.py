"""Slots on a GPU: profile models on this machine's first GPU, plan slot workloads, replay them.

Run by hand on a machine with an NVIDIA GPU and a CUDA build of llama-cpp-python
(``CMAKE_ARGS="-DGGML_CUDA=ON" pip install llama-cpp-python``). Everything it writes
goes under ``--out``; nothing is downloaded (the synthetic models take their
tokenizer from ``--tokenizer-from``, SmolLM2's GGUF by default). In order, each
stage skipped when the time left (``--deadline``) cannot hold it:

1. the GPU and the build, and a smoke test of the GPU paths the CPU never runs:
   a slot engine with every layer on the GPU, and the same with a tensor split
   (``split_mode`` layer over the one GPU);
2. synthetic llama models of a few shapes (random weights; timing does not
   depend on them);
3. a profile of each (``planner profile``'s sweep with fewer repetitions, every
   layer on the GPU and, with ``--partial``, half of them, plus the slot step):
   its fits and the slot fit's held-out MAPE, with the step time at 1/2/4/8
   active sequences;
4. per seed, a generated workload on this GPU with overlapping requests per
   model, solved by CP-SAT with one slot and with slots 1/2/4, and by fcfs-lru
   (Ollama with OLLAMA_NUM_PARALLEL=4);
5. the slot plan and the fcfs-lru plan replayed on the GPU (continuous batching),
   with each request's response-time error.

    python benchmarks/gpu_slots.py --out /tmp/gpu --deadline 420
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

#: name -> (layers, hidden, heads, kv_heads, ffn, type): a SmolLM2-sized model, a
#: 1B-class and an 8B-class llama (Llama-3.2-1B and Llama-3-8B shapes, smaller vocab)
SHAPES: dict[str, tuple[int, int, int, int, int, str]] = {
    "smol": (30, 576, 9, 3, 1536, "Q8_0"),
    "1b": (16, 2048, 32, 8, 8192, "Q8_0"),
    "8b": (32, 4096, 32, 8, 14336, "Q4_0"),
}


class Clock:
    def __init__(self, deadline_s: float) -> None:
        self.t0 = time.perf_counter()
        self.deadline = deadline_s

    def left(self) -> float:
        return self.deadline - (time.perf_counter() - self.t0)

    def stamp(self) -> str:
        return f"[{time.perf_counter() - self.t0:6.1f} s]"


def say(clock: Clock, msg: str) -> None:
    print(f"{clock.stamp()} {msg}", flush=True)


def gpu_facts() -> dict[str, Any]:
    import llama_cpp

    from profiler.devices import discover_build, discover_gpus

    gpus = discover_gpus()
    return {"gpus": [g.to_json() for g in gpus], "build": discover_build().to_json(),
            "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload())}


def smoke(model: Path, n_layers: int) -> dict[str, Any]:
    """A slot engine on the GPU, plain and with a tensor split: two sequences to the end."""
    from profiler.batch import BatchEngine, synthetic_tokens

    out: dict[str, Any] = {}
    for label, split in (("gpu", None), ("gpu-tensor-split", [1.0])):
        with BatchEngine(threads=4) as eng:
            info = eng.batch_load(model, n_ctx=512, n_parallel=2, n_gpu_layers=n_layers + 1,
                                  tensor_split=split)
            toks = synthetic_tokens(int(info["n_vocab"]), 32)
            eng.batch_add(0, toks, n_decode=16)
            eng.batch_add(1, toks[:16], n_decode=8)
            steps = 0
            done: list[int] = []
            t = time.perf_counter()
            while len(done) < 2 and steps < 64:
                r = eng.batch_step()
                done += list(r.finished)
                steps += 1
            out[label] = {"steps": steps, "finished": sorted(done),
                          "wall_s": round(time.perf_counter() - t, 4),
                          "load": info}
    return out


def write_models(root: Path, names: list[str], tokenizer: Path | None) -> dict[str, Path]:
    from profiler.synth import SynthShape, write_synthetic

    paths = {}
    for name in names:
        layers, hidden, heads, kv, ffn, qtype = SHAPES[name]
        p = root / f"synth-llama-{layers}l-{hidden}h.{qtype}.gguf"
        if not p.is_file():
            write_synthetic(p, SynthShape(layers, hidden, heads, kv, ffn, qtype),
                            tokenizer_from=tokenizer)
        paths[name] = p
    return paths


def profile_model(model: Path, profiles: Path, threads: int, gpu: bool,
                  partial: bool) -> dict[str, Any]:
    """The sweep with fewer repetitions (every layer on the GPU; with ``partial`` also
    all but the output layer and half of them), then the slot step."""
    from profiler.models import read_arch
    from profiler.sweep import SweepConfig, run_sweep

    n = read_arch(model).n_layers
    # n and n + 1 both: whether the output layer sits on the GPU is what tells the
    # fit's GPU and host weight bytes apart near full offload
    layers = ((n // 2, n, n + 1) if partial else (n + 1,)) if gpu else (0,)
    cfg = replace(SweepConfig.quick(threads), gpu_layers=layers, warm_reps=2,
                  cold_reps=1, first_reps=2, busy_reps=1, load_n_ctx=(512, 1024, 2048))
    t = time.perf_counter()
    res = run_sweep(model, profiles, cfg, show_progress=False)
    fits = res.profile["fits"]
    return {"profile": str(res.profile_path), "wall_s": round(time.perf_counter() - t, 1),
            "mape": {k: f["cv"].get("mape") for k, f in fits.items()},
            "step_ms": step_ms(res.profile_path)}


def step_ms(profile_path: Path) -> dict[int, float]:
    from slots_fit import step_ms as steps  # type: ignore[import-not-found]

    from profiler.batch import batch_journal, read_batch_rows

    rows = read_batch_rows(batch_journal(profile_path.with_suffix(".csv")))
    return {k: round(v, 3) for k, v in steps(rows).items()}


def planner(*args: str, timeout: float | None = None) -> None:
    exe = str(Path(sys.executable).with_name("planner"))
    cmd = [exe, *args] if Path(exe).exists() else [sys.executable, "-m", "planner.cli", *args]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=timeout)


def template(path: Path, gpu: dict[str, Any] | None, models: dict[str, Path],
             profiles: Path, threads: int) -> None:
    import psutil

    doc = {
        "format": "planner.instance/1", "name": path.stem,
        "description": f"one {gpu['name'] if gpu else 'CPU'} with the models of "
                       "benchmarks/gpu_slots.py",
        "cluster": {"hosts": [{
            "id": "gpuhost", "cpu": "local",
            "threads": threads,  # as profiled: the replay runs engines with these
            "memory_gib": round(psutil.virtual_memory().total / 2**30 * 0.8, 1),
            "gpus": [{"id": "gpu0", "type": gpu["type"],
                      "memory_gib": round(gpu["memory_bytes"] / 2**30 * 0.9, 1)}]
            if gpu else []}]},
        "models": [{"id": name, "gguf": str(p.resolve())} for name, p in models.items()],
        "objective": "mean_response",
        "profiles": [str(profiles.resolve())],
        "requests": [],
    }
    path.write_text(json.dumps(doc, indent=1))


def wmean(plan: Path) -> float:
    return float(json.loads(plan.read_text())["metrics"]["weighted_mean_response_s"])


def response_errors(report: Path, inst: Path) -> list[float]:
    from slots_replay import response_errors as errors  # type: ignore[import-not-found]

    arrival = {q["id"]: q["arrival_s"] for q in json.loads(inst.read_text())["requests"]}
    return list(errors(json.loads(report.read_text()), arrival))


def pct(v: list[float], q: float) -> str:
    if not v:
        return "-"
    s = sorted(v)
    return f"{100 * s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]:.1f}%"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/gpu"))
    ap.add_argument("--models", default="1b,8b", help=f"shapes among {','.join(SHAPES)}")
    ap.add_argument("--tokenizer-from", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="*", default=[401])
    ap.add_argument("--rate", type=float, default=4.0, help="arrivals/s, all models together")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--time-limit", type=float, default=20.0)
    ap.add_argument("--no-replay", action="store_true")
    ap.add_argument("--no-smoke", action="store_true")
    ap.add_argument("--profiles-from", type=Path, default=None,
                    help="start from these profiles and journals (the sweep resumes)")
    ap.add_argument("--partial", action="store_true",
                    help="also profile half the layers on the GPU (the rest on the CPU)")
    ap.add_argument("--deadline", type=float, default=540.0, help="seconds for everything")
    ap.add_argument("--allow-cpu", action="store_true",
                    help="without a GPU, run the stages on the CPU (to try the script out)")
    args = ap.parse_args()
    clock = Clock(args.deadline)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}

    def save() -> None:
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))

    summary["facts"] = facts = gpu_facts()
    save()
    say(clock, f"gpus {[g['name'] for g in facts['gpus']]}, offload {facts['gpu_offload']}")
    on_gpu = bool(facts["gpus"]) and facts["gpu_offload"]
    if not on_gpu and not args.allow_cpu:
        say(clock, "no GPU or no GPU build: nothing to measure")
        return 1
    names = [n for n in args.models.split(",") if n]
    models = write_models(out / "models", names, args.tokenizer_from)
    say(clock, f"models {[p.name for p in models.values()]}")
    from dataclasses import asdict

    from planner.gguf_arch import read_gguf_arch

    # each model's architecture, for an instance that names it inline (no GGUF needed)
    summary["archs"] = {n: asdict(read_gguf_arch(p)) for n, p in models.items()}
    if on_gpu and not args.no_smoke:
        try:
            summary["smoke"] = smoke(models[names[0]], summary["archs"][names[0]]["n_layers"])
            say(clock, f"smoke {summary['smoke']}")
        except Exception as exc:  # the point of this stage is to see the failure
            summary["smoke"] = {"error": repr(exc)}
            say(clock, f"smoke FAILED: {exc!r}")
        save()
    profiles = out / "profiles"
    if args.profiles_from is not None:
        import shutil

        shutil.copytree(args.profiles_from, profiles, dirs_exist_ok=True)
    summary["profiles"] = {}
    for name, path in models.items():
        if clock.left() < 60:
            say(clock, f"no time left to profile {name}")
            break
        try:
            summary["profiles"][name] = r = profile_model(path, profiles, args.threads,
                                                              on_gpu, args.partial)
            say(clock, f"profile {name}: {r['wall_s']} s, slot MAPE "
                f"{r['mape'].get('batch_step_s')}, step ms {r['step_ms']}")
        except Exception as exc:
            summary["profiles"][name] = {"error": repr(exc)}
            say(clock, f"profile {name} FAILED: {exc!r}")
        save()
    done = {n: models[n] for n, r in summary["profiles"].items() if "error" not in r}
    if not done:
        return 1
    tpl = out / "gpu-template.json"
    # the GPU's type as the profiles name it
    dev = json.loads(Path(summary["profiles"][next(iter(done))]["profile"]).read_text())["device"]
    template(tpl, facts["gpus"][0] | {"type": dev["type"]} if on_gpu else None, done, profiles,
             args.threads)
    summary["plans"] = {}
    for seed in args.seeds:
        if clock.left() < 3 * args.time_limit + 30:
            say(clock, f"no time left to plan seed {seed}")
            break
        inst = out / f"gpu-slots{seed}.json"
        planner("instance", "generate", "--like", str(tpl), "--rate",
                str(args.rate / len(done)), "--duration", str(args.duration),
                "--prompt-median", "256", "--output-median", "128", "--max-prompt", "1024",
                "--max-output", "512", "--seed", str(seed), "-o", str(inst))
        one, multi, lru, grouped = (out / f"gpu-slots{seed}.{k}.json"
                                    for k in ("one", "multi", "lru", "grouped"))
        tl = str(args.time_limit)
        planner("solve", str(inst), "--slots", "1", "--time-limit", tl, "-o", str(one))
        planner("solve", str(inst), "--slots", "1,2,4", "--time-limit", tl, "-o", str(multi))
        planner("solve", str(inst), "--solver", "fcfs-lru", "--slots", "4", "-o", str(lru))
        planner("solve", str(inst), "--solver", "grouped", "--slots", "4", "-o", str(grouped))
        plan = json.loads(multi.read_text())
        rec: dict[str, Any] = {
            "requests": len(json.loads(inst.read_text())["requests"]),
            "slots_used": sorted({e.get("n_parallel", 1) for e in plan["engines"]}),
            "status": plan["solver"]["status"],
            "one_slot_s": wmean(one), "slots_s": wmean(multi), "fcfs_lru4_s": wmean(lru),
            "grouped4_s": wmean(grouped)}
        rec["cut_vs_one_slot"] = 1 - rec["slots_s"] / rec["one_slot_s"]
        summary["plans"][seed] = rec
        say(clock, f"seed {seed}: {rec}")
        save()
        for label, p in (("slots", multi), ("grouped4", grouped), ("fcfs_lru4", lru)):
            if args.no_replay:
                continue
            if clock.left() < args.duration + 60:
                say(clock, f"no time left to replay {label} plan of seed {seed}")
                continue
            rep = p.with_suffix(".report.json")
            planner("execute", str(p), "--instance", str(inst), "-o", str(rep),
                    timeout=max(30.0, clock.left() - 10))
            errs = response_errors(rep, inst)
            measured = (json.loads(rep.read_text())["metrics"].get("measured") or {})
            rec[f"replay_{label}"] = {
                "response_error_median": pct(errs, 0.5), "p90": pct(errs, 0.9),
                "measured_wmean_s": measured.get("weighted_mean_response_s")}
            say(clock, f"replay {label}: {rec[f'replay_{label}']}")
            save()
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
