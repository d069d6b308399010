"""Measuring batched steps on the real engine and merging their fit into a profile
(the profile's slot step; see :mod:`profiler.batch`)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiler.batch.engine import BatchEngine, StepRecord
from profiler.batch.fit import BATCH_COLUMNS, BATCH_QUANTITY, fit_batch
from profiler.fit import KV_PAD

# --------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class BatchConfig:
    """What :func:`measure_batch` measures."""

    actives: tuple[int, ...] = (1, 2, 4, 8)  #: decoding sequences per step
    depths: tuple[int, ...] = (32, 256)  #: cached tokens per sequence
    prompts: tuple[int, ...] = (16, 64)  #: prompt joining while others decode
    block: int = 8  #: decode steps per measurement
    #: single steps with a joining prompt per measurement (their median): one step alone
    #: is at the mercy of a noisy machine
    prompt_steps: int = 3
    reps: int = 3  #: repetitions per setting
    n_batch: int = 512

    @classmethod
    def quick(cls) -> BatchConfig:
        return cls()

    @classmethod
    def full(cls) -> BatchConfig:
        return cls(depths=(32, 256, 768, 1536), prompts=(16, 64, 256), reps=5)

    @property
    def n_parallel(self) -> int:
        return max(self.actives)

    @property
    def n_ctx(self) -> int:
        """Tokens per slot: the deepest sequence plus its decode block, padded."""
        need = max(self.depths) + self.block * 2 + max(self.prompts)
        return int(math.ceil(need / KV_PAD) * KV_PAD)


def _setting(ngl: int, active: int, depth: int, prompt: int) -> str:
    return f"batch:ngl={ngl}:active={active}:depth={depth}:prompt={prompt}"


def batch_settings(cfg: BatchConfig) -> list[tuple[int, int, int]]:
    """(decoding sequences, depth, joining prompt) of every setting: plain decode steps
    for every active count, and a prompt joining 1, 3 or 7 decoding sequences."""
    out = [(k, d, 0) for d in cfg.depths for k in cfg.actives]
    out += [(k - 1, d, p) for d in (cfg.depths[0], cfg.depths[-1]) for k in cfg.actives
            if k > 1 for p in cfg.prompts]
    return out


def measure_batch(eng: BatchEngine, model_path: Path, cfg: BatchConfig, *, threads: int,
                  n_gpu_layers: int, have: Mapping[str, int], write: Callable[[dict[str, Any]],
                                                                              None],
                  tick: Callable[[float, str], None] | None = None) -> int:
    """Measure batched step times on ``eng``; ``have`` counts repetitions already on disk.

    Writes one row per measurement through ``write``; returns the rows written.
    """
    todo = [(k, d, p) for k, d, p in batch_settings(cfg)
            if have.get(_setting(n_gpu_layers, k, d, p), 0) < cfg.reps]
    if not todo:
        return 0
    tick = tick or (lambda units, what: None)
    info = eng.batch_load(model_path, n_ctx=cfg.n_ctx, n_parallel=cfg.n_parallel,
                          n_gpu_layers=n_gpu_layers, n_batch=cfg.n_batch)
    tokens = synthetic_tokens(int(info["n_vocab"]), cfg.n_ctx)
    written = 0
    counts = dict(have)
    try:
        for depth in sorted({d for _k, d, _p in todo}):
            # settings in increasing order of decoding sequences: slots are only added,
            # so no idle sequence lingers in the cache of a measurement
            here = sorted((k, p) for k, d, p in todo if d == depth)
            present = 0
            for k, p in here:
                if k > present:
                    for seq in range(present, k):
                        eng.batch_add(seq, _shifted(tokens, seq, depth), -1)
                    _prefill_all(eng)
                    present = k
                    eng.batch_step(max_steps=2)  # warm-up: first steps after a batch
                s_key = _setting(n_gpu_layers, k, depth, p)
                for _ in range(cfg.reps - counts.get(s_key, 0)):
                    for s in range(present):
                        eng.batch_truncate(s, depth, -1)
                    if p == 0:
                        r = eng.batch_step(max_steps=cfg.block)
                        value = statistics.median(st.seconds for st in r.steps)
                        attn = statistics.fmean(st.attn_cells for st in r.steps)
                        outputs, btoks = k, k
                    else:
                        joined: list[StepRecord] = []
                        for _ in range(max(1, cfg.prompt_steps)):
                            if joined:  # rewound above for the first step
                                for s in range(present):
                                    eng.batch_truncate(s, depth, -1)
                            eng.batch_add(cfg.n_parallel - 1, _shifted(tokens, 99, p), 1)
                            joined.append(eng.batch_step(max_steps=1).steps[0])
                            eng.batch_remove(cfg.n_parallel - 1)
                        st = joined[0]
                        value = statistics.median(j.seconds for j in joined)
                        attn, outputs, btoks = (st.attn_cells, st.n_outputs,
                                                st.decode_tokens + st.prompt_tokens)
                    rep = counts.get(s_key, 0)
                    counts[s_key] = rep + 1
                    write({"kind": BATCH_QUANTITY, "setting": s_key,
                           "n_gpu_layers": n_gpu_layers, "n_ctx": cfg.n_ctx,
                           "n_parallel": cfg.n_parallel, "active": k, "depth": depth,
                           "prompt_tokens": p, "attn_cells": round(attn, 1),
                           "batch_tokens": btoks, "n_outputs": outputs, "threads": threads,
                           "repetition": rep,
                           "value": value, "unit": "s", "timestamp": round(time.time(), 3)})
                    written += 1
                    tick(max(1.0, k * cfg.block / 8),
                         f"batch active={k} depth={depth} prompt={p}")
            for seq in range(present):
                eng.batch_remove(seq)
    finally:
        eng.unload()
    return written


def _prefill_all(eng: BatchEngine) -> None:
    """Step until no sequence has prompt tokens left (they decode one token meanwhile
    at most per step; the measurement rewinds them anyway)."""
    while True:
        r = eng.batch_step(max_steps=1)
        if not r.steps or r.steps[0].prompt_tokens == 0:
            return


def synthetic_tokens(n_vocab: int, n: int, seed: int = 0) -> list[int]:
    """Deterministic token ids (step time does not depend on which tokens they are)."""
    return [10 + (seed + 7919 * i) % max(1, n_vocab - 20) for i in range(n)]


def _shifted(tokens: Sequence[int], seq: int, n: int) -> list[int]:
    """``n`` prompt tokens for slot ``seq`` (a rotation, so slots hold different text)."""
    base = list(tokens[1:]) or [1]
    out = [tokens[0]] if tokens else []
    i = seq * 7
    while len(out) < n:
        out.append(base[i % len(base)])
        i += 1
    return out[:n]


# --------------------------------------------------------------------------- profile step


def batch_journal(csv_path: Path) -> Path:
    """The batch measurements' CSV beside a profile's journal: ``<build>.batch.csv``."""
    return Path(csv_path).with_suffix(".batch.csv")


def read_batch_rows(path: Path) -> list[dict[str, Any]]:
    import csv

    if not Path(path).is_file():
        return []
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            try:
                row: dict[str, Any] = dict(raw)
                for c in ("n_gpu_layers", "n_ctx", "n_parallel", "active", "depth",
                          "prompt_tokens", "batch_tokens", "n_outputs", "threads",
                          "repetition"):
                    row[c] = int(float(row.get(c) or 0))
                for c in ("attn_cells", "value", "timestamp"):
                    row[c] = float(row[c])
            except (TypeError, ValueError, KeyError):
                continue  # a row cut short by an interruption
            out.append(row)
    return out


def add_batch_profile(model_path: Path, csv_path: Path, json_path: Path, cfg: BatchConfig, *,
                      threads: int, n_gpu_layers: int,
                      tick: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """The profile's slot step: measure what is missing, fit, merge into the profile JSON.

    Rows go to ``<build>.batch.csv`` (resumable like the main journal); the fit goes
    into the profile's ``fits`` as ``batch_step_s`` and the rows into ``batch``.
    """
    import csv
    import json

    from profiler.store import write_profile

    journal = batch_journal(csv_path)
    rows = [r for r in read_batch_rows(journal) if r["threads"] == threads]
    have: dict[str, int] = {}
    for r in rows:
        have[r["setting"]] = have.get(r["setting"], 0) + 1
    new = not journal.exists() or journal.stat().st_size == 0
    journal.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(journal, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(BATCH_COLUMNS), extrasaction="ignore")
        if new:
            w.writeheader()

        def write(row: dict[str, Any]) -> None:
            w.writerow(row)
            f.flush()

        todo = [s for s in batch_settings(cfg)
                if have.get(_setting(n_gpu_layers, *s), 0) < cfg.reps]
        if todo:
            eng = BatchEngine(threads=threads)
            try:
                written = measure_batch(eng, model_path, cfg, threads=threads,
                                        n_gpu_layers=n_gpu_layers, have=have, write=write,
                                        tick=tick)
            finally:
                eng.close()
    rows = [r for r in read_batch_rows(journal) if r["threads"] == threads]
    doc: dict[str, Any] = json.loads(Path(json_path).read_text(encoding="utf-8"))
    fit = fit_batch(rows)
    if fit is None:
        return doc
    if not written and doc.get("fits", {}).get(BATCH_QUANTITY) == fit.to_json():
        return doc
    doc.setdefault("fits", {})[BATCH_QUANTITY] = fit.to_json()
    doc["batch"] = {
        "file": journal.name, "method": (
            "one llama.cpp context with n_seq_max = n_parallel slots, a unified KV cache "
            f"(n_ctx per slot {cfg.n_ctx}); value = seconds of one llama_decode (inside the "
            f"worker), the median of {cfg.block} steps for decode settings and of "
            f"{cfg.prompt_steps} single steps for a prompt joining the decoding sequences; "
            "the cache is rewound between steps with a joining prompt and between "
            "repetitions"),
        "settings": {"actives": list(cfg.actives), "depths": list(cfg.depths),
                     "prompts": list(cfg.prompts), "block": cfg.block,
                     "prompt_steps": cfg.prompt_steps, "reps": cfg.reps,
                     "n_parallel": cfg.n_parallel, "n_ctx_per_slot": cfg.n_ctx,
                     "n_gpu_layers": n_gpu_layers},
        "columns": list(BATCH_COLUMNS),
        "rows": [[r.get(c) for c in BATCH_COLUMNS] for r in rows]}
    write_profile(doc, Path(json_path))
    return doc
