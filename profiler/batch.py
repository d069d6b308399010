"""Parallel slots: one llama.cpp context decoding several sequences together.

``llama-server --parallel N`` (and Ollama's ``OLLAMA_NUM_PARALLEL``) keep N
request states in one context (``n_seq_max = N``, ``n_ctx`` cells per slot) and
advance every active sequence by one token per ``llama_decode`` call: continuous
batching, where a new request's prompt joins the batch of the sequences already
decoding and finished ones leave between steps. :class:`BatchEngine` drives that
through llama-cpp-python's low-level API (``llama_batch`` with several sequence
ids) in the same kind of worker process as :class:`profiler.engine.Engine`; the
executor replays slot plans with it and :func:`measure_batch` profiles its step
time. The KV cache is unified (``kv_unified``, llama-server's default since it
went to several slots): one buffer of ``n_parallel * n_ctx`` cells whose used
part every token of a step attends over. (Separate streams per slot make
llama.cpp split a prompt that joins decoding sequences into one micro-batch per
token, many times slower on the CPU.)

A step's time is fitted (:func:`fit_batch`) as
``a + e*batched + b*batch_tokens + c*n_outputs + d*attn_cells``: the weights are
read once per step (a), a batch of more than one token switches llama.cpp from
matrix-vector to matrix-matrix kernels (e), every token in the batch costs its
share of the matrix products (b), every sequence that produces a token its
output-layer row and sampling (c), and every token attends over the cache's
used cells, rounded up to llama.cpp's KV padding (d).

Example
-------
>>> with BatchEngine(threads=2) as eng:                   # doctest: +SKIP
...     eng.batch_load("model.gguf", n_ctx=1024, n_parallel=4)
...     eng.batch_add(0, prompt_a, n_decode=32)
...     eng.batch_add(1, prompt_b, n_decode=8)
...     out = eng.batch_step()                             # until a sequence finishes
...     out.finished                                       # (1,)
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from profiler.engine import Engine, EngineError, _rss, _Worker, gpu_bytes_of
from profiler.fit import KV_PAD, LinearFit, _fit_weighted, _mape, _select_features

BATCH_QUANTITY = "batch_step_s"
BATCH_FEATURES = ("batched", "batch_tokens", "n_outputs", "attn_cells")
BATCH_DOC = ("seconds of one llama_decode over a batch of several sequences: a + "
             "e*batched + b*batch_tokens + c*n_outputs + d*attn_cells; batched = 1 when the "
             "batch holds more than one token (matrix-matrix kernels instead of "
             "matrix-vector), attn_cells = batch_tokens times the unified cache's used cells "
             "(cached tokens of all slots after the step, rounded up to the KV padding)")
#: columns of the batch measurement journal (``<build>.batch.csv``)
BATCH_COLUMNS = ("kind", "setting", "n_gpu_layers", "n_ctx", "n_parallel", "active", "depth",
                 "prompt_tokens", "attn_cells", "batch_tokens", "n_outputs", "threads",
                 "repetition", "value", "unit", "timestamp")


def slot_cells(cached: float) -> float:
    """KV cells one slot's attention reads with ``cached`` tokens (after the step)."""
    return float(math.ceil(max(cached, 1) / KV_PAD) * KV_PAD)


def batch_features(batch_tokens: float, n_outputs: float, attn_cells: float
                   ) -> dict[str, float]:
    """Features of one step: tokens in the batch, rows of logits, attention cells."""
    return {"batched": 1.0 if batch_tokens > 1 else 0.0,
            "batch_tokens": float(batch_tokens), "n_outputs": float(n_outputs),
            "attn_cells": float(attn_cells)}


def step_features(active: int, depth: float, prompt_tokens: int = 0,
                  prompt_context: int = 0) -> dict[str, float]:
    """A step with ``active`` decoding sequences at ``depth`` cached tokens each, plus
    (``prompt_tokens > 0``) one joining prompt prefilled in the same batch (after
    ``prompt_context`` tokens already in its slot: a recompute)."""
    tokens = active + prompt_tokens
    outputs = active + (1 if prompt_tokens else 0)
    cached = active * (depth + 1) + (prompt_context + prompt_tokens if prompt_tokens else 0)
    return batch_features(tokens, outputs, tokens * slot_cells(cached))


# --------------------------------------------------------------------------- worker side


@dataclass
class _Seq:
    pos: int = 0  # tokens in the cache
    prompt: list[int] = field(default_factory=list)  # still to prefill
    next_token: int | None = None  # to feed at the next step (from the last logits)
    remaining: int = 0  # tokens still to generate (-1: until removed)
    produced: list[int] = field(default_factory=list)


class BatchWorker(_Worker):
    """:class:`profiler.engine._Worker` plus a context with ``n_seq_max`` slots."""

    def __init__(self, threads: int | None, extra_bufts: bool | None, ignore_env: bool) -> None:
        super().__init__(threads, extra_bufts, ignore_env)
        self.b_model: Any = None
        self.b_ctx: Any = None
        self.b_batch: Any = None
        self.b_cap = 0
        self.b_parallel = 0
        self.b_ctx_per_seq = 0
        self.seqs: dict[int, _Seq] = {}
        self.b_path = ""

    def batch_load(self, path: str, n_gpu_layers: int, n_ctx: int, n_parallel: int,
                   n_batch: int, use_mmap: bool, tensor_split: list[float] | None,
                   warmup: bool, unified: bool = True) -> dict[str, Any]:
        import ctypes

        from llama_cpp import _internals as internals

        lc = self.llama_cpp
        if self.b_ctx is not None or self.s.llm is not None:
            raise EngineError("a model is already loaded; unload it first")
        if not Path(path).is_file():
            raise EngineError(f"model file not found: {path}")
        if n_parallel < 1:
            raise EngineError("n_parallel must be >= 1")
        t0 = time.perf_counter()
        mparams = lc.llama_model_default_params()  # extra buffer types hooked there
        mparams.n_gpu_layers = n_gpu_layers
        if hasattr(mparams, "load_mode"):
            mparams.load_mode = lc.LLAMA_LOAD_MODE_MMAP if use_mmap else lc.LLAMA_LOAD_MODE_NONE
        else:  # pragma: no cover - older bindings
            mparams.use_mmap = use_mmap
        if tensor_split:
            arr = (ctypes.c_float * lc.LLAMA_MAX_DEVICES)(*tensor_split)
            self.s.extra["tensor_split"] = arr  # keep alive while the model lives
            mparams.tensor_split = arr
            mparams.split_mode = lc.LLAMA_SPLIT_MODE_LAYER
        model = internals.LlamaModel(path_model=path, params=mparams, verbose=False)
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx * n_parallel
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_parallel
        cparams.kv_unified = unified
        cparams.n_threads = cparams.n_threads_batch = self.threads
        try:
            ctx = internals.LlamaContext(model=model, params=cparams, verbose=False)
        except Exception:
            model.close()
            raise
        self.b_model, self.b_ctx = model, ctx
        self.b_cap = n_batch
        self.b_batch = lc.llama_batch_init(n_batch, 0, 1)
        self.b_parallel, self.b_ctx_per_seq = n_parallel, n_ctx
        self.b_path = path
        self.seqs = {}
        self.n_vocab_b = int(lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model.model)))
        t1 = time.perf_counter()
        if warmup:
            self.batch_add(0, [1], 1)
            self.batch_step(1, None)
            self.batch_remove(0)
        t2 = time.perf_counter()
        return {"seconds": t2 - t0, "warmup_seconds": t2 - t1, "rss_bytes": _rss(),
                "gpu_bytes": gpu_bytes_of(__import__("os").getpid()) if n_gpu_layers > 0
                else 0,
                "n_layers": int(lc.llama_model_n_layer(model.model)), "n_vocab": self.n_vocab_b,
                "n_ctx": int(ctx.n_ctx()), "n_gpu_layers": n_gpu_layers}

    def _bneed(self) -> Any:
        if self.b_ctx is None:
            raise EngineError("no slot context loaded (batch_load first)")
        return self.b_ctx

    def batch_add(self, seq: int, tokens: list[int], n_decode: int) -> dict[str, Any]:
        self._bneed()
        if not 0 <= seq < self.b_parallel:
            raise EngineError(f"sequence {seq} outside the {self.b_parallel} slots")
        if seq in self.seqs:
            raise EngineError(f"slot {seq} is busy")
        if not tokens:
            raise EngineError("a sequence needs at least one prompt token")
        if len(tokens) + max(0, n_decode) > self.b_ctx_per_seq:
            raise EngineError(f"context full: {len(tokens)} + {n_decode} tokens > n_ctx "
                              f"{self.b_ctx_per_seq} per slot")
        self.seqs[seq] = _Seq(prompt=[int(t) for t in tokens], remaining=int(n_decode))
        return {"n_active": len(self.seqs)}

    def batch_remove(self, seq: int) -> dict[str, Any]:
        ctx = self._bneed()
        self.seqs.pop(seq, None)
        ctx.kv_cache_seq_rm(seq, -1, -1)
        return {"n_active": len(self.seqs)}

    def batch_truncate(self, seq: int, n_tokens: int, remaining: int) -> dict[str, Any]:
        """Rewind ``seq`` to ``n_tokens`` cached tokens and give it ``remaining`` to generate."""
        ctx = self._bneed()
        s = self.seqs.get(seq)
        if s is None or s.prompt or not 0 < n_tokens <= s.pos:
            raise EngineError(f"cannot truncate slot {seq} to {n_tokens}")
        ctx.kv_cache_seq_rm(seq, n_tokens, -1)
        s.pos, s.remaining = n_tokens, remaining
        return {"n_tokens": n_tokens}

    def _argmax(self, i: int) -> int:
        lc = self.llama_cpp
        ptr = lc.llama_get_logits_ith(self.b_ctx.ctx, i)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab_b,))))

    def batch_step(self, max_steps: int | None, max_s: float | None) -> dict[str, Any]:
        """Run decode steps until a sequence finishes, ``max_steps`` steps or ``max_s`` seconds.

        Each step holds one token of every decoding sequence and, for sequences
        still prefilling, as much of their prompt as fits in ``n_batch``.
        """
        lc = self.llama_cpp
        ctx = self._bneed()
        steps: list[dict[str, Any]] = []
        finished: list[int] = []
        t_begin = time.perf_counter()
        b = self.b_batch
        while max_steps is None or len(steps) < max_steps:
            n = 0
            outs: list[tuple[int, int, bool]] = []  # (batch index, seq, decoding)
            n_dec = n_prompt = 0
            for seq, s in sorted(self.seqs.items()):
                if s.prompt or s.remaining == 0:
                    continue
                if n >= self.b_cap:
                    break
                tok = s.next_token if s.next_token is not None else 0
                b.token[n], b.pos[n], b.n_seq_id[n] = tok, s.pos, 1
                b.seq_id[n][0] = seq
                b.logits[n] = 1
                outs.append((n, seq, True))
                s.pos += 1
                s.produced.append(tok)
                n += 1
                n_dec += 1
            for seq, s in sorted(self.seqs.items()):
                if not s.prompt or n >= self.b_cap:
                    continue
                take = min(len(s.prompt), self.b_cap - n)
                for k in range(take):
                    b.token[n], b.pos[n], b.n_seq_id[n] = s.prompt[k], s.pos + k, 1
                    b.seq_id[n][0] = seq
                    b.logits[n] = 1 if (k == take - 1 and take == len(s.prompt)) else 0
                    n += 1
                if take == len(s.prompt):
                    outs.append((n - 1, seq, False))
                s.pos += take
                n_prompt += take
                del s.prompt[:take]
            if n == 0:
                break
            b.n_tokens = n
            attn = n * slot_cells(sum(q.pos for q in self.seqs.values()))
            if s_pos_over := [q for q, s in self.seqs.items() if s.pos > self.b_ctx_per_seq]:
                raise EngineError(f"context full in slot {s_pos_over[0]}")
            t0 = time.perf_counter()
            rc = int(lc.llama_decode(ctx.ctx, b))
            if rc != 0:
                raise EngineError(f"llama_decode returned {rc}")
            for idx, seq, decoding in outs:
                s = self.seqs[seq]
                s.next_token = self._argmax(idx)
                if decoding and s.remaining > 0:
                    s.remaining -= 1
                    if s.remaining == 0:
                        finished.append(seq)
            dt = time.perf_counter() - t0
            steps.append({"seconds": dt, "decode_tokens": n_dec, "prompt_tokens": n_prompt,
                          "n_outputs": len(outs), "attn_cells": attn})
            self.proven.add(self.b_path)
            if finished or (max_s is not None and time.perf_counter() - t_begin >= max_s):
                break
        return {"steps": steps, "finished": finished,
                "produced": {q: len(s.produced) for q, s in self.seqs.items()},
                "seconds": time.perf_counter() - t_begin}

    def batch_tokens(self, seq: int) -> list[int]:
        return list(self.seqs[seq].produced) if seq in self.seqs else []

    def unload(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        if self.b_ctx is not None:
            self.llama_cpp.llama_batch_free(self.b_batch)
            self.b_ctx.close()
            self.b_model.close()
            self.b_ctx = self.b_model = self.b_batch = None
            self.seqs = {}
        out = super().unload()
        out["seconds"] = time.perf_counter() - t0
        return out


# --------------------------------------------------------------------------- caller side


@dataclass(frozen=True)
class StepRecord:
    seconds: float
    decode_tokens: int
    prompt_tokens: int
    n_outputs: int
    attn_cells: float


@dataclass(frozen=True)
class BatchResult:
    steps: tuple[StepRecord, ...]
    finished: tuple[int, ...]
    produced: dict[int, int]
    seconds: float
    wall_s: float


class BatchEngine(Engine):
    """:class:`profiler.engine.Engine` with a slot context (``batch_*`` calls)."""

    _worker_cls = BatchWorker

    def batch_load(self, path: str | Path, *, n_ctx: int, n_parallel: int,
                   n_gpu_layers: int = 0, n_batch: int = 512, use_mmap: bool = False,
                   tensor_split: Sequence[float] | None = None, warmup: bool = True,
                   unified: bool = True) -> dict[str, Any]:
        """Load a model into a context of ``n_parallel`` slots of ``n_ctx`` tokens each."""
        r = self._call("batch_load", path=str(path), n_gpu_layers=n_gpu_layers, n_ctx=n_ctx,
                       n_parallel=n_parallel, n_batch=n_batch, use_mmap=use_mmap,
                       tensor_split=list(tensor_split) if tensor_split else None,
                       warmup=warmup, unified=unified)
        self.n_layers, self.n_ctx = r["n_layers"], r["n_ctx"]
        return dict(r)

    def batch_add(self, seq: int, tokens: Sequence[int], n_decode: int) -> None:
        """Put a request in slot ``seq``: its prompt is prefilled in the next step's batch,
        then it generates ``n_decode`` tokens (-1: until removed)."""
        self._call("batch_add", seq=int(seq), tokens=[int(t) for t in tokens],
                   n_decode=int(n_decode))

    def batch_remove(self, seq: int) -> None:
        self._call("batch_remove", seq=int(seq))

    def batch_truncate(self, seq: int, n_tokens: int, remaining: int = -1) -> None:
        self._call("batch_truncate", seq=int(seq), n_tokens=int(n_tokens),
                   remaining=int(remaining))

    def batch_tokens(self, seq: int) -> list[int]:
        return list(self._call("batch_tokens", seq=int(seq)))

    def batch_step(self, max_steps: int | None = None, max_s: float | None = None
                   ) -> BatchResult:
        t0 = time.perf_counter()
        r = self._call("batch_step", max_steps=max_steps, max_s=max_s)
        return BatchResult(tuple(StepRecord(**s) for s in r["steps"]), tuple(r["finished"]),
                           {int(k): int(v) for k, v in r["produced"].items()}, r["seconds"],
                           time.perf_counter() - t0)


# --------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class BatchConfig:
    """What :func:`measure_batch` measures."""

    actives: tuple[int, ...] = (1, 2, 4, 8)  #: decoding sequences per step
    depths: tuple[int, ...] = (32, 256)  #: cached tokens per sequence
    prompts: tuple[int, ...] = (16, 64)  #: prompt joining while others decode
    block: int = 8  #: decode steps per measurement
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
                        eng.batch_add(cfg.n_parallel - 1, _shifted(tokens, 99, p), 1)
                        r = eng.batch_step(max_steps=1)
                        eng.batch_remove(cfg.n_parallel - 1)
                        st = r.steps[0]
                        value, attn, outputs, btoks = (
                            st.seconds, st.attn_cells, st.n_outputs,
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


# --------------------------------------------------------------------------- fit


def _row_features(r: Mapping[str, Any]) -> dict[str, float]:
    return batch_features(float(r["batch_tokens"]), float(r["n_outputs"]),
                          float(r["attn_cells"]))


def fit_batch(rows: Sequence[Mapping[str, Any]]) -> LinearFit | None:
    """Fit :data:`BATCH_QUANTITY` on setting medians (weights 1/median^2), with a
    leave-one-setting-out held-out MAPE, as :func:`profiler.fit.fit_quantity` does."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r["kind"] == BATCH_QUANTITY:
            groups.setdefault(str(r["setting"]), []).append(r)
    if len(groups) < 3:
        return None
    keys = sorted(groups)
    x = np.array([[float(np.mean([_row_features(r)[f] for r in groups[k]]))
                   for f in BATCH_FEATURES] for k in keys])
    y = np.array([float(np.median([float(r["value"]) for r in groups[k]])) for k in keys])
    kept = _select_features(x, BATCH_FEATURES)
    coef, icpt = _fit_weighted(x[:, kept], y, True)
    xr = np.array([[_row_features(r)[f] for f in BATCH_FEATURES] for k in keys
                   for r in groups[k]])[:, kept]
    yr = np.array([float(r["value"]) for k in keys for r in groups[k]])
    preds = np.empty(len(keys))
    for i in range(len(keys)):
        mask = np.arange(len(keys)) != i
        kk = _select_features(x[mask], BATCH_FEATURES)
        c, b = _fit_weighted(x[mask][:, kk], y[mask], True)
        preds[i] = float(x[i, kk] @ c + b)
    ape = np.abs(preds - y) / np.abs(y)
    cv = {"method": "leave-one-setting-out", "target": "setting median",
          "mape": float(np.mean(ape)), "max_ape": float(np.max(ape)), "n_folds": len(keys)}
    return LinearFit(quantity=BATCH_QUANTITY, unit="s",
                     features=tuple(BATCH_FEATURES[j] for j in kept),
                     coefficients=tuple(float(c) for c in coef), intercept=icpt, cv=cv,
                     train_mape=_mape(xr @ coef + icpt, yr), n_settings=len(keys),
                     n_rows=len(yr),
                     dropped=tuple(n for j, n in enumerate(BATCH_FEATURES) if j not in kept),
                     doc=BATCH_DOC)


def predict_step(fit: LinearFit | Mapping[str, Any], active: int, depth: float,
                 prompt_tokens: int = 0) -> float:
    """Seconds of one step with ``active`` decoding sequences at ``depth`` (and a joining
    prompt of ``prompt_tokens``), from a fit (or its JSON)."""
    f = fit if isinstance(fit, LinearFit) else LinearFit.from_json(fit)
    return max(1e-6, f.predict(step_features(active, depth, prompt_tokens)))


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
            f"worker) averaged over {cfg.block} steps for decode settings, a single step for "
            "a prompt joining the decoding sequences; the cache is rewound between "
            "repetitions"),
        "settings": {"actives": list(cfg.actives), "depths": list(cfg.depths),
                     "prompts": list(cfg.prompts), "block": cfg.block, "reps": cfg.reps,
                     "n_parallel": cfg.n_parallel, "n_ctx_per_slot": cfg.n_ctx},
        "columns": list(BATCH_COLUMNS),
        "rows": [[r.get(c) for c in BATCH_COLUMNS] for r in rows]}
    write_profile(doc, Path(json_path))
    return doc


# --------------------------------------------------------------------------- replay driver


class SlotDriver:
    """Continuous batching on one :class:`BatchEngine` for callers in several threads.

    :meth:`generate` (any thread) queues a request and blocks until it has
    generated its tokens; one driver thread admits queued requests into free slots
    between steps (their prompts join the next step's batch), steps the engine,
    and hands finished sequences back. Only the driver thread talks to the engine
    while it runs; load and unload happen before :meth:`start` and after :meth:`stop`.
    """

    def __init__(self, eng: BatchEngine, n_parallel: int, step_s: float = 0.02) -> None:
        import threading

        self.eng, self.n_parallel, self.step_s = eng, n_parallel, step_s
        self.cond = threading.Condition()
        self.queue: list[dict[str, Any]] = []
        self.active: dict[int, dict[str, Any]] = {}
        self.closed = False
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.thread.join(30)

    def generate(self, prompt: Sequence[int], n_decode: int) -> list[int]:
        job: dict[str, Any] = {"prompt": list(prompt), "n": int(n_decode), "done": False,
                               "tokens": None, "error": None}
        with self.cond:
            if self.closed:
                raise EngineError("the slot driver has stopped")
            self.queue.append(job)
            self.cond.notify_all()
            while not job["done"]:
                self.cond.wait()
        if job["error"] is not None:
            raise job["error"]
        return list(job["tokens"])

    def _fail_all(self, exc: BaseException) -> None:
        with self.cond:
            for job in [*self.active.values(), *self.queue]:
                job["error"], job["done"] = exc, True
            self.active.clear()
            self.queue.clear()
            self.cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.closed and not self.queue and not self.active:
                    self.cond.wait()
                if self.closed and not self.queue and not self.active:
                    return
                free = [s for s in range(self.n_parallel) if s not in self.active]
                admit = []
                while free and self.queue:
                    admit.append((free.pop(0), self.queue.pop(0)))
            try:
                for seq, job in admit:
                    self.eng.batch_add(seq, job["prompt"], job["n"])
                    self.active[seq] = job
                r = self.eng.batch_step(max_s=self.step_s)
                finished = []
                for seq in r.finished:
                    tokens = self.eng.batch_tokens(seq)
                    self.eng.batch_remove(seq)
                    finished.append((seq, tokens))
            except BaseException as exc:  # a crashed engine fails every request on it
                self._fail_all(exc)
                continue
            with self.cond:
                for seq, tokens in finished:
                    job = self.active.pop(seq)
                    job["tokens"], job["done"] = tokens, True
                self.cond.notify_all()
