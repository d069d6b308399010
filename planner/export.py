"""Turn a plan into what users run: llama-server, llama-swap, Ollama, llama_cpp.server.

Each exporter reads the plan's engines (model, device, ``n_gpu_layers``,
``n_ctx``) and, where the target has such a notion, its residency: which models
share a device at the same time (llama-swap groups) and how long an engine
stays loaded after its last run before the plan unloads it (TTL, keep_alive).
"""

from __future__ import annotations

import math
import shlex
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from planner.domain import Engine, Instance, Schedule

TARGETS = ("llama-server", "llama-server-router", "llama-swap", "ollama", "llama-cpp-python")
SWAP_FORMS = ("matrix", "groups")


@dataclass(frozen=True)
class EngineUse:
    """One distinct engine configuration of the plan and how the plan uses it."""

    model: str
    device: str
    n_gpu_layers: int
    n_ctx: int
    gguf: str
    gpu_index: int | None  # index of the GPU on its host, None on a CPU
    ttl_s: int  # seconds idle before the plan unloads it; 0: never unloaded
    n_runs: int
    #: llama.cpp's extra buffer types (CPU repack, AMX); None: the default where it runs
    extra_bufts: bool | None = None
    #: parallel slots (llama-server --parallel, OLLAMA_NUM_PARALLEL, concurrencyLimit)
    n_parallel: int = 1
    #: a split engine's GPUs: (index on the host, fraction), for --tensor-split
    split: tuple[tuple[int, float], ...] = ()

    @property
    def visible_devices(self) -> str | None:
        """CUDA_VISIBLE_DEVICES for this engine (all its GPUs when split)."""
        if self.split:
            return ",".join(str(i) for i, _f in self.split)
        return None if self.gpu_index is None else str(self.gpu_index)


def _model_path(instance: Instance, model: str) -> str:
    m = instance.model(model)
    return m.gguf_path or f"/models/{m.reference or m.id}.gguf"


def engine_uses(instance: Instance, schedule: Schedule) -> list[EngineUse]:
    """Distinct (model, device, n_gpu_layers, n_ctx) with their idle-before-unload time."""
    gpu_index = {g.id: i for h in instance.cluster.hosts for i, g in enumerate(h.gpus)}
    by_engine: dict[str, list[Any]] = defaultdict(list)
    for a in sorted(schedule.actions, key=lambda a: a.start_s):
        by_engine[a.engine].append(a)
    groups: dict[tuple[str, str, int, int, int, tuple[tuple[str, float], ...]],
                 list[Engine]] = defaultdict(list)
    for e in schedule.engines:
        groups[(e.model, e.device, e.n_gpu_layers, e.n_ctx, e.n_parallel,
                tuple((s.id, s.fraction) for s in e.shares))].append(e)
    out = []
    for (model, device, ngl, ctx, slots, shares), engines in sorted(groups.items()):
        ttl = 0.0
        unloaded = False
        runs = 0
        for e in engines:
            last_run: float | None = None
            for a in by_engine[e.id]:
                if a.kind == "run":
                    last_run = a.end_s
                    runs += 1
                elif a.kind == "unload":
                    unloaded = True
                    if last_run is not None:
                        ttl = max(ttl, a.start_s - last_run)
                    last_run = None
        settings = {e.extra_bufts for e in engines}
        extra = False if False in settings else (True if settings == {True} else None)
        out.append(EngineUse(model, device, ngl, ctx, _model_path(instance, model),
                             gpu_index.get(device), max(1, math.ceil(ttl)) if unloaded else 0,
                             runs, extra, slots,
                             tuple((gpu_index[d], f) for d, f in shares)))
    return out


def co_resident(schedule: Schedule) -> dict[str, set[frozenset[str]]]:
    """Per device, the sets of models resident at the same time (from load start to unload end)."""
    periods: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    engines = {e.id: e for e in schedule.engines}
    open_at: dict[str, float] = {}
    for a in sorted(schedule.actions, key=lambda a: a.start_s):
        if a.kind == "load":
            open_at[a.engine] = a.start_s
        elif a.kind == "unload" and a.engine in open_at:
            e = engines[a.engine]
            periods[e.device].append((open_at.pop(a.engine), a.end_s, e.model))
    for eid, t in open_at.items():
        e = engines[eid]
        periods[e.device].append((t, math.inf, e.model))
    out: dict[str, set[frozenset[str]]] = defaultdict(set)
    for dev, ps in periods.items():
        for start, end, _model in ps:
            together = {m2 for s2, e2, m2 in ps if s2 < end and start < e2}
            out[dev].add(frozenset(together))
    return out


def _server_cmd(u: EngineUse, port: str, slot_dir: str | None) -> str:
    """A llama-server command line; ``port`` is inserted verbatim (llama-swap's ${PORT})."""
    # -c is the whole KV cache; llama-server gives each of --parallel slots -c / N
    args = ["llama-server", "-m", u.gguf, "-ngl", str(u.n_gpu_layers),
            "-c", str(u.n_ctx * u.n_parallel), "--alias", u.model]
    if u.n_parallel > 1:
        args += ["--parallel", str(u.n_parallel)]
    if u.split:
        args += ["--split-mode", "layer", "--tensor-split",
                 ",".join(f"{f:.4g}" for _i, f in u.split)]
    if u.extra_bufts is False:
        args.append(NO_REPACK)
    if slot_dir:
        args += ["--slot-save-path", slot_dir]
    return f"{shlex.join(args)} --port {port}"


#: llama-server's switch for llama.cpp's extra buffer types (CPU weight repacking and
#: AMX); ``use_extra_bufts = false`` in the library
NO_REPACK = "--no-repack"
AMX_NOTE = ("on Intel Xeons with AMX (Sapphire Rapids and newer) llama.cpp's AMX path can "
            "crash (llama.cpp issue 20824)")


def llama_server(instance: Instance, schedule: Schedule, slot_dir: str = "/tmp/llama-slots") -> str:
    lines = ["#!/usr/bin/env bash", f"# llama-server commands for plan of {instance.name!r}:",
             "# one server per engine configuration; --slot-save-path is where KV states",
             "# are saved and restored (POST /slots/0?action=save|restore).",
             f"# {NO_REPACK} turns off extra buffer types where the plan measured or set them",
             f"# off; {AMX_NOTE}: add {NO_REPACK} there.", ""]
    for i, u in enumerate(engine_uses(instance, schedule)):
        env = f"CUDA_VISIBLE_DEVICES={u.visible_devices} " if u.visible_devices else ""
        lines.append(f"# {u.model} on {u.device}: {u.n_runs} runs"
                     + (f", {u.n_parallel} parallel slots" if u.n_parallel > 1 else "")
                     + (f", split over GPUs {u.visible_devices}" if u.split else "")
                     + (f", unloaded after {u.ttl_s} s idle" if u.ttl_s else ", stays loaded"))
        lines.append(env + _server_cmd(u, str(8080 + i), slot_dir))
    return "\n".join(lines) + "\n"


def use_names(uses: list[EngineUse]) -> dict[EngineUse, str]:
    """A unique, readable name per engine configuration: the model's id where it has one
    configuration, else ``model@device`` (and its layers and context if still ambiguous)."""
    names: dict[EngineUse, str] = {}
    for u in uses:
        same = [v for v in uses if v.model == u.model]
        if len(same) == 1:
            names[u] = u.model
        elif len([v for v in same if v.device == u.device]) == 1:
            names[u] = f"{u.model}@{u.device}"
        else:
            names[u] = f"{u.model}@{u.device}-ngl{u.n_gpu_layers}-c{u.n_ctx}"
    return names


def _swap_models(uses: list[EngineUse], names: dict[EngineUse, str]) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for u in uses:
        entry: dict[str, Any] = {"cmd": _server_cmd(u, "${PORT}", None),
                                 "ttl": u.ttl_s}
        if u.visible_devices:
            entry["env"] = [f"CUDA_VISIBLE_DEVICES={u.visible_devices}"]
        if u.n_parallel > 1:  # requests llama-swap lets through at once
            entry["concurrencyLimit"] = u.n_parallel
        models[names[u]] = entry
    return models


def llama_swap(instance: Instance, schedule: Schedule) -> str:
    """The legacy llama-swap form: one model entry per engine configuration, one group per
    device (top-level ``groups``, read by every llama-swap version)."""
    uses = engine_uses(instance, schedule)
    names = use_names(uses)
    models = _swap_models(uses, names)
    together = co_resident(schedule)
    groups: dict[str, Any] = {}
    for dev in sorted({u.device for u in uses}):
        members = [names[u] for u in uses if u.device == dev]
        shares = any(len(s) > 1 for s in together.get(dev, set()))
        groups[dev] = {"swap": not shares, "exclusive": False, "members": members}
    doc = {"healthCheckTimeout": 120, "startPort": 10001, "models": models, "groups": groups}
    header = (f"# llama-swap config for plan of {instance.name!r}: groups are devices; swap is\n"
              "# false where the plan keeps several models resident together on the device;\n"
              "# ttl is the longest idle time the plan leaves an engine loaded (0 = never\n"
              "# unloaded).\n")
    return header + yaml.safe_dump(doc, sort_keys=False)


def ollama(instance: Instance, schedule: Schedule) -> dict[str, str]:
    """One Modelfile per engine configuration, plus the keep_alive to request."""
    out = {}
    for u in engine_uses(instance, schedule):
        keep = f"{u.ttl_s}s" if u.ttl_s else "-1"
        name = u.model if u.gpu_index is None else f"{u.model}-gpu{u.gpu_index}"
        amx = ("# The plan runs it with llama.cpp's extra buffer types off: Ollama has no\n"
               "# per-model switch; on Intel Xeons with AMX remove Ollama's AMX CPU backend\n"
               "# (lib/ollama/libggml-cpu-sapphirerapids.*) so it loads a non-AMX variant.\n"
               if u.extra_bufts is False else "")
        par = (f"# Serve with OLLAMA_NUM_PARALLEL={u.n_parallel}: the plan decodes up to "
               f"{u.n_parallel} of its\n# requests together (Ollama sizes the context "
               f"num_ctx x {u.n_parallel}).\n" if u.n_parallel > 1 else "")
        split = (f"# The plan splits it over GPUs {u.visible_devices} of its host "
                 f"({', '.join(f'{f:.0%}' for _i, f in u.split)} of its layers): Ollama "
                 f"splits by itself\n# when the model does not fit one GPU; give it those "
                 f"GPUs (CUDA_VISIBLE_DEVICES={u.visible_devices}).\n" if u.split else "")
        out[f"{name}.Modelfile"] = (
            f"# {u.model} on {u.device}; request it with keep_alive={keep}\n"
            f"# (or OLLAMA_KEEP_ALIVE={keep}): the plan unloads it after that long idle.\n"
            + par + split + amx +
            f"FROM {u.gguf}\nPARAMETER num_gpu {u.n_gpu_layers}\nPARAMETER num_ctx {u.n_ctx}\n")
    return out


def llama_cpp_python(instance: Instance, schedule: Schedule, host: str = "127.0.0.1",
                     port: int = 8000, threads: int | None = None) -> dict[str, Any]:
    """A ``python -m llama_cpp.server --config_file`` multi-model configuration."""
    models = []
    for u in engine_uses(instance, schedule):
        m: dict[str, Any] = {"model": u.gguf, "model_alias": u.model,
                             "n_gpu_layers": u.n_gpu_layers, "n_ctx": u.n_ctx}
        if u.gpu_index is not None:
            m["main_gpu"] = u.gpu_index
        if u.split:  # fractions indexed by the host's GPUs (no CUDA_VISIBLE_DEVICES here)
            ts = [0.0] * (max(i for i, _f in u.split) + 1)
            for i, f in u.split:
                ts[i] = round(f, 4)
            m["split_mode"] = 1  # LLAMA_SPLIT_MODE_LAYER
            m["tensor_split"] = ts
        if threads:
            m["n_threads"] = threads
        models.append(m)
    return {"host": host, "port": port, "models": models}


def llama_cpp_python_launcher(instance: Instance, schedule: Schedule, config: str) -> str:
    """How to start the config: llama_cpp.server has no switch for extra buffer types,
    so ``python -m profiler.llama_server`` starts it with them set (off on AMX CPUs)."""
    settings = {u.extra_bufts for u in engine_uses(instance, schedule)}
    env = ("PLANNER_EXTRA_BUFTS=off " if settings == {False} else
           "PLANNER_EXTRA_BUFTS=on " if settings == {True} else "")
    return ("#!/usr/bin/env bash\n"
            f"# llama_cpp.server for plan of {instance.name!r}. llama_cpp.server itself has no\n"
            "# switch for llama.cpp's extra buffer types (CPU repack, AMX); this launcher sets\n"
            "# them (PLANNER_EXTRA_BUFTS=on|off, default: off on CPUs with AMX) and then runs\n"
            f"# it. Plain 'python -m llama_cpp.server --config_file {config}' works elsewhere;\n"
            f"# {AMX_NOTE}.\n"
            f'cd "$(dirname "$0")"\n'
            f"{env}exec python -m profiler.llama_server --config_file {config} \"$@\"\n")


# --- residency per host: what today's routers need ------------------------------------

@dataclass(frozen=True)
class HostResidency:
    """On one host: the plan's engine configurations, which stay loaded to the end of the
    plan, the sets of them resident together, and their predicted reload seconds."""

    host: str
    uses: tuple[EngineUse, ...]
    #: never unloaded by the plan, and loaded before any unload on the host: these can
    #: all be loaded at start-up (the plan holds them together from then on)
    resident: frozenset[EngineUse]
    together: tuple[frozenset[EngineUse], ...]  # maximal sets resident at the same time
    most: int  # most configurations resident at once
    load_s: dict[EngineUse, float]  # mean load time the plan predicts


def measured_loads(report: dict[str, Any]) -> dict[str, list[float]]:
    """Per engine id, the load durations a replay report measured (done loads only)."""
    out: dict[str, list[float]] = defaultdict(list)
    for a in report.get("actions", []):
        if a.get("kind") == "load" and a.get("status") == "done" and \
                a.get("measured_start_s") is not None and a.get("measured_end_s") is not None:
            out[a["engine"]].append(float(a["measured_end_s"]) - float(a["measured_start_s"]))
    return out


def host_residency(instance: Instance, schedule: Schedule,
                   measured: dict[str, list[float]] | None = None) -> list[HostResidency]:
    """``measured``: load seconds per engine id from a replay (they replace the plan's)."""
    uses = engine_uses(instance, schedule)
    by_key = {(u.model, u.device, u.n_gpu_layers, u.n_ctx): u for u in uses}
    use_of = {e.id: by_key[(e.model, e.device, e.n_gpu_layers, e.n_ctx)]
              for e in schedule.engines}
    host_of = {d.id: d.host for d in instance.cluster.devices}
    periods: dict[str, list[tuple[float, float, EngineUse]]] = defaultdict(list)
    loads: dict[EngineUse, list[float]] = defaultdict(list)
    open_at: dict[str, float] = {}
    first_load: dict[EngineUse, float] = {}
    first_unload: dict[str, float] = {}
    for a in sorted(schedule.actions, key=lambda a: (a.start_s, a.end_s)):
        if a.kind == "load":
            open_at[a.engine] = a.start_s
            if not (measured and measured.get(a.engine)):
                loads[use_of[a.engine]].append(a.end_s - a.start_s)
            first_load.setdefault(use_of[a.engine], a.start_s)
        elif a.kind == "unload" and a.engine in open_at:
            first_unload.setdefault(host_of[a.device], a.start_s)
            u = use_of[a.engine]
            periods[host_of[u.device]].append((open_at.pop(a.engine), a.end_s, u))
    for eid, t in open_at.items():
        u = use_of[eid]
        periods[host_of[u.device]].append((t, math.inf, u))
    for eid, secs in (measured or {}).items():
        if eid in use_of:
            loads[use_of[eid]] += secs
    out = []
    for host in sorted({host_of[u.device] for u in uses}):
        ps = periods.get(host, [])
        sets: set[frozenset[EngineUse]] = set()
        for start, _end, _u in ps:
            sets.add(frozenset(v for s2, e2, v in ps if s2 <= start < e2))
        maximal = [x for x in sets if not any(x < y for y in sets)]
        maximal.sort(key=lambda x: (-len(x), sorted(v.model for v in x)))
        host_uses = tuple(u for u in uses if host_of[u.device] == host)
        cut = first_unload.get(host, math.inf)
        resident = frozenset(u for u in host_uses if u.ttl_s == 0 and u in first_load
                             and first_load[u] < cut)
        out.append(HostResidency(
            host, host_uses, resident,
            tuple(maximal), max((len(x) for x in sets), default=1),
            {u: sum(loads[u]) / len(loads[u]) for u in host_uses if loads[u]}))
    return out


def llama_server_router(instance: Instance, schedule: Schedule,
                        slot_dir: str = "/tmp/llama-slots") -> dict[str, str]:
    """llama-server router mode: per host, a ``--models-preset`` INI file (a section per
    engine configuration: ``model``, ``n-gpu-layers``, ``ctx-size``, ``parallel``,
    ``device``, ``load-on-startup`` for those the plan keeps resident) and the command
    line with ``--models-max`` = the most the plan keeps loaded at once there."""
    kv = any(a.kind == "kv_save" for a in schedule.actions)
    hosts = host_residency(instance, schedule)
    files: dict[str, str] = {}
    script = ["#!/usr/bin/env bash",
              f"# llama-server in router mode for plan of {instance.name!r}: one router per",
              "# host, models loaded on first request (the plan's resident ones at start-up),",
              "# least recently used unloaded past --models-max.", ""]
    for hr in hosts:
        names = use_names(list(hr.uses))
        ini = "models.ini" if len(hosts) == 1 else f"models-{hr.host}.ini"
        lines = [f"; llama-server --models-preset for plan of {instance.name!r}, host {hr.host}",
                 "; a section per engine configuration (the name clients send as \"model\");",
                 "; load-on-startup: the plan keeps it loaded from start to end.",
                 "; device: llama.cpp's device name (CUDA<i> with CUDA builds; Vulkan<i>, "
                 "ROCm<i> elsewhere).", "version = 1"]
        if kv:  # where KV states are saved and restored (POST /slots/0?action=save|restore)
            lines += ["", "[*]", f"slot-save-path = {slot_dir}"]
        for u in hr.uses:
            lines += ["", f"[{names[u]}]", f"model = {u.gguf}",
                      f"n-gpu-layers = {u.n_gpu_layers}", f"ctx-size = {u.n_ctx}",
                      "parallel = 1",
                      f"device = {'none' if u.gpu_index is None else f'CUDA{u.gpu_index}'}"]
            if u.extra_bufts is False:
                lines.append("LLAMA_ARG_REPACK = false")
            if u in hr.resident:
                lines.append("load-on-startup = true")
        files[ini] = "\n".join(lines) + "\n"
        script += [f"# host {hr.host}: {len(hr.uses)} configurations, at most {hr.most} "
                   "loaded at once in the plan",
                   f"llama-server --models-preset {ini} --models-max {hr.most} "
                   "--host 127.0.0.1 --port 8080", ""]
    files["llama-server-router.sh"] = "\n".join(script)
    return files


def evict_cost(load_s: float) -> int:
    """llama-swap's evict cost (a positive integer): the reload time in tenths of a second."""
    return max(1, round(10 * load_s))


def llama_swap_matrix(instance: Instance, schedule: Schedule,
                      measured: dict[str, list[float]] | None = None) -> dict[str, str]:
    """llama-swap's ``matrix`` router, per host: ``vars`` (a short name per engine
    configuration), ``sets`` (the combinations the plan keeps resident together) and
    ``evict_costs`` (proportional to each one's reload time: measured in a replay where
    ``measured`` has it, else the plan's prediction)."""
    hosts = host_residency(instance, schedule, measured)
    files = {}
    for hr in hosts:
        uses = list(hr.uses)
        names = use_names(uses)
        var = {u: f"m{i + 1}" for i, u in enumerate(uses)}
        sets = {f"s{i + 1}": " & ".join(var[u] for u in sorted(x, key=uses.index))
                for i, x in enumerate(hr.together)}
        covered = {u for x in hr.together for u in x}
        for u in uses:  # never loaded in the plan: may run on its own
            if u not in covered:
                sets[f"s{len(sets) + 1}"] = var[u]
        matrix = {"vars": {var[u]: names[u] for u in uses},
                  "evict_costs": {var[u]: evict_cost(hr.load_s.get(u, 0.0)) for u in uses},
                  "sets": sets}
        doc = {"healthCheckTimeout": 120, "startPort": 10001,
               "models": _swap_models(uses, names),
               "routing": {"router": {"use": "matrix", "settings": {"matrix": matrix}}}}
        header = (f"# llama-swap config for plan of {instance.name!r}, host {hr.host}: the "
                  "matrix router\n# (llama-swap v218 or newer) lets the sets below run "
                  "together, as the plan does;\n# evict_costs are the reload times in "
                  f"tenths of a second ({'measured' if measured else 'predicted'}), so the"
                  "\n# slowest to reload stay loaded; "
                  "ttl is the longest idle time the plan leaves\n# an engine loaded "
                  "(0 = never unloaded).\n")
        name = "llama-swap.yaml" if len(hosts) == 1 else f"llama-swap-{hr.host}.yaml"
        files[name] = header + yaml.safe_dump(doc, sort_keys=False)
    return files


def export(instance: Instance, schedule: Schedule, target: str, out: Path,
           swap_form: str = "matrix", report: dict[str, Any] | None = None) -> list[Path]:
    """Write ``target``'s files into the folder ``out``; returns the paths written.
    ``swap_form`` is llama-swap's: ``matrix`` (per host) or the legacy ``groups``;
    ``report``, a replay of the plan, gives measured reload times for evict costs."""
    from planner.io import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if target == "llama-server":
        p = out / "llama-server.sh"
        p.write_text(llama_server(instance, schedule))
        p.chmod(0o755)
        written.append(p)
    elif target == "llama-server-router":
        for name, text in llama_server_router(instance, schedule).items():
            p = out / name
            p.write_text(text)
            if name.endswith(".sh"):
                p.chmod(0o755)
            written.append(p)
    elif target == "llama-swap" and swap_form == "matrix":
        measured = measured_loads(report) if report else None
        for name, text in llama_swap_matrix(instance, schedule, measured).items():
            p = out / name
            p.write_text(text)
            written.append(p)
    elif target == "llama-swap":
        p = out / "llama-swap.yaml"
        p.write_text(llama_swap(instance, schedule))
        written.append(p)
    elif target == "ollama":
        for name, text in ollama(instance, schedule).items():
            p = out / name
            p.write_text(text)
            written.append(p)
    elif target == "llama-cpp-python":
        cfg = write_json_atomic(out / "llama_cpp_server.json",
                                llama_cpp_python(instance, schedule))
        written.append(cfg)
        p = out / "llama_cpp_server.sh"
        p.write_text(llama_cpp_python_launcher(instance, schedule, cfg.name))
        p.chmod(0o755)
        written.append(p)
    else:
        raise ValueError(f"unknown target {target!r} (one of {', '.join(TARGETS)})")
    return written
