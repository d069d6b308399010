"""The slot context: worker requests, the caller's :class:`BatchEngine` and the
:class:`SlotDriver` that runs continuous batching for a replay (see :mod:`profiler.batch`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from profiler.batch.fit import slot_cells
from profiler.engine import Engine, EngineError, _rss, _Worker, gpu_bytes_of

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
                "n_ctx": int(ctx.n_ctx()), "n_gpu_layers": n_gpu_layers,
                # what the model was loaded with (the hook in profiler.cpuopts sets it)
                "extra_bufts": bool(getattr(mparams, "use_extra_bufts", True))}

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
            self._first_compute_fault(self.b_path)  # tests only (PLANNER_FAULT_CRASHES)
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
    # the crash fallback (profiler.engine.Engine._guarded) covers the slot calls too: a
    # slot context's first batched decode (its load's warm-up, or its first step) is where
    # llama.cpp's AMX path crashes
    _LOADS = (*Engine._LOADS, "batch_load")
    _FIRST_COMPUTE = (*Engine._FIRST_COMPUTE, "batch_load", "batch_step")
    _PROVES = (*Engine._PROVES, "batch_step")
    _JOURNALED = (*Engine._JOURNALED, "batch_add", "batch_remove", "batch_truncate")

    def batch_load(self, path: str | Path, *, n_ctx: int, n_parallel: int,
                   n_gpu_layers: int = 0, n_batch: int = 512, use_mmap: bool = False,
                   tensor_split: Sequence[float] | None = None, warmup: bool = True,
                   unified: bool = True) -> dict[str, Any]:
        """Load a model into a context of ``n_parallel`` slots of ``n_ctx`` tokens each."""
        r = self._guarded("batch_load", path=str(path), n_gpu_layers=n_gpu_layers, n_ctx=n_ctx,
                       n_parallel=n_parallel, n_batch=n_batch, use_mmap=use_mmap,
                       tensor_split=list(tensor_split) if tensor_split else None,
                       warmup=warmup, unified=unified)
        self.n_layers, self.n_ctx = r["n_layers"], r["n_ctx"]
        return dict(r)

    def batch_add(self, seq: int, tokens: Sequence[int], n_decode: int) -> None:
        """Put a request in slot ``seq``: its prompt is prefilled in the next step's batch,
        then it generates ``n_decode`` tokens (-1: until removed)."""
        self._guarded("batch_add", seq=int(seq), tokens=[int(t) for t in tokens],
                   n_decode=int(n_decode))

    def batch_remove(self, seq: int) -> None:
        self._guarded("batch_remove", seq=int(seq))

    def batch_truncate(self, seq: int, n_tokens: int, remaining: int = -1) -> None:
        self._guarded("batch_truncate", seq=int(seq), n_tokens=int(n_tokens),
                   remaining=int(remaining))

    def batch_tokens(self, seq: int) -> list[int]:
        return list(self._call("batch_tokens", seq=int(seq)))

    def batch_step(self, max_steps: int | None = None, max_s: float | None = None
                   ) -> BatchResult:
        t0 = time.perf_counter()
        r = self._guarded("batch_step", max_steps=max_steps, max_s=max_s)
        return BatchResult(tuple(StepRecord(**s) for s in r["steps"]), tuple(r["finished"]),
                           {int(k): int(v) for k, v in r["produced"].items()}, r["seconds"],
                           time.perf_counter() - t0)


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
