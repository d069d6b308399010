"""``python -m profiler.llama_server ARGS``: llama_cpp.server with the engine CPU options.

llama_cpp.server (llama-cpp-python's OpenAI-compatible server) loads models
with llama.cpp's default model parameters and has no setting for
``use_extra_bufts``, so on Intel Xeons with AMX its first completion can crash
(llama.cpp issue 20824). This launcher resolves the same rule as the planner's
engines (``PLANNER_EXTRA_BUFTS=on|off|auto``; auto: off where llama.cpp reports
``AMX_INT8 = 1``), applies it, and then runs ``llama_cpp.server`` with the
given arguments unchanged. ``planner export --to llama-cpp-python`` writes a
script that calls it.

Example::

    PLANNER_EXTRA_BUFTS=off python -m profiler.llama_server --config_file llama_cpp_server.json
"""

from __future__ import annotations

import sys

from profiler import cpuopts


def main() -> None:
    import llama_cpp

    try:
        system_info = llama_cpp.llama_print_system_info().decode(errors="replace")
        setting = cpuopts.resolve_extra_bufts(system_info)
    except cpuopts.CpuOptionError as exc:
        sys.exit(f"error: {exc}")
    if cpuopts.supports_switch(llama_cpp):
        cpuopts.hook_model_params(llama_cpp, setting.enabled)
    print(f"llama.cpp extra buffer types: {'on' if setting.enabled else 'off'} "
          f"({setting.reason})", file=sys.stderr)
    from llama_cpp.server.__main__ import main as server_main

    sys.argv[0] = "llama_cpp.server"
    server_main()


if __name__ == "__main__":
    main()
