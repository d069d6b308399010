"""Worker side: the process that holds llama.cpp, one model and one request's state."""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from profiler import cpuopts
from profiler.engine.types import EngineError, _WorkerState

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

    def _first_compute_fault(self, path: str | None = None) -> None:
        """Test-only: die like a llama.cpp segfault on a model's first prefill or decode
        (``path``: the model file, default the serial model's)."""
        path = path if path is not None else str(self._need().model_path)
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
        # drop the sequence's cells only, as llama-server's slot restore does: clearing
        # the whole cache also zeroes its buffer, a cost that grows with n_ctx, not the state
        llm._ctx.kv_cache_seq_rm(0, -1, -1)
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
        llm._ctx.kv_cache_seq_rm(0, -1, -1)  # the sequence only (see restore_state_file)
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
