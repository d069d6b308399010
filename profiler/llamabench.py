"""Import ``llama-bench -o json`` output as measurements and fit a profile from them.

llama-bench reports prompt processing (``n_prompt > 0, n_gen == 0``: a prefill of
``n_prompt`` tokens) and text generation (``n_gen > 0, n_prompt == 0``: ``n_gen``
decoded tokens from a context of ``n_depth``). Each sample becomes one row:
``prefill_s`` (seconds for the prompt) or ``decode_s_per_token`` (sample / n_gen,
at the generation's mean context ``n_depth + n_gen/2``). Mixed tests (pg) and
prefills at a depth are kept as unfitted rows. The profile says where it came from.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiler.devices import gpu_type_slug
from profiler.models import GgufArch, read_arch
from profiler.naming import slugify
from profiler.store import MeasurementLog, build_profile, make_row, profile_paths, write_profile


class LlamaBenchError(ValueError):
    """The file is not llama-bench JSON output."""


@dataclass(frozen=True)
class ImportResult:
    profile_path: Path
    measurements_path: Path
    rows: int
    profile: dict[str, Any]


def parse_llama_bench(data: Any) -> list[dict[str, Any]]:
    """Measurement rows (see :func:`profiler.store.make_row`) from parsed llama-bench JSON."""
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise LlamaBenchError("expected a JSON list of llama-bench test objects")
    rows: list[dict[str, Any]] = []
    for i, t in enumerate(data):
        try:
            n_prompt, n_gen = int(t.get("n_prompt", 0)), int(t.get("n_gen", 0))
            depth = int(t.get("n_depth", 0) or 0)
            ngl = int(t.get("n_gpu_layers", 0) or 0)
            threads = int(t.get("n_threads", 0) or 0)
            samples = t.get("samples_ns") or [t["avg_ns"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise LlamaBenchError(f"test {i}: missing or bad field ({exc})") from exc
        if n_prompt > 0 and n_gen == 0:
            kind = "prefill_s" if depth == 0 else "prefill_at_depth_s"
            unit_div, context, prompt = 1.0, depth, n_prompt
        elif n_gen > 0 and n_prompt == 0:
            kind, unit_div, context, prompt = "decode_s_per_token", float(n_gen), \
                depth + n_gen // 2, 0
        else:
            kind, unit_div, context, prompt = "llama_bench_pg_s", 1.0, depth, n_prompt
        setting = f"llama-bench:{kind}:ngl={ngl}:p={n_prompt}:g={n_gen}:d={depth}:t={threads}"
        for rep, ns in enumerate(samples):
            rows.append(make_row(kind, float(ns) / 1e9 / unit_div, "s", setting=setting,
                                 n_gpu_layers=ngl, context=context, prompt_tokens=prompt,
                                 threads=threads, repetition=rep, source="llama-bench"))
    if not rows:
        raise LlamaBenchError("no tests in the file")
    return rows


def _device(tests: list[dict[str, Any]], gpu: bool) -> dict[str, Any]:
    t = tests[0]
    if gpu:
        name = str(t.get("gpu_info", "")).split(",")[0].strip() or "unknown-gpu"
        return {"kind": "gpu", "type": gpu_type_slug(name), "name": name,
                "host": {"cpu_model": t.get("cpu_info", "")}}
    name = str(t.get("cpu_info", "unknown-cpu"))
    return {"kind": "cpu", "type": slugify(name), "name": name}


def import_llama_bench(path: Path, out_root: Path, model: Path | None = None) -> ImportResult:
    """Read ``llama-bench -o json`` output and write a profile (source: llama-bench).

    ``model`` is the GGUF file benchmarked (default: the ``model_filename`` in the
    file, when it exists here); its metadata gives the profile's architecture.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LlamaBenchError(f"{path}: cannot read JSON ({exc})") from exc
    rows = parse_llama_bench(data)
    tests = data if isinstance(data, list) else [data]
    if model is None:
        fname = tests[0].get("model_filename")
        if not fname or not Path(fname).is_file():
            raise LlamaBenchError(
                f"model file {fname!r} named in {path.name} is not here; pass the GGUF path")
        model = Path(fname)
    arch: GgufArch = read_arch(model)
    # fit on the most common thread count and, for a GPU run, its n_gpu_layers values
    threads = Counter(r["threads"] for r in rows).most_common(1)[0][0]
    gpu = any(r["n_gpu_layers"] > 0 for r in rows) and any(t.get("gpu_info") for t in tests)
    device = _device(tests, gpu)
    backends = str(tests[0].get("backends", ""))
    build = {"engine": "llama.cpp (llama-bench)",
             "version": f"{tests[0].get('build_number', '?')}-{tests[0].get('build_commit', '?')}",
             "gpu_offload": gpu or any(b in backends for b in ("CUDA", "Metal", "Vulkan")),
             "backends": backends}
    build_slug = slugify(f"llama-bench-{build['version']}")
    build["slug"] = build_slug
    csv_path, json_path = profile_paths(out_root, arch.key, device["type"], build_slug)
    if csv_path.exists():
        csv_path.unlink()  # an import replaces the previous import of the same triple
    with MeasurementLog(csv_path) as log:
        for r in rows:
            log.write(r)
    fit_rows = [r for r in rows if r["threads"] == threads]
    doc = build_profile(
        rows=fit_rows, arch=arch, device=device, build=build,
        settings={"threads": threads, "n_batch": tests[0].get("n_batch"),
                  "type_k": tests[0].get("type_k")},
        method={"timing": "llama-bench's own samples_ns", "decode": "sample / n_gen at the "
                "generation's mean context n_depth + n_gen/2",
                "prefill": "n_prompt tokens into an empty cache (n_depth == 0)"},
        source={"kind": "llama-bench", "file": path.name,
                "note": "imported from llama-bench -o json output, not measured by "
                        "planner profile; loads, KV copies and memory are not covered"},
        measurements_file=csv_path.name)
    write_profile(doc, json_path)
    return ImportResult(json_path, csv_path, len(rows), doc)
