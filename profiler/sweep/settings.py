"""What a sweep measures: its configuration, settings, budget of repetitions and result."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from profiler.devices import (
    BuildInfo,
    GpuInfo,
    HostInfo,
)
from profiler.models import GgufArch

T = TypeVar("T")

#: What a profile's measurements mean changed with these revisions (a profile without
#: the field is revision 1): 2 -- KV restores drop one sequence's cells instead of
#: clearing (and zeroing) the whole cache. Profiles of an older revision are re-measured
#: by `make demo`.
PROFILER_REVISION = 2

#: Text tokenized into prompts (repeated as needed); the content does not matter for timing.
PROMPT_TEXT = (
    "The planner decides which models stay resident on which devices, when to load and "
    "unload them, and in which order requests run. Every decision has a cost in seconds "
    "and bytes, and the profiler measures those costs on the real engines, one setting "
    "at a time, so that the plan and the replay agree. "
)


class SweepSettingError(ValueError):
    """A sweep setting this model or build cannot take (e.g. n_gpu_layers past its layers)."""


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep measures. Field comments are the help text."""

    mode: str = "quick"  #: "quick" or "full"
    threads: int = 0  #: llama.cpp threads (0: all CPUs)
    n_batch: int = 512  #: llama.cpp logical batch for prefill
    use_mmap: bool = False  #: False reads the weights into RAM at load (real load cost)
    #: n_ctx values for load/memory (down to 256: CPU plans use small contexts, and a fit
    #: extrapolated below its settings took a noisy slope with it)
    load_n_ctx: tuple[int, ...] = (256, 512, 1024, 2048)
    warm_reps: int = 4  #: warm loads per setting
    cold_reps: int = 2  #: cold loads per setting
    first_reps: int = 3  #: first loads in a fresh worker per setting (smallest, largest n_ctx)
    busy_reps: int = 2  #: loads beside a decoding engine per setting
    walk_n_ctx: int = 2048  #: n_ctx of the context-walk engine
    depths: tuple[int, ...] = (16, 320, 704, 1216, 1920)  #: decode/KV context depths
    decode_block: int = 8  #: tokens per decode measurement
    decode_reps: int = 7  #: decode blocks per depth
    kv_reps: int = 3  #: save/restore repetitions per depth
    prompt_lengths: tuple[int, ...] = (16, 64, 160, 384, 768)  #: prefill prompt lengths
    prefill_reps: int = 3  #: prefills per prompt length
    gpu_layers: tuple[int, ...] | None = None  #: n_gpu_layers values (None: 0 on CPU, 0..L on GPU)
    slots: bool = True  #: also measure batched decode over parallel slots (profiler.batch)

    @classmethod
    def quick(cls, threads: int = 0) -> SweepConfig:
        return cls(mode="quick", threads=threads)

    @classmethod
    def full(cls, threads: int = 0) -> SweepConfig:
        return cls(mode="full", threads=threads, load_n_ctx=(256, 512, 1024, 2048, 4096, 8192),
                   warm_reps=5, cold_reps=3, first_reps=3, busy_reps=3, walk_n_ctx=8192,
                   depths=(16, 256, 512, 1024, 2048, 3072, 4096, 5120, 6144, 7936),
                   decode_block=16, decode_reps=7, kv_reps=5,
                   prompt_lengths=(16, 32, 64, 128, 256, 512, 1024, 1536, 2048), prefill_reps=5)

    def for_model(self, arch: GgufArch) -> SweepConfig:
        """Clip context settings to what the model supports."""
        limit = arch.context_length or self.walk_n_ctx
        walk = min(self.walk_n_ctx, limit)
        depths = tuple(d for d in self.depths if d + self.decode_block * 2 < walk)
        prompts = tuple(p for p in self.prompt_lengths if p < walk)
        loads = tuple(n for n in self.load_n_ctx if n <= limit) or (walk,)
        return replace(self, walk_n_ctx=walk, depths=depths, prompt_lengths=prompts,
                       load_n_ctx=loads, threads=self.threads or (os.cpu_count() or 1))


def round_robin(todo: Iterable[tuple[T, int]]) -> Iterator[T]:
    """Each item as many times as its count, one of each per round, in the given order:
    a slow spell of the machine then falls on every setting alike."""
    items = list(todo)
    for i in range(max((k for _, k in items), default=0)):
        yield from (item for item, k in items if i < k)


def gpu_layer_settings(n_layers: int, mode: str) -> tuple[int, ...]:
    """n_gpu_layers values on a GPU build: every 0..L (+1 for the output layer) in full
    mode; a sparse set, denser near full residency, in quick mode."""
    if mode == "full":
        return tuple(range(n_layers + 2))
    pts = {0, n_layers // 4, n_layers // 2, (3 * n_layers) // 4, n_layers - 2, n_layers - 1,
           n_layers, n_layers + 1}
    return tuple(sorted(p for p in pts if 0 <= p <= n_layers + 1))


def evict_from_page_cache(path: Path) -> bool:
    """Drop ``path`` from the OS page cache (fsync, then POSIX_FADV_DONTNEED)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SweepResult:
    profile_path: Path
    measurements_path: Path
    new_rows: int
    reused_rows: int
    wall_s: float
    profile: dict[str, Any]


Progress = Callable[[float, str], None]


class _Budget:
    """Counts repetitions still missing per (kind, setting)."""

    def __init__(self, rows: list[dict[str, Any]], threads: int) -> None:
        self.have: Counter[tuple[str, str]] = Counter(
            (r["kind"], r["setting"]) for r in rows if r["threads"] == threads)

    def missing(self, kind: str, setting: str, want: int) -> int:
        return max(0, want - self.have[(kind, setting)])

    def next_rep(self, kind: str, setting: str) -> int:
        rep = self.have[(kind, setting)]
        self.have[(kind, setting)] += 1
        return rep


def _device_of(build: BuildInfo, host: HostInfo, gpus: list[GpuInfo]) -> dict[str, Any]:
    if build.gpu_offload and gpus:
        g = gpus[0]
        return {"kind": "gpu", "type": g.type_slug, "name": g.name, "gpu": g.to_json(),
                "host": host.to_json()}
    return {"kind": "cpu", "type": host.type_slug, "name": host.cpu_model,
            "threads": host.threads, "memory_bytes": host.memory_bytes, "host": host.to_json()}
