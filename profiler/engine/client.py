"""Caller side: :class:`Engine`, which owns a worker process and restarts it on a crash."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from profiler import cpuopts
from profiler.engine.types import (
    DecodeInfo,
    EngineCrashed,
    EngineError,
    Fallback,
    LoadInfo,
    MemoryInfo,
    SavedState,
    SavedStateFile,
    StepInfo,
)
from profiler.engine.worker import _Worker, _worker_main

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
        # after a crash fallback in this process, "off" wins over PLANNER_EXTRA_BUFTS too
        # (the fallback engine itself ignores it): a forced "on" crashed here already
        after_fallback = Engine._process_fallback and extra_bufts is None
        self._requested = False if after_fallback else extra_bufts
        self.fallbacks: list[Fallback] = []
        self._loaded: dict[str, Any] | None = None  # kwargs of the current load
        self._load_call = "load"  # the call that made it (a subclass has others)
        self._journal: list[tuple[str, dict[str, Any], bytes | None]] = []  # state calls since
        self._proven: set[str] = set()  # model files with a completed prefill or decode
        self._start(self._requested, ignore_env=after_fallback)
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

    #: calls that load a model, calls that may run its first computation (the AMX crash
    #: comes there), calls whose success proves the model runs, and calls that change the
    #: request state before that (replayed after a fallback); a subclass adds its own
    _LOADS: tuple[str, ...] = ("load",)
    _FIRST_COMPUTE: tuple[str, ...] = ("load", "prefill", "decode", "restore_state",
                                       "restore_state_file")
    _PROVES: tuple[str, ...] = ("prefill", "decode")
    _JOURNALED: tuple[str, ...] = ("reset", "truncate", "restore_state", "restore_state_file")

    def _guarded(self, name: str, data: bytes | None = None, **kwargs: Any) -> Any:
        """:meth:`_call` with the crash fallback.

        A worker that dies from a signal while a model has not yet completed a
        prefill or decode in it (its load warm-up, its first prefill or decode)
        is restarted once with llama.cpp's extra buffer types off; the model is
        loaded again, the request state replayed, and the call repeated. A second
        crash raises :class:`EngineCrashed` with what to try.
        """
        model = str(kwargs["path"]) if name in self._LOADS else str((self._loaded or {}).get(
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
                if name not in self._LOADS and self._loaded is not None:
                    self._call(self._load_call, **self._loaded)
                    for jname, jkw, jdata in self._journal:
                        self._call(jname, data=jdata, **jkw)
                self.fallbacks.append(Fallback(model, name, exc.exitcode,
                                               time.perf_counter() - t0))
                result = self._call(name, data=data, **kwargs)
            except EngineCrashed as exc2:
                if exc2.exitcode is not None and exc2.exitcode < 0:
                    raise self._final_crash(exc2, model, name) from None
                raise
        if name in self._LOADS:
            self._loaded = dict(kwargs)
            self._load_call = name
            self._journal = []
        elif name in self._PROVES:
            self._proven.add(model)
            self._journal = []
        elif name in self._JOURNALED and model not in self._proven:
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
