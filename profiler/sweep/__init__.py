"""Measurement sweeps over one model on this machine's llama.cpp build, then fits.

A sweep has three phases, each on engines in worker processes:

1. **loads** - for each ``n_ctx`` (and ``n_gpu_layers`` on a GPU build): cold loads
   (file evicted from the page cache first), warm loads, the worker's RSS (and
   NVML memory) while resident, and the unload after each load; repetitions go
   round-robin over the settings, as do first loads (fresh workers) and loads
   beside a decoding engine;
2. **context walk** - one engine at the walk's ``n_ctx``: prefill up to each
   context depth, then decode blocks of tokens there (rewinding to the depth
   between repetitions) and save/restore the request state;
3. **prefill** - prompts of several lengths into an empty cache, repetitions
   interleaved so that slow drift spreads over all lengths.

Every measurement is appended to the CSV journal as it is taken. Running the
same sweep again skips settings that already have enough repetitions.

Parts: :mod:`~profiler.sweep.settings` (configuration, settings, budget),
:mod:`~profiler.sweep.steps` (the :class:`Sweep` and its measurement steps) and
:mod:`~profiler.sweep.run` (:func:`run_sweep`, progress bars, the slot step).
"""

from profiler.sweep.run import rich_progress, run_sweep
from profiler.sweep.settings import (
    PROFILER_REVISION,
    PROMPT_TEXT,
    SweepConfig,
    SweepResult,
    SweepSettingError,
    evict_from_page_cache,
    gpu_layer_settings,
)
from profiler.sweep.steps import Sweep

__all__ = ["PROFILER_REVISION", "PROMPT_TEXT", "Sweep", "SweepConfig", "SweepResult",
           "SweepSettingError", "evict_from_page_cache", "gpu_layer_settings", "rich_progress",
           "run_sweep"]
