"""Engine CPU options: whether llama.cpp's extra buffer types (CPU repack, AMX) are used.

llama.cpp can keep CPU weights in "extra buffer types": repacked layouts for
faster matrix kernels and, on Intel CPUs with AMX, tiles for the AMX kernels.
The switch is ``llama_model_params.use_extra_bufts`` (llama-server's
``--no-repack``). On Sapphire-Rapids-class Xeons the AMX path crashes
(SIGSEGV in ``ggml_backend_amx_mul_mat``, llama.cpp issue 20824) and brings no
speed, so the default here is: **off where llama.cpp's system info reports
``AMX_INT8 = 1``, on elsewhere**. ``PLANNER_EXTRA_BUFTS=on|off|auto`` forces
either way (``auto`` is the default rule).

This module is pure data plus one hook that the engine worker applies before it
loads a model; it never imports ``planner``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

ENV_VAR = "PLANNER_EXTRA_BUFTS"
#: test-only fault switch: a file holding how many engine workers should still
#: die with SIGSEGV on their first prefill or decode of a model
FAULT_ENV_VAR = "PLANNER_FAULT_CRASHES"

_ON = {"1", "on", "true", "yes"}
_OFF = {"0", "off", "false", "no"}


class CpuOptionError(ValueError):
    """A bad value for :data:`ENV_VAR`."""


def has_amx(system_info: str) -> bool:
    """True when llama.cpp's ``llama_print_system_info()`` reports ``AMX_INT8 = 1``."""
    return re.search(r"\bAMX_INT8\s*=\s*1\b", system_info or "") is not None


def env_setting(environ: dict[str, str] | None = None) -> bool | None:
    """The forced value from :data:`ENV_VAR`: True, False, or None for ``auto``/unset."""
    raw = (environ if environ is not None else os.environ).get(ENV_VAR, "").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw in _ON:
        return True
    if raw in _OFF:
        return False
    raise CpuOptionError(f"{ENV_VAR}={raw!r}: use on, off or auto")


@dataclass(frozen=True)
class ExtraBufts:
    """The resolved setting and why it was chosen."""

    enabled: bool
    reason: str  #: ``env``, ``requested``, ``default-amx`` or ``default``

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def resolve_extra_bufts(system_info: str, requested: bool | None = None,
                        environ: dict[str, str] | None = None) -> ExtraBufts:
    """The environment variable wins, then an explicit request, then the AMX rule."""
    forced = env_setting(environ)
    if forced is not None:
        return ExtraBufts(forced, "env")
    if requested is not None:
        return ExtraBufts(bool(requested), "requested")
    if has_amx(system_info):
        return ExtraBufts(False, "default-amx")
    return ExtraBufts(True, "default")


def hook_model_params(llama_cpp_module: Any, enabled: bool) -> Callable[[], None]:
    """Make models load with ``use_extra_bufts = enabled``, whichever name they are loaded by.

    ``Llama.__init__`` takes its model parameters from
    ``llama_cpp.llama_cpp.llama_model_default_params()`` and offers no argument for
    this field, so the worker process wraps that function. The package re-exports it
    (``llama_cpp.llama_model_default_params`` is a second binding to the same
    function), and code that builds a model through the low-level API (the slot
    engine, :mod:`profiler.batch`) calls it by that name, so both bindings are
    wrapped: an unwrapped one left the AMX path on there and crashed the worker.
    Returns an undo.
    """
    low = llama_cpp_module.llama_cpp
    original = getattr(low, "_planner_original_default_params", low.llama_model_default_params)
    holders = [m for m in (low, llama_cpp_module) if hasattr(m, "llama_model_default_params")]

    def default_params() -> Any:
        params = original()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = bool(enabled)
        return params

    low._planner_original_default_params = original
    for holder in holders:
        holder.llama_model_default_params = default_params

    def undo() -> None:
        for holder in holders:
            holder.llama_model_default_params = original

    return undo


def supports_switch(llama_cpp_module: Any) -> bool:
    """Whether this llama-cpp-python build exposes ``use_extra_bufts`` at all."""
    fields = getattr(llama_cpp_module.llama_cpp.llama_model_params, "_fields_", [])
    return any(name == "use_extra_bufts" for name, *_ in fields)


def take_injected_crash() -> bool:
    """Test-only: consume one crash from the :data:`FAULT_ENV_VAR` file, if any is left."""
    path = os.environ.get(FAULT_ENV_VAR)
    if not path:
        return False
    try:
        with open(path, "r+", encoding="utf-8") as f:
            left = int(f.read().strip() or 0)
            if left <= 0:
                return False
            f.seek(0)
            f.truncate()
            f.write(str(left - 1))
        return True
    except (OSError, ValueError):
        return False
