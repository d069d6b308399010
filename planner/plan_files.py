"""Plan files: writing one (checked first), finding the instance a plan was made for,
validating either kind of file, and preparing a plan for replay on this machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from planner.checker import Violation, check_plan
from planner.domain import LOCAL_CPU, PLAN_FORMATS, Instance, Plan, Schedule
from planner.errors import InputError, SolveError
from planner.io import load_instance, load_plan, plan_to_json, write_json_atomic


def write_plan(plan: Plan, instance: Instance, out: str | Path) -> dict[str, Any]:
    """Check the plan, then write it atomically; an invalid plan is never written.

    The plan records its instance's path relative to the plan's folder (beside the
    name and sha256), so ``execute``, ``validate`` and ``export`` find it wherever both
    files live, as long as they keep their relative places.
    """
    data = plan_to_json(plan, instance)
    if instance.path:
        data["instance"]["path"] = instance_ref(instance.path, out)
    violations = check_plan(instance, plan.schedule, data)
    if violations:
        raise SolveError("the plan failed the checker (a bug; nothing written):\n"
                         + "\n".join(str(v) for v in violations[:20]))
    write_json_atomic(out, data)
    return data


def instance_ref(instance_path: str | Path, plan_path: str | Path) -> str:
    """The instance's path as a plan records it: relative to the plan's folder."""
    return os.path.relpath(Path(instance_path).resolve(), Path(plan_path).resolve().parent)


def validate_file(path: str | Path, instance_path: str | Path | None, *, force: bool = False,
                  warnings: list[str] | None = None) -> list[Violation]:
    """Check an instance (no violations means valid) or a plan against its instance
    (found as :func:`find_plan_instance` says)."""
    from planner.io import read_json

    data, _ = read_json(path)
    if isinstance(data, dict) and data.get("format") in PLAN_FORMATS:
        data, schedule = load_plan(path)
        instance = find_plan_instance(data, path, instance_path, force=force,
                                      warnings=warnings)
        return check_plan(instance, schedule, data)
    from planner import service  # looked up here: tests replace service.prepare

    service.prepare(path)
    return []


# --- replay --------------------------------------------------------------------

MAP_TARGETS = ("host", "local")  # --device-map values meaning "this machine's CPU"


def local_device_map(instance: Instance, schedule: Schedule,
                     device_map: dict[str, str]) -> tuple[dict[str, int], list[str]]:
    """Which plan devices this machine can replay; returns n_gpu_layers overrides and warnings.

    A host is local when its ``cpu`` is ``local`` or this machine's CPU type; a
    GPU is local when this machine has a GPU of its type and llama.cpp can
    offload. ``device_map`` (plan device -> ``host``) replays the rest on this
    machine's CPU, with a warning.
    """
    from profiler.devices import discover_build, discover_gpus, gpu_type_slug, host_type_slug

    here = host_type_slug()
    gpus = {gpu_type_slug(g.name) for g in discover_gpus()}
    offload = discover_build().gpu_offload
    devices = {d.id: d for d in instance.cluster.devices}
    for k, v in device_map.items():
        if k not in devices:
            raise InputError([f"--device-map: the plan has no device {k!r} "
                              f"(devices: {', '.join(devices)})"])
        if v not in MAP_TARGETS:
            raise InputError([f"--device-map {k}={v}: only this machine's host ('host') "
                              "can be mapped to"])
    overrides: dict[str, int] = {}
    warnings: list[str] = []
    refused: list[str] = []
    for e in schedule.engines:
        d = devices[e.device]
        local = (d.kind == "cpu" and d.type in (LOCAL_CPU, here)) or \
            (d.kind == "gpu" and offload and d.type in gpus)
        if local:
            continue
        if e.device in device_map:
            if e.n_gpu_layers:
                overrides[e.id] = 0
            msg = (f"{e.device} ({d.type}) replayed on this machine's CPU ({here}): "
                   "the predictions were made for other hardware")
            if msg not in warnings:
                warnings.append(msg)
        elif e.device not in refused:
            refused.append(e.device)
    if refused:
        raise InputError([f"the plan uses {', '.join(refused)}, which this machine does not "
                          f"have (this host is {here}, GPUs: {', '.join(sorted(gpus)) or 'none'})"
                          f"; replay it anyway with --device-map {refused[0]}=host"])
    return overrides, warnings


def instance_candidates(data: dict[str, Any], plan_path: str | Path) -> list[Path]:
    """Where a plan's instance may be, in the order they are tried: the path the plan
    records (relative to the plan's folder), ``<name>.json`` beside the plan, then
    ``instances/<name>.json`` under the current folder."""
    ref, name = data["instance"].get("path"), data["instance"]["name"]
    folder = Path(plan_path).parent
    out = [folder / ref] if isinstance(ref, str) and ref else []
    out += [folder / f"{name}.json", Path("instances") / f"{name}.json"]
    unique: list[Path] = []
    for p in out:
        if all(not _same_file(p, q) for q in unique):
            unique.append(p)
    return unique


def _same_file(a: Path, b: Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def find_plan_instance(data: dict[str, Any], plan_path: str | Path,
                       instance_path: str | Path | None, *, force: bool = False,
                       warnings: list[str] | None = None) -> Instance:
    """The instance a plan was made for: ``instance_path`` if given, else the first of
    :func:`instance_candidates` that exists. Its sha256 must be the one the plan records:
    a changed instance is refused, unless ``force`` (then a warning is appended)."""
    if instance_path is not None:
        ipath = Path(instance_path)
        if not ipath.is_file():
            raise InputError([f"--instance {ipath}: no such file"])
    else:
        tried = instance_candidates(data, plan_path)
        found = [p for p in tried if p.is_file()]
        if not found:
            raise InputError([f"{plan_path}: its instance {data['instance']['name']!r} was not "
                              f"found (tried {', '.join(map(str, tried))})"],
                             hint="give it with --instance FILE")
        ipath = found[0]
    instance = load_instance(ipath)
    want = data["instance"].get("sha256")
    if want not in (None, "", instance.sha256):
        if not force:
            raise InputError([f"{plan_path}: made for another version of {ipath} (its sha256 "
                              f"is {instance.sha256[:12]}..., the plan's {str(want)[:12]}...)"],
                             hint="solve it again, or pass --force to use this version "
                                  "anyway (the plan is still checked against it)")
        if warnings is not None:
            warnings.append(f"{ipath} changed since the plan was made (sha256 differs); "
                            "used anyway (--force)")
    return instance


def plan_and_instance(plan_path: str | Path, instance_path: str | Path | None, *,
                      force: bool = False, warnings: list[str] | None = None
                      ) -> tuple[Instance, Schedule]:
    """A plan's schedule and its instance, checked against each other (SPEC rules 1-7)."""
    data, schedule = load_plan(plan_path)
    instance = find_plan_instance(data, plan_path, instance_path, force=force,
                                  warnings=warnings)
    violations = check_plan(instance, schedule, data)
    if violations:
        raise InputError([f"{plan_path}: {v}" for v in violations[:10]])
    return instance, schedule


def prepare_replay(plan_path: str | Path, instance_path: str | Path | None,
                   device_map: dict[str, str], *, force: bool = False
                   ) -> tuple[Instance, Schedule, dict[str, Path], dict[str, int], list[str]]:
    """Read and check a plan for replay: instance, models on disk, devices here."""
    early: list[str] = []
    instance, schedule = plan_and_instance(plan_path, instance_path, force=force,
                                           warnings=early)
    ipath = instance.path or instance_path
    # load_instance has read every model's GGUF metadata: a missing or corrupt
    # file has already been reported, before anything runs
    used = {e.model for e in schedule.engines}
    faults = [f"{ipath}: models[{m.id}]: no GGUF file to run (give \"gguf\")"
              for m in instance.models if m.id in used and m.gguf_path is None]
    if faults:
        raise InputError(faults, hint=(
            "a model's \"gguf\" entry in the instance names the file an engine loads: "
            "SmolLM2 comes with `planner demo` (~/.cache/planner/models/"
            "SmolLM2-135M-Instruct.Q4_1.gguf), and `planner profile synth` writes a GGUF "
            "of any shape (timing does not depend on weight values)"))
    paths = {m.id: Path(m.gguf_path) for m in instance.models if m.gguf_path}
    overrides, warnings = local_device_map(instance, schedule, device_map)
    warnings = early + warnings
    from planner.machine import profile_warnings

    warnings += profile_warnings(instance)
    return instance, schedule, paths, overrides, warnings
