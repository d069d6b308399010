"""A llama.cpp engine in its own worker process: load, prefill, decode, save/restore, unload.

The profiler measures with it and the executor replays plans with it. Each
:class:`Engine` owns one worker process (``multiprocessing`` *spawn* context)
that holds at most one loaded model and the state of one request. Every step is
timed with ``time.perf_counter`` inside the worker, so the figures exclude the
pipe round trip; the caller-side wall time is returned beside them.

A crash of llama.cpp (a segfault, an abort, the OOM killer) ends only the worker;
the caller sees :class:`EngineCrashed`. Unloading frees the model inside the
worker; :meth:`Engine.close` ends the worker, which returns all of its memory.

Example
-------
>>> with Engine(threads=2) as eng:                       # doctest: +SKIP
...     eng.load("model.gguf", n_ctx=2048)
...     eng.prefill(eng.tokenize("Hello there"))
...     out = eng.decode(16)                              # exactly 16 tokens, EOS ignored
...     state = eng.save_state()                          # bytes, held by the caller
...     eng.reset()
...     eng.restore_state(state)                          # continue where it left off
...     eng.unload()
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from profiler import cpuopts


class EngineError(RuntimeError):
    """The engine refused a request (bad path, no model loaded, context full...)."""


class EngineCrashed(RuntimeError):
    """The worker process died (crash, abort, killed); the engine is gone.

    ``exitcode`` is the worker's exit code (negative: the signal that ended it),
    ``None`` when unknown (a time-out, a closed pipe).
    """

    def __init__(self, message: str, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode


@dataclass(frozen=True)
class Fallback:
    """A worker that died from a signal on a model's first compute, restarted without
    llama.cpp's extra buffer types (CPU repack, AMX)."""

    model: str  #: the GGUF file
    during: str  #: the call that crashed: load (its warm-up eval), prefill, decode...
    exitcode: int | None  #: negative: the signal
    restart_s: float  #: caller-side seconds to restart the worker and reload the model

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LoadInfo:
    """What :meth:`Engine.load` measured."""

    seconds: float  #: model file read + context creation (+ warm-up), inside the worker
    warmup_seconds: float  #: the one-token warm-up eval included in ``seconds`` (0 if none)
    rss_bytes: int  #: worker resident set after loading
    gpu_bytes: int | None  #: NVML per-process GPU memory of the worker, None without NVML
    n_layers: int
    n_vocab: int
    n_ctx: int
    n_gpu_layers: int
    wall_s: float  #: caller-side wall time of the whole call


@dataclass(frozen=True)
class StepInfo:
    """Timing of a prefill (or a restore/reset) step."""

    seconds: float
    n_tokens: int  #: tokens in the cache afterwards
    wall_s: float


@dataclass(frozen=True)
class DecodeInfo:
    """Timing of :meth:`Engine.decode`: exactly ``len(tokens)`` generated tokens."""

    seconds: float
    per_token_s: tuple[float, ...]
    tokens: tuple[int, ...]
    n_tokens: int  #: tokens in the cache afterwards
    wall_s: float


@dataclass(frozen=True)
class SavedState:
    """One request's state copied out of an engine (lives in the caller's RAM)."""

    data: bytes  #: ``llama_state_seq_get_data`` of sequence 0
    tokens: tuple[int, ...]  #: the tokens in the cache
    next_token: int  #: greedy next token from the last logits (logits are not in ``data``)
    seconds: float  #: copy time inside the worker
    wall_s: float = 0.0  #: caller-side time including the transfer through the pipe

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class SavedStateFile:
    """One request's state saved to a file (in /dev/shm: host RAM, no pipe)."""

    path: str
    nbytes: int  #: bytes llama.cpp wrote (state plus its token list)
    n_tokens: int
    next_token: int  #: greedy next token from the last logits (logits are not saved)
    seconds: float  #: time inside the worker
    wall_s: float  #: caller-side time of the whole call


def state_dir() -> Path:
    """Where saved states go: a private folder in /dev/shm (RAM), else the temp folder."""
    import tempfile

    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    d = base / f"planner-kv-{os.getpid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


@dataclass(frozen=True)
class MemoryInfo:
    rss_bytes: int
    gpu_bytes: int | None


@dataclass
class _WorkerState:
    llm: Any = None
    pending: int | None = None  # next token to feed, when logits are not at hand
    n_vocab: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- worker side


def gpu_bytes_of(pid: int) -> int | None:
    """GPU memory NVML reports for process ``pid`` on all GPUs; None without NVML."""
    try:
        import pynvml
    except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        total = 0
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    total += int(proc.usedGpuMemory)
        return total
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _malloc_trim() -> None:
    """glibc's malloc_trim(0): return free heap pages to the OS (no-op elsewhere)."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(Exception):
        name = ctypes.util.find_library("c")
        if name:
            ctypes.CDLL(name).malloc_trim(0)


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class _Worker:
    """Runs inside the worker process; one method per request kind."""

    def __init__(self, threads: int | None, extra_bufts: bool | None, ignore_env: bool) -> None:
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.threads = threads or os.cpu_count() or 1
        self.s = _WorkerState()
        self.recv_buf: bytearray | None = None
        self.proven: set[str] = set()  # model files with a completed prefill or decode
        try:
            self.system_info = llama_cpp.llama_print_system_info().decode(errors="replace")
        except Exception:
            self.system_info = ""
        self.switchable = cpuopts.supports_switch(llama_cpp)
        self.extra = cpuopts.resolve_extra_bufts(self.system_info, extra_bufts,
                                                 {} if ignore_env else None)
        if self.switchable:
            cpuopts.hook_model_params(llama_cpp, self.extra.enabled)
        elif not self.extra.enabled:  # an old build: llama.cpp's default (on) is all we have
            self.extra = cpuopts.ExtraBufts(True, "build-has-no-switch")

    # -- helpers
    def _need(self) -> Any:
        if self.s.llm is None:
            raise EngineError("no model loaded")
        return self.s.llm

    def _argmax_last(self) -> int:
        import numpy as np

        llm = self._need()
        ptr = self.llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        logits = np.ctypeslib.as_array(ptr, shape=(self.s.n_vocab,))
        return int(np.argmax(logits))

    def _eval(self, tokens: Sequence[int]) -> None:
        llm = self._need()
        if llm.n_tokens + len(tokens) > llm.n_ctx():
            raise EngineError(
                f"context full: {llm.n_tokens} + {len(tokens)} tokens > n_ctx {llm.n_ctx()}"
            )
        llm.eval(list(tokens))

    # -- requests
    def ping(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "version": getattr(self.llama_cpp, "__version__", "unknown"),
            "gpu_offload": bool(self.llama_cpp.llama_supports_gpu_offload()),
            "rss_bytes": _rss(),
            "extra_bufts": self.extra.enabled,
            "extra_bufts_reason": self.extra.reason,
            "system_info": self.system_info,
        }

    def load(self, path: str, n_gpu_layers: int, n_ctx: int, n_batch: int, use_mmap: bool,
             warmup: bool) -> dict[str, Any]:
        if self.s.llm is not None:
            raise EngineError("a model is already loaded; unload it first")
        if not Path(path).is_file():
            raise EngineError(f"model file not found: {path}")
        t0 = time.perf_counter()
        llm = self.llama_cpp.Llama(
            model_path=path, n_gpu_layers=n_gpu_layers, n_ctx=n_ctx, n_batch=n_batch,
            n_threads=self.threads, n_threads_batch=self.threads, use_mmap=use_mmap,
            verbose=False, logits_all=False,
        )
        self.s = _WorkerState(llm=llm, n_vocab=int(llm.n_vocab()))
        t1 = time.perf_counter()
        if warmup:
            bos = llm.token_bos()
            llm.eval([bos if bos >= 0 else 0])
            llm.reset()
            llm._ctx.kv_cache_clear()
        t2 = time.perf_counter()
        return {
            "seconds": t2 - t0, "warmup_seconds": t2 - t1, "rss_bytes": _rss(),
            "gpu_bytes": gpu_bytes_of(os.getpid()) if n_gpu_layers > 0 else 0,
            "n_layers": int(self.llama_cpp.llama_model_n_layer(llm.model)),
            "n_vocab": self.s.n_vocab, "n_ctx": int(llm.n_ctx()), "n_gpu_layers": n_gpu_layers,
        }

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        return list(self._need().tokenize(text.encode("utf-8"), add_bos=add_bos, special=False))

    def reset(self) -> dict[str, Any]:
        llm = self._need()
        t0 = time.perf_counter()
        llm.reset()
        llm._ctx.kv_cache_clear()
        self.s.pending = None
        return {"seconds": time.perf_counter() - t0, "n_tokens": 0}

    def _first_compute_fault(self) -> None:
        """Test-only: die like a llama.cpp segfault on a model's first prefill or decode."""
        path = str(self._need().model_path)
        if path not in self.proven and cpuopts.take_injected_crash():
            import signal

            os.kill(os.getpid(), signal.SIGSEGV)

    def prefill(self, tokens: list[int]) -> dict[str, Any]:
        if not tokens:
            raise EngineError("prefill needs at least one token")
        self._first_compute_fault()
        t0 = time.perf_counter()
        self._eval(tokens)
        self.s.pending = None
        dt = time.perf_counter() - t0
        self.proven.add(str(self._need().model_path))
        return {"seconds": dt, "n_tokens": int(self._need().n_tokens)}

    def decode(self, n: int) -> dict[str, Any]:
        llm = self._need()
        if llm.n_tokens == 0:
            raise EngineError("decode needs a prefilled prompt")
        self._first_compute_fault()
        per: list[float] = []
        out: list[int] = []
        t_start = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            if self.s.pending is not None:
                tok, self.s.pending = self.s.pending, None
            else:
                tok = self._argmax_last()  # greedy; EOS is just another token here
            self._eval([tok])
            per.append(time.perf_counter() - t0)
            out.append(tok)
        self.proven.add(str(llm.model_path))
        return {"seconds": time.perf_counter() - t_start, "per_token_s": per, "tokens": out,
                "n_tokens": int(llm.n_tokens)}

    def truncate(self, n_tokens: int) -> dict[str, Any]:
        llm = self._need()
        if not 0 < n_tokens <= llm.n_tokens:
            raise EngineError(f"cannot truncate {llm.n_tokens} cached tokens to {n_tokens}")
        t0 = time.perf_counter()
        if n_tokens < llm.n_tokens:
            # the token that followed position n_tokens-1 is the greedy continuation
            self.s.pending = int(llm.input_ids[n_tokens])
            llm._ctx.kv_cache_seq_rm(0, n_tokens, -1)
            llm.n_tokens = n_tokens
        return {"seconds": time.perf_counter() - t0, "n_tokens": n_tokens}

    def save_state(self) -> dict[str, Any]:
        import ctypes

        llm = self._need()
        t0 = time.perf_counter()
        size = int(self.llama_cpp.llama_state_seq_get_size(llm._ctx.ctx, 0))
        buf = self.s.extra.get("state_buf")
        if buf is None or len(buf) < size:  # grow-only buffer: no page faults on reuse
            buf = (ctypes.c_uint8 * size)()
            self.s.extra["state_buf"] = buf
        n = int(self.llama_cpp.llama_state_seq_get_data(llm._ctx.ctx, buf, size, 0))
        data = memoryview(buf).cast("B")[:n]
        nxt = self.s.pending if self.s.pending is not None else self._argmax_last()
        dt = time.perf_counter() - t0
        tokens = [int(t) for t in llm.input_ids[: llm.n_tokens]]
        return {"data": data, "tokens": tokens, "next_token": nxt, "seconds": dt}

    def save_state_file(self, path: str) -> dict[str, Any]:
        """Write sequence 0's state to ``path`` (llama-server's --slot-save-path way)."""
        llm = self._need()
        t0 = time.perf_counter()
        n = int(llm.n_tokens)
        toks = (self.llama_cpp.llama_token * max(1, n))(*llm.input_ids[:n])
        written = int(self.llama_cpp.llama_state_seq_save_file(
            llm._ctx.ctx, path.encode(), 0, toks, n))
        if written == 0:
            raise EngineError(f"llama_state_seq_save_file failed for {path}")
        nxt = self.s.pending if self.s.pending is not None else self._argmax_last()
        return {"seconds": time.perf_counter() - t0, "nbytes": written, "n_tokens": n,
                "next_token": nxt}

    def restore_state_file(self, path: str, next_token: int) -> dict[str, Any]:
        """Replace the request state with the one saved in ``path``."""
        import ctypes

        llm = self._need()
        t0 = time.perf_counter()
        llm.reset()
        llm._ctx.kv_cache_clear()
        cap = int(llm.n_ctx())
        toks = (self.llama_cpp.llama_token * cap)()
        n_out = ctypes.c_size_t(0)
        read = int(self.llama_cpp.llama_state_seq_load_file(
            llm._ctx.ctx, path.encode(), 0, toks, cap, ctypes.byref(n_out)))
        if read == 0:
            raise EngineError(f"llama_state_seq_load_file failed for {path} (state of "
                              "another model, or larger than n_ctx?)")
        n = int(n_out.value)
        llm.input_ids[:n] = toks[:n]
        llm.n_tokens = n
        self.s.pending = next_token
        return {"seconds": time.perf_counter() - t0, "n_tokens": n}

    def receive_buffer(self, n: int) -> memoryview:
        """A reusable (grow-only) buffer for incoming states: no page faults on reuse."""
        buf = self.recv_buf
        if buf is None or len(buf) < n:
            buf = self.recv_buf = bytearray(n)
        return memoryview(buf)[:n]

    def restore_state(self, data: memoryview, tokens: list[int], next_token: int
                      ) -> dict[str, Any]:
        import ctypes

        llm = self._need()
        if len(tokens) > llm.n_ctx():
            raise EngineError(f"state of {len(tokens)} tokens exceeds n_ctx {llm.n_ctx()}")
        t0 = time.perf_counter()
        llm.reset()
        llm._ctx.kv_cache_clear()
        buf = (ctypes.c_uint8 * len(data)).from_buffer(data)  # no copy
        ok = int(self.llama_cpp.llama_state_seq_set_data(llm._ctx.ctx, buf, len(data), 0))
        if ok == 0:
            raise EngineError("llama_state_seq_set_data failed (state of another model?)")
        llm.input_ids[: len(tokens)] = tokens
        llm.n_tokens = len(tokens)
        self.s.pending = next_token
        return {"seconds": time.perf_counter() - t0, "n_tokens": len(tokens)}

    def perf(self, reset: bool) -> dict[str, Any]:
        llm = self._need()
        d = self.llama_cpp.llama_perf_context(llm._ctx.ctx)
        out = {"prompt_eval_s": d.t_p_eval_ms / 1e3, "prompt_tokens": int(d.n_p_eval),
               "eval_s": d.t_eval_ms / 1e3, "eval_tokens": int(d.n_eval)}
        if reset:
            self.llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
        return out

    def memory(self) -> dict[str, Any]:
        gpu = gpu_bytes_of(os.getpid()) if self.s.llm is not None else 0
        return {"rss_bytes": _rss(), "gpu_bytes": gpu}

    def unload(self) -> dict[str, Any]:
        import gc

        t0 = time.perf_counter()
        if self.s.llm is not None:
            self.s.llm.close()
        self.s = _WorkerState()
        gc.collect()
        _malloc_trim()  # give freed heap back to the OS, as a server process's exit would
        return {"seconds": time.perf_counter() - t0, "rss_bytes": _rss()}

    def crash(self) -> None:  # for tests: simulate a llama.cpp abort
        os._exit(3)


def _worker_main(conn: Connection, threads: int | None, extra_bufts: bool | None = None,
                 ignore_env: bool = False, worker_cls: type[_Worker] | None = None) -> None:
    # Keep llama.cpp's C-level stderr chatter out of the caller's terminal.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        worker = (worker_cls or _Worker)(threads, extra_bufts, ignore_env)
    except BaseException as exc:  # llama_cpp missing or broken
        conn.send(("error", "EngineError", f"cannot start llama.cpp: {exc!r}"))
        return
    conn.send(("ok", worker.ping(), False))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            break
        name, kwargs = msg
        try:
            n_bytes = kwargs.pop("_with_bytes", None)
            if n_bytes is not None:  # large payloads skip pickling and extra copies
                kwargs["data"] = worker.receive_buffer(n_bytes)
                conn.recv_bytes_into(kwargs["data"])
            result = getattr(worker, name)(**kwargs)
            payload = result.pop("data", None) if isinstance(result, dict) else None
            conn.send(("ok", result, payload is not None))
            if payload is not None:
                conn.send_bytes(payload)
        except EngineError as exc:
            conn.send(("error", "EngineError", str(exc)))
        except Exception as exc:
            conn.send(("error", type(exc).__name__, f"{exc!r}\n{traceback.format_exc()}"))
    try:
        worker.unload()
    finally:
        conn.close()


# --------------------------------------------------------------------------- caller side


class Engine:
    """A handle on one worker process running llama.cpp.

    Parameters
    ----------
    threads:
        llama.cpp threads for decode and prefill (default: all CPUs).
    start_timeout_s:
        How long to wait for the worker to import llama.cpp.
    """

    #: after a fallback anywhere in this process, new engines start with extra buffer types off
    _process_fallback = False
    #: the worker-side class (a subclass adds requests, e.g. profiler.batch's slots)
    _worker_cls: type[_Worker] | None = None

    def __init__(self, threads: int | None = None, start_timeout_s: float = 120.0,
                 extra_bufts: bool | None = None) -> None:
        try:
            cpuopts.env_setting()
        except cpuopts.CpuOptionError as exc:
            raise EngineError(str(exc)) from None
        self.threads = threads or os.cpu_count() or 1
        self._threads_arg = threads
        self._start_timeout_s = start_timeout_s
        self._requested = False if Engine._process_fallback and extra_bufts is None \
            else extra_bufts
        self.fallbacks: list[Fallback] = []
        self._loaded: dict[str, Any] | None = None  # kwargs of the current load
        self._journal: list[tuple[str, dict[str, Any], bytes | None]] = []  # state calls since
        self._proven: set[str] = set()  # model files with a completed prefill or decode
        self._start(self._requested, ignore_env=False)
        self.idle_rss_bytes: int = self._info["rss_bytes"]
        self.n_layers = 0
        self.n_ctx = 0

    def _start(self, extra_bufts: bool | None, ignore_env: bool) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker_main,
                                 args=(child, self._threads_arg, extra_bufts, ignore_env,
                                       self._worker_cls),
                                 daemon=True)
        t0 = time.perf_counter()
        self._proc.start()
        child.close()
        self._closed = False
        info = self._receive(self._start_timeout_s, "start")
        self.spawn_s = time.perf_counter() - t0
        self._info = info
        self.version: str = info["version"]
        self.gpu_offload: bool = info["gpu_offload"]
        self.extra_bufts: bool = bool(info.get("extra_bufts", True))
        self.extra_bufts_reason: str = str(info.get("extra_bufts_reason", "default"))
        self.system_info: str = str(info.get("system_info", ""))

    @property
    def options(self) -> dict[str, Any]:
        """The engine's CPU options as recorded in profiles and replay reports."""
        return {"extra_bufts": self.extra_bufts, "extra_bufts_reason": self.extra_bufts_reason,
                "fallbacks": [f.to_json() for f in self.fallbacks]}

    # -- plumbing
    @property
    def pid(self) -> int:
        return int(self._proc.pid or 0)

    @property
    def alive(self) -> bool:
        return not self._closed and self._proc.is_alive()

    def _receive(self, timeout_s: float | None, what: str) -> Any:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                ready = self._conn.poll(0.05)
            except (EOFError, OSError):
                ready = True
            if ready:
                try:
                    msg = self._conn.recv()
                except (EOFError, OSError):
                    self._proc.join(5)
                    self._closed = True
                    raise EngineCrashed(
                        f"engine worker (pid {self._proc.pid}) died during {what}; "
                        f"exit code {self._proc.exitcode}", self._proc.exitcode
                    ) from None
                if msg[0] == "ok":
                    if len(msg) > 2 and msg[2]:
                        msg[1]["data"] = self._conn.recv_bytes()
                    return msg[1]
                _, kind, text = msg
                if kind == "EngineError":
                    raise EngineError(text)
                raise EngineError(f"{what} failed in the worker: {kind}: {text}")
            if not self._proc.is_alive():
                self._proc.join(1)
                self._closed = True
                raise EngineCrashed(
                    f"engine worker (pid {self._proc.pid}) died during {what}; "
                    f"exit code {self._proc.exitcode}", self._proc.exitcode
                )
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                raise EngineCrashed(f"engine worker timed out during {what} after {timeout_s}s")

    def _call(self, name: str, timeout_s: float | None = None, data: bytes | None = None,
              **kwargs: Any) -> Any:
        if self._closed:
            raise EngineCrashed("engine worker is closed")
        try:
            if data is not None:
                kwargs["_with_bytes"] = len(data)
            self._conn.send((name, kwargs))
            if data is not None:
                self._conn.send_bytes(data)
        except (BrokenPipeError, OSError):
            self._closed = True
            raise EngineCrashed(f"engine worker (pid {self._proc.pid}) is gone") from None
        return self._receive(timeout_s, name)

    _FIRST_COMPUTE = ("load", "prefill", "decode", "restore_state", "restore_state_file")

    def _guarded(self, name: str, data: bytes | None = None, **kwargs: Any) -> Any:
        """:meth:`_call` with the crash fallback.

        A worker that dies from a signal while a model has not yet completed a
        prefill or decode in it (its load warm-up, its first prefill or decode)
        is restarted once with llama.cpp's extra buffer types off; the model is
        loaded again, the request state replayed, and the call repeated. A second
        crash raises :class:`EngineCrashed` with what to try.
        """
        model = str(kwargs["path"]) if name == "load" else str((self._loaded or {}).get(
            "path", "?"))
        try:
            result = self._call(name, data=data, **kwargs)
        except EngineCrashed as exc:
            first = name in self._FIRST_COMPUTE and model not in self._proven
            signalled = exc.exitcode is not None and exc.exitcode < 0
            if not (first and signalled):
                raise
            if not self.extra_bufts or self.fallbacks:
                raise self._final_crash(exc, model, name) from None
            t0 = time.perf_counter()
            try:
                self._start(False, ignore_env=True)
                self.extra_bufts_reason = "fallback"
                Engine._process_fallback = True
                if name != "load" and self._loaded is not None:
                    self._call("load", **self._loaded)
                    for jname, jkw, jdata in self._journal:
                        self._call(jname, data=jdata, **jkw)
                self.fallbacks.append(Fallback(model, name, exc.exitcode,
                                               time.perf_counter() - t0))
                result = self._call(name, data=data, **kwargs)
            except EngineCrashed as exc2:
                if exc2.exitcode is not None and exc2.exitcode < 0:
                    raise self._final_crash(exc2, model, name) from None
                raise
        if name == "load":
            self._loaded = dict(kwargs)
            self._journal = []
        elif name in ("prefill", "decode"):
            self._proven.add(model)
            self._journal = []
        elif name in ("reset", "truncate", "restore_state", "restore_state_file") \
                and model not in self._proven:
            self._journal.append((name, dict(kwargs), data))
        return result

    def _final_crash(self, exc: EngineCrashed, model: str, during: str) -> EngineCrashed:
        """One line for a crash the fallback cannot help: model, CPU, build, what to try."""
        from profiler.devices import cpu_model_name

        sig = f"signal {-exc.exitcode}" if exc.exitcode is not None and exc.exitcode < 0 \
            else f"exit code {exc.exitcode}"
        features = ", ".join(f for f in ("AMX_INT8", "AVX512", "AVX2")
                             if f"{f} = 1" in self.system_info) or "none reported"
        tried = ("again after restarting it with extra buffer types off"
                 if self.fallbacks else "with extra buffer types off")
        return EngineCrashed(
            f"llama.cpp crashed ({sig}) during {during} of {Path(model).name} {tried}; "
            f"CPU: {cpu_model_name()}; llama.cpp: llama-cpp-python {self.version} "
            f"(CPU features {features}). Try: fewer threads (--threads 1), or rebuild "
            "llama-cpp-python without native CPU code: CMAKE_ARGS='-DGGML_NATIVE=OFF' pip "
            "install --force-reinstall --no-cache-dir llama-cpp-python", exc.exitcode)

    # -- public API
    def load(self, path: str | Path, *, n_gpu_layers: int = 0, n_ctx: int = 2048,
             n_batch: int = 512, use_mmap: bool = False, warmup: bool = True) -> LoadInfo:
        """Load a GGUF file. ``use_mmap=False`` reads the weights into the worker's RAM."""
        t0 = time.perf_counter()
        r = self._guarded("load", path=str(path), n_gpu_layers=n_gpu_layers, n_ctx=n_ctx,
                          n_batch=n_batch, use_mmap=use_mmap, warmup=warmup)
        self.n_layers, self.n_ctx = r["n_layers"], r["n_ctx"]
        return LoadInfo(wall_s=time.perf_counter() - t0, **r)

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return list(self._call("tokenize", text=text, add_bos=add_bos))

    def reset(self) -> StepInfo:
        """Forget the current request (empty the KV cache)."""
        t0 = time.perf_counter()
        r = self._guarded("reset")
        return StepInfo(wall_s=time.perf_counter() - t0, **r)

    def prefill(self, tokens: Sequence[int]) -> StepInfo:
        """Evaluate ``tokens`` after what is already in the cache."""
        t0 = time.perf_counter()
        r = self._guarded("prefill", tokens=[int(t) for t in tokens])
        return StepInfo(wall_s=time.perf_counter() - t0, **r)

    def decode(self, n: int) -> DecodeInfo:
        """Generate exactly ``n`` tokens greedily, ignoring end-of-sequence."""
        t0 = time.perf_counter()
        r = self._guarded("decode", n=int(n))
        return DecodeInfo(seconds=r["seconds"], per_token_s=tuple(r["per_token_s"]),
                          tokens=tuple(r["tokens"]), n_tokens=r["n_tokens"],
                          wall_s=time.perf_counter() - t0)

    def truncate(self, n_tokens: int) -> StepInfo:
        """Drop cached tokens after the first ``n_tokens`` (rewind the current request)."""
        t0 = time.perf_counter()
        r = self._guarded("truncate", n_tokens=int(n_tokens))
        return StepInfo(wall_s=time.perf_counter() - t0, **r)

    def save_state(self) -> SavedState:
        """Copy the current request's state (KV cache of sequence 0) out, into the caller."""
        t0 = time.perf_counter()
        r = self._call("save_state")
        return SavedState(data=r["data"], tokens=tuple(r["tokens"]), next_token=r["next_token"],
                          seconds=r["seconds"], wall_s=time.perf_counter() - t0)

    def restore_state(self, state: SavedState) -> StepInfo:
        """Replace the engine's request state with ``state`` (same model, any engine)."""
        t0 = time.perf_counter()
        r = self._guarded("restore_state", data=state.data, tokens=list(state.tokens),
                       next_token=state.next_token)
        return StepInfo(wall_s=time.perf_counter() - t0, **r)

    def save_state_file(self, path: str | Path) -> SavedStateFile:
        """Write the current request's state to ``path`` (llama_state_seq_save_file)."""
        t0 = time.perf_counter()
        r = self._call("save_state_file", path=str(path))
        return SavedStateFile(path=str(path), nbytes=r["nbytes"], n_tokens=r["n_tokens"],
                              next_token=r["next_token"], seconds=r["seconds"],
                              wall_s=time.perf_counter() - t0)

    def restore_state_file(self, state: SavedStateFile) -> StepInfo:
        """Replace the engine's request state with the one in ``state.path``."""
        t0 = time.perf_counter()
        r = self._guarded("restore_state_file", path=state.path, next_token=state.next_token)
        return StepInfo(wall_s=time.perf_counter() - t0, **r)

    def llama_perf(self, reset: bool = False) -> dict[str, float]:
        """llama.cpp's own timers (``llama_perf_context``) since the last reset.

        ``prompt_eval_s``/``prompt_tokens`` count batched evals (prefill);
        ``eval_s``/``eval_tokens`` single-token evals (decode).
        """
        return dict(self._call("perf", reset=reset))

    def memory(self) -> MemoryInfo:
        r = self._call("memory")
        return MemoryInfo(**r)

    def unload(self) -> float:
        """Free the model inside the worker; returns the seconds it took there."""
        r = self._call("unload")
        self._loaded = None
        self._journal = []
        self.n_layers = self.n_ctx = 0
        return float(r["seconds"])

    def close(self, timeout_s: float = 10.0) -> None:
        """End the worker process (returns all its memory to the OS)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(BrokenPipeError, OSError):
            self._conn.send(None)
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            self.kill()

    def kill(self) -> None:
        self._closed = True
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; never raise at interpreter exit
        try:
            if not self._closed and self._proc.is_alive():
                self._proc.kill()
        except Exception:
            pass
