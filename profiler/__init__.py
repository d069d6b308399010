"""The profiler: measure models on real llama.cpp engines, fit cost functions, store profiles.

Modules, in the order data flows:

- :mod:`profiler.engine` - an engine in its own worker process (load, prefill, decode,
  save/restore state, unload), every step timed; reused by the executor;
- :mod:`profiler.devices` - host, NVIDIA GPUs (NVML) and the llama.cpp build;
- :mod:`profiler.models` - GGUF architecture metadata, the SmolLM2 download;
- :mod:`profiler.synth` - synthetic llama GGUF models of a chosen shape;
- :mod:`profiler.sweep` - the measurement sweeps (quick and full), resumable;
- :mod:`profiler.fit` - cross-validated linear cost functions as plain data;
- :mod:`profiler.store` - measurement CSV and profile JSON (``planner.profile/1``);
- :mod:`profiler.llamabench` - ``llama-bench -o json`` import;
- :mod:`profiler.report` - table and plot of a profile.

This package never imports ``planner``; the planner reads profiles through
:func:`profiler.store.load_profile`.
"""

from __future__ import annotations

from profiler.engine import (
    DecodeInfo,
    Engine,
    EngineCrashed,
    EngineError,
    LoadInfo,
    MemoryInfo,
    SavedState,
    StepInfo,
)
from profiler.store import PROFILE_FORMAT, Profile, ProfileError, load_profile

__all__ = [
    "PROFILE_FORMAT",
    "DecodeInfo",
    "Engine",
    "EngineCrashed",
    "EngineError",
    "LoadInfo",
    "MemoryInfo",
    "Profile",
    "ProfileError",
    "SavedState",
    "StepInfo",
    "load_profile",
]
