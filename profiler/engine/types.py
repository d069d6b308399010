"""Results and errors of engine calls (what the worker returns, what the caller sees)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Caller-side times (loads, KV copies) are taken in a process whose other threads run
#: Python (progress bars, report writes). A thread whose worker has answered waits for
#: the GIL up to the switch interval, Python's default 5 ms: measured beside a busy
#: thread, a KV save the worker did in 3.4 ms took 9.3 ms caller-side. While measuring
#: the interval is this (then 4.1 ms caller-side).
SWITCH_INTERVAL_S = 0.0005


@contextlib.contextmanager
def short_gil_switch() -> Iterator[None]:
    """Shorten the GIL switch interval to :data:`SWITCH_INTERVAL_S` for the block."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, SWITCH_INTERVAL_S))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


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
