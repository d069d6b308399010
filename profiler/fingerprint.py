"""Machine fingerprints: which machine a profile was measured on, and how far another one is.

A fingerprint has two parts:

- **identity**: CPU model, clock and cache as ``/proc/cpuinfo`` reports them, a hash of
  the CPU flags, cores and the threads the measurements used, memory size, host name,
  a hash of ``/etc/machine-id``, the llama.cpp build (engine, version, backend, system
  info) and the GPUs (name, memory, driver) where NVML sees any;
- **probes**: a short memory-bandwidth probe (single-threaded copy of a buffer far
  larger than the caches) and a decode probe (llama.cpp greedy decode of a few tokens
  on the profile's own model, see :func:`decode_probe`).

Identity says whether two fingerprints come from the same kind of machine; only the
probes say whether it runs at the same speed today (two VMs of the same instance type
differ, and so does one VM under a noisy neighbour). :func:`compare` turns two
fingerprints (and an optional decode probe) into a :class:`Distance`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FINGERPRINT_VERSION = 1

#: A profile whose decode probe differs by more than this from this machine's is stale.
DRIFT_LIMIT = 0.10
#: Without a decode probe, memory bandwidth decides, with a wider limit: it is only a proxy
#: for decode speed, and on a shared VM it moves by about 12% between two probes.
BANDWIDTH_LIMIT = 0.25

#: Decode probe: prompt tokens, then PROBE_REPS blocks of at most PROBE_TOKENS decoded
#: tokens (each block about PROBE_BLOCK_S long, at least 8 tokens), median of the blocks;
#: past PROBE_MAX_S it stops after 3 blocks. Three blocks of 16 tokens read 5-8% slow
#: and scattered by 7-17% (stdev of 8 probes on the demo's 120M and 510M models); five
#: of 32 (or 0.6 s) by 3-4%, so "drift" meant the probe as often as the machine.
PROBE_PROMPT = 16
PROBE_TOKENS = 32
PROBE_REPS = 5
PROBE_BLOCK_S = 0.6
PROBE_MAX_S = 4.0


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if not key:
                    break  # first processor only
                out.setdefault(key, value.strip())
    except OSError:
        pass
    return out


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def machine_id() -> str | None:
    """A hash of ``/etc/machine-id`` (the id itself is not stored)."""
    for p in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            text = Path(p).read_text().strip()
            if text:
                return _short_hash(text)
    return None


def boot_id() -> str | None:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    return None


def backend_of(system_info: str, gpu_offload: bool) -> str:
    """The llama.cpp backend a build runs on: cuda, metal, vulkan, ... or cpu."""
    s = system_info.upper()
    for name in ("CUDA", "METAL", "VULKAN", "HIP", "SYCL", "OPENCL", "KOMPUTE"):
        if f"{name} :" in s or f"{name} =" in s or f"{name}:" in s:
            return name.lower()
    return "gpu" if gpu_offload else "cpu"


def identity(threads: int) -> dict[str, Any]:
    """This machine's identity part of a fingerprint (cheap: no probe)."""
    import psutil

    from profiler.devices import cpu_model_name, discover_build, discover_gpus

    info = _cpuinfo()
    build = discover_build()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    mhz = info.get("cpu MHz")
    return {
        "cpu_model": cpu_model_name(),
        "cpu_mhz": round(float(mhz), 1) if mhz else None,
        "cpu_cache": info.get("cache size"),
        "cpu_flags_hash": _short_hash(info.get("flags", "")) if info.get("flags") else None,
        "cores": cores,
        "threads": threads or cores,
        "memory_bytes": int(psutil.virtual_memory().total),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "machine_id": machine_id(),
        "build": {"engine": build.engine, "version": build.version,
                  "backend": backend_of(build.system_info, build.gpu_offload),
                  "gpu_offload": build.gpu_offload,
                  "system_info_hash": _short_hash(build.system_info)},
        "gpus": [{"name": g.name, "memory_bytes": g.memory_bytes, "driver": g.driver}
                 for g in discover_gpus()],
    }


def membw_probe(size_bytes: int = 128 << 20, reps: int = 5) -> float:
    """Single-threaded copy bandwidth in GB/s (bytes read + written; best of ``reps``)."""
    import numpy as np

    src = np.ones(size_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # first touch of both buffers, not timed
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def fingerprint(threads: int, probe: bool = True) -> dict[str, Any]:
    """Identity plus (when ``probe``) the memory-bandwidth probe; about 1 s."""
    fp: dict[str, Any] = {"version": FINGERPRINT_VERSION, **identity(threads),
                          "taken": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "boot_id": boot_id(), "probes": {}}
    if probe:
        fp["probes"]["membw_gbps"] = round(membw_probe(), 3)
    return fp


def decode_probe(engine: Any, model_path: str | Path, n_gpu_layers: int = 0,
                 n_ctx: int = 256, reps: list[float] | None = None) -> float:
    """Seconds per token of a greedy decode block after a short prompt (median of reps).

    ``engine`` is a :class:`profiler.engine.Engine`; the model is loaded, probed and
    unloaded. The same procedure runs when a profile is made and when it is checked.
    ``reps`` (if given) receives every repetition's seconds per token.
    """
    import statistics

    engine.load(model_path, n_gpu_layers=n_gpu_layers, n_ctx=n_ctx)
    try:
        prompt = [1 + (7 * i) % 200 for i in range(PROBE_PROMPT)]
        engine.prefill(prompt)
        warm = engine.decode(4).seconds / 4  # warm-up, and the block's length
        tokens = max(8, min(PROBE_TOKENS, int(PROBE_BLOCK_S / max(warm, 1e-6))))
        per: list[float] = []
        t0 = time.perf_counter()
        while len(per) < PROBE_REPS and (len(per) < 3 or time.perf_counter() - t0 < PROBE_MAX_S):
            engine.truncate(PROBE_PROMPT)
            per.append(engine.decode(tokens).seconds / tokens)
        if reps is not None:
            reps.extend(per)
        return float(statistics.median(per))
    finally:
        engine.unload()


@dataclass
class Distance:
    """How far this machine is from the one a profile was measured on."""

    same_machine: bool | None  #: None: the profile has no fingerprint
    differences: list[str] = field(default_factory=list)  #: identity fields that differ
    drift: dict[str, float] = field(default_factory=dict)  #: probe: here / there - 1

    @property
    def max_drift(self) -> float | None:
        """The drift that decides: decode where it was probed (it is what plans use),
        else memory bandwidth."""
        if "decode" in self.drift:
            return abs(self.drift["decode"])
        return max((abs(v) for v in self.drift.values()), default=None)

    @property
    def limit(self) -> float:
        return DRIFT_LIMIT if "decode" in self.drift else BANDWIDTH_LIMIT

    @property
    def drifts(self) -> bool:
        m = self.max_drift
        return m is not None and m > self.limit

    @property
    def matches(self) -> bool:
        """Same machine and no probe beyond the drift limit (at least one probe run)."""
        return bool(self.same_machine) and bool(self.drift) and not self.drifts

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "max_drift": self.max_drift, "matches": self.matches}

    def describe(self) -> str:
        parts = []
        if self.same_machine is None:
            parts.append("no fingerprint (measured on an unknown machine)")
        elif not self.same_machine:
            parts.append("measured elsewhere (" + "; ".join(self.differences) + ")")
        else:
            parts.append("same machine")
        for k, v in sorted(self.drift.items()):
            parts.append(f"{k} {100 * v:+.1f}%")
        return ", ".join(parts)


_IDENTITY_FIELDS = ("cpu_model", "cores", "threads", "memory_bytes", "machine", "hostname",
                    "machine_id", "cpu_flags_hash")


def compare(there: dict[str, Any] | None, here: dict[str, Any],
            decode: tuple[float, float] | None = None) -> Distance:
    """Distance from a profile's fingerprint ``there`` to ``here``.

    ``decode`` is ``(seconds per token the profile predicts, seconds per token measured
    here)`` from :func:`decode_probe`. Probe drift is here / there - 1 for bandwidth
    and there / here - 1 for times, so that positive always means faster here.
    """
    if not there:
        d = Distance(None)
    else:
        diffs = []
        for k in _IDENTITY_FIELDS:
            a, b = there.get(k), here.get(k)
            if a is not None and b is not None and a != b:
                diffs.append(f"{k} {a} -> {b}" if k not in ("machine_id", "cpu_flags_hash")
                             else f"{k} differs")
        tb, hb = there.get("build", {}), here.get("build", {})
        for k in ("engine", "version", "backend", "system_info_hash"):
            if tb.get(k) is not None and hb.get(k) is not None and tb.get(k) != hb.get(k):
                diffs.append(f"llama.cpp {k} differs" if k == "system_info_hash"
                             else f"llama.cpp {k} {tb.get(k)} -> {hb.get(k)}")
        tg = [(g.get("name"), g.get("driver")) for g in there.get("gpus", [])]
        hg = [(g.get("name"), g.get("driver")) for g in here.get("gpus", [])]
        if tg != hg:
            diffs.append(f"GPUs {tg or 'none'} -> {hg or 'none'}")
        d = Distance(not diffs, diffs)
        tp, hp = there.get("probes", {}), here.get("probes", {})
        if tp.get("membw_gbps") and hp.get("membw_gbps"):
            d.drift["memory bandwidth"] = hp["membw_gbps"] / tp["membw_gbps"] - 1
    if decode is not None and decode[0] > 0 and decode[1] > 0:
        d.drift["decode"] = decode[0] / decode[1] - 1
    return d


def spread(values: list[float]) -> float | None:
    """How far repetitions a second apart disagree: (max - min) / median, or None
    with fewer than two."""
    import statistics

    if len(values) < 2:
        return None
    mid = statistics.median(values)
    return (max(values) - min(values)) / mid if mid > 0 else None
