"""A llama.cpp engine in its own worker process: load, prefill, decode, save/restore, unload.

Parts: :mod:`~profiler.engine.types` (results and errors), :mod:`~profiler.engine.worker`
(the process that holds llama.cpp) and :mod:`~profiler.engine.client` (:class:`Engine`,
the caller side).

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

from profiler.engine.client import Engine
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
    short_gil_switch,
    state_dir,
)
from profiler.engine.worker import _rss, _Worker, gpu_bytes_of

__all__ = ["DecodeInfo", "Engine", "EngineCrashed", "EngineError", "Fallback", "LoadInfo",
           "MemoryInfo", "SavedState", "SavedStateFile", "StepInfo", "_Worker", "_rss",
           "gpu_bytes_of", "short_gil_switch", "state_dir"]
