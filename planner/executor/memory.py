"""The memory sampler: peak resident memory of the engine workers during a replay."""

from __future__ import annotations

import threading
from collections.abc import Callable


class MemorySampler(threading.Thread):
    """Samples the resident memory of the engine workers (and saved states) every 50 ms.

    A worker without a model loaded counts only what it holds above its idle
    footprint (the Python interpreter and llama.cpp library), since a
    deployment would not keep such a process around; a loaded one counts whole,
    as the profiles' ``host_bytes`` do.
    """

    def __init__(self, pids: Callable[[], list[tuple[int, int]]],
                 extra: Callable[[], int], gpu: bool = False) -> None:
        super().__init__(daemon=True)
        self.gpu = gpu  # also sample NVML per-process GPU memory (all local GPUs together)
        self.pids = pids
        self.extra = extra
        self.peak_host = 0
        self.peak_gpu: int | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._halt.is_set():
            total = 0
            for pid, baseline in self.pids():
                try:
                    total += max(0, psutil.Process(pid).memory_info().rss - baseline)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak_host = max(self.peak_host, total + self.extra())
            if self.gpu:
                from profiler.engine import gpu_bytes_of

                used = [gpu_bytes_of(pid) for pid, _ in self.pids()]
                if any(u is not None for u in used):
                    self.peak_gpu = max(self.peak_gpu or 0, sum(u or 0 for u in used))
            self._halt.wait(0.05)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)
