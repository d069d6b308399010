"""Device discovery: the host (CPU, threads, RAM), NVIDIA GPUs through NVML, and the build.

No NVIDIA driver is a normal case: :func:`discover_gpus` then returns an empty list.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
from dataclasses import asdict, dataclass
from typing import Any

from profiler.naming import slugify


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    cpu_model: str
    threads: int
    memory_bytes: int
    machine: str

    @property
    def type_slug(self) -> str:
        return slugify(self.cpu_model)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "type": self.type_slug}


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_bytes: int
    pcie_gen: int | None
    pcie_width: int | None
    driver: str | None

    @property
    def type_slug(self) -> str:
        return gpu_type_slug(self.name)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "type": self.type_slug}


@dataclass(frozen=True)
class BuildInfo:
    """The llama.cpp engine build the measurements come from."""

    engine: str
    version: str
    gpu_offload: bool
    system_info: str

    @property
    def slug(self) -> str:
        return slugify(f"{self.engine}-{self.version}-{'gpu' if self.gpu_offload else 'cpu'}")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "slug": self.slug}


def cpu_model_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def host_type_slug() -> str:
    """Stable type slug of this host's CPU, e.g. ``amd-epyc-7b13-64-core-processor``."""
    return slugify(cpu_model_name())


def gpu_type_slug(name: str) -> str:
    """Type slug of a GPU name: ``"NVIDIA H100 80GB HBM3"`` -> ``h100-80gb-hbm3``."""
    slug = slugify(name)
    for prefix in ("nvidia-geforce-", "nvidia-"):
        if slug.startswith(prefix):
            slug = slug[len(prefix):]
            break
    return slug


def discover_host() -> HostInfo:
    import psutil

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    return HostInfo(hostname=socket.gethostname(), cpu_model=cpu_model_name(), threads=threads,
                    memory_bytes=int(psutil.virtual_memory().total), machine=platform.machine())


def discover_gpus() -> list[GpuInfo]:
    """NVIDIA GPUs visible through NVML; ``[]`` when there is no driver or library."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    out: list[GpuInfo] = []
    try:
        try:
            driver: str | None = _text(pynvml.nvmlSystemGetDriverVersion())
        except Exception:
            driver = None
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            gen = width = None
            try:
                gen = int(pynvml.nvmlDeviceGetMaxPcieLinkGeneration(h))
                width = int(pynvml.nvmlDeviceGetMaxPcieLinkWidth(h))
            except Exception:
                pass
            out.append(GpuInfo(index=i, name=_text(pynvml.nvmlDeviceGetName(h)),
                               memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                               pcie_gen=gen, pcie_width=width, driver=driver))
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return out


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def discover_build() -> BuildInfo:
    """The installed llama-cpp-python and whether it can offload layers to a GPU.

    Importing ``llama_cpp`` loads the shared library; it happens in the caller here
    (cheap) and the engines themselves run in worker processes.
    """
    try:
        import llama_cpp
    except Exception as exc:  # not installed or broken
        return BuildInfo("llama-cpp-python", f"unavailable ({type(exc).__name__})", False, "")
    try:
        sysinfo = _text(llama_cpp.llama_print_system_info()).strip()
    except Exception:
        sysinfo = ""
    return BuildInfo(engine="llama-cpp-python", version=str(llama_cpp.__version__),
                     gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()),
                     system_info=sysinfo)
