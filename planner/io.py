"""Reading instances and plans, writing plans: validation with precise messages.

Every fault in an input file becomes one line ``FILE: FIELD: what is wrong``;
all faults are collected and raised together as :class:`InputError`. Outputs
are written atomically (a temporary file in the same folder, then a rename),
so an interrupted or failed run never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from planner.domain import (
    GIB,
    INSTANCE_FORMAT,
    MAX_MEMORY_BYTES,
    PLAN_FORMAT,
    PLAN_FORMAT_1_1,
    PLAN_FORMATS,
    Action,
    Cluster,
    DeviceShare,
    Engine,
    Gpu,
    Host,
    Instance,
    Model,
    Plan,
    Request,
    Schedule,
    duplicates,
)
from planner.errors import DomainError, GgufError, InputError
from planner.gguf_arch import read_gguf_arch
from planner.reference import arch_from_fields, model_names, reference_arch

# re-exported: the planner's writers import it from here
from profiler.atomic import write_atomic as write_atomic


@cache
def schema(name: str) -> dict[str, Any]:
    text = resources.files("planner.schemas").joinpath(f"{name}.schema.json").read_text("utf-8")
    out: dict[str, Any] = json.loads(text)
    return out


def _path_str(path: Iterable[Any]) -> str:
    s = ""
    for p in path:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s or "(top level)"


def read_json(path: str | Path) -> tuple[Any, bytes]:
    """Parse a JSON file; a missing file or a syntax error is an InputError."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError([f"{p}: no such file"]) from None
    except OSError as exc:
        raise InputError([f"{p}: cannot read ({exc.strerror})"]) from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError([f"{p}: malformed JSON at line {exc.lineno} column {exc.colno}: "
                          f"{exc.msg}"]) from None
    except UnicodeDecodeError:
        raise InputError([f"{p}: not UTF-8 text"]) from None
    except RecursionError:
        raise InputError([f"{p}: nested too deeply to read"]) from None
    faults = [f"{p}: {_path_str(path)}: {_JSON_NAME.get(str(value), value)} is not a number "
              "JSON allows (give a finite number)" for path, value in non_finite(data)]
    if faults:
        raise InputError(faults)
    return data, raw


_JSON_NAME = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def non_finite(data: Any, path: tuple[Any, ...] = ()) -> Iterable[tuple[tuple[Any, ...], float]]:
    """Where ``data`` holds NaN or an infinity (Python's json reads ``NaN``, ``Infinity``
    and ``1e999``, which RFC 8259 JSON does not have); iterative, so depth is no limit."""
    stack: list[tuple[tuple[Any, ...], Any]] = [(path, data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            yield where, value
        elif isinstance(value, dict):
            stack.extend(((*where, k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend(((*where, i), v) for i, v in reversed(list(enumerate(value))))


def schema_faults(data: Any, schema_name: str, where: str) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema(schema_name))
    lines = []
    for err in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        field = _path_str(err.absolute_path)
        if err.validator == "required":
            missing = err.message.split("'")[1] if "'" in err.message else err.message
            field = f"{field}.{missing}" if err.absolute_path else missing
            lines.append(f"{where}: {field}: missing required field")
        elif err.validator == "type":
            lines.append(f"{where}: {field}: wrong type, expected {err.validator_value} "
                         f"(got {json.dumps(err.instance)[:40]})")
        elif err.validator in ("minimum", "exclusiveMinimum"):
            op = ">=" if err.validator == "minimum" else ">"
            lines.append(f"{where}: {field}: must be {op} {err.validator_value} "
                         f"(got {err.instance})")
        elif err.validator == "anyOf" and err.absolute_path and "models" in err.absolute_path:
            lines.append(f"{where}: {field}: needs one of 'reference', 'gguf' or 'arch'")
        else:
            lines.append(f"{where}: {field}: {err.message}")
    return lines


def _reference_faults(data: dict[str, Any], where: str) -> list[str]:
    """Duplicate ids and requests for unknown models, on whatever parts are well-formed."""
    def ids(items: Any) -> list[str]:
        if not isinstance(items, list):
            return []
        return [x["id"] for x in items if isinstance(x, dict) and isinstance(x.get("id"), str)]

    faults = [f"{where}: models: duplicate model id {d!r}"
              for d in duplicates(ids(data.get("models")))]
    faults += [f"{where}: requests: duplicate request id {d!r}"
               for d in duplicates(ids(data.get("requests")))]
    model_ids = set(ids(data.get("models")))
    requests = data.get("requests")
    for i, r in enumerate(requests if isinstance(requests, list) else []):
        m = r.get("model") if isinstance(r, dict) else None
        if isinstance(m, str) and m not in model_ids:
            faults.append(f"{where}: requests[{i}].model: unknown model {m!r}")
    return faults


def parse_instance(data: dict[str, Any], where: str, base_dir: Path, sha256: str) -> Instance:
    """Build an Instance from parsed JSON, collecting every fault as a line."""
    faults = schema_faults(data, "instance", where)
    if faults:
        raise InputError(faults + _reference_faults(data, where))
    hosts = []
    for i, h in enumerate(data["cluster"]["hosts"]):
        try:
            gpus = tuple(Gpu(g["id"], g["type"], _gib_bytes(g["memory_gib"], g["id"]), h["id"])
                         for g in h.get("gpus", []))
            hosts.append(Host(h["id"], h["cpu"], h["threads"],
                              _gib_bytes(h["memory_gib"], h["id"]), gpus, h.get("extra_bufts")))
        except DomainError as exc:
            faults.append(f"{where}: cluster.hosts[{i}]: {exc}")
    dev_ids = [h["id"] for h in data["cluster"]["hosts"]]
    dev_ids += [g["id"] for h in data["cluster"]["hosts"] for g in h.get("gpus", [])]
    for d in duplicates(dev_ids):
        faults.append(f"{where}: cluster: duplicate device id {d!r}")
    models = []
    known_refs = model_names()
    for i, m in enumerate(data["models"]):
        field = f"models[{i}]"
        try:
            if "gguf" in m:
                gpath = Path(m["gguf"]).expanduser()
                if not gpath.is_absolute():
                    gpath = (base_dir / gpath).resolve()
                arch = read_gguf_arch(gpath)
                models.append(Model(m["id"], arch, gguf_path=str(gpath),
                                    reference=m.get("reference")))
            elif "reference" in m:
                if m["reference"] not in known_refs:
                    faults.append(f"{where}: {field}.reference: unknown model "
                                  f"{m['reference']!r} (known: {', '.join(known_refs)})")
                    continue
                models.append(Model(m["id"], reference_arch(m["reference"]),
                                    reference=m["reference"]))
            else:
                models.append(Model(m["id"], arch_from_fields(m["id"], m["arch"])))
        except GgufError as exc:
            faults.append(f"{where}: {field}.gguf: {exc}")
        except KeyError as exc:
            faults.append(f"{where}: {field}.arch.{exc.args[0]}: missing required field")
        except DomainError as exc:
            faults.append(f"{where}: {field}: {exc}")
    faults += _reference_faults(data, where)
    requests = []
    n_ctx_train = {m.id: m.arch.n_ctx_train for m in models}
    for i, r in enumerate(data["requests"]):
        try:
            req = Request(r["id"], r["model"], float(r["arrival_s"]), int(r["prompt_tokens"]),
                          int(r["output_tokens"]), float(r.get("weight", 1.0)), r.get("slo_s"))
        except DomainError as exc:
            faults.append(f"{where}: requests[{i}]: {exc}")
            continue
        limit = n_ctx_train.get(req.model)
        if limit is not None and req.total_tokens > limit:
            faults.append(f"{where}: requests[{i}]: request {req.id}: prompt_tokens + "
                          f"output_tokens = {req.total_tokens:,} is longer than model "
                          f"{req.model}'s trained context of {limit:,} tokens (n_ctx_train)")
        requests.append(req)
    if faults:
        raise InputError(faults)
    profiles = tuple(str((base_dir / p).resolve()) if not Path(p).is_absolute() else p
                     for p in data.get("profiles", []))
    try:
        return Instance(name=data["name"], cluster=Cluster(tuple(hosts)), models=tuple(models),
                        requests=tuple(requests), objective=data.get("objective", "mean_response"),
                        profiles=profiles, sha256=sha256)
    except DomainError as exc:
        raise InputError([f"{where}: {exc}"]) from None


def _gib_bytes(gib: float, device: str) -> int:
    """``memory_gib`` as bytes; DomainError past the limits (inf and 1e308 included)."""
    if not gib * GIB <= MAX_MEMORY_BYTES:
        raise DomainError(f"{device}: memory_gib must be at most {MAX_MEMORY_BYTES // GIB}")
    return int(gib * GIB)


def load_instance(path: str | Path) -> Instance:
    """Read and validate an instance file (SPEC section 1)."""
    data, raw = read_json(path)
    if not isinstance(data, dict):
        raise InputError([f"{path}: (top level): wrong type, expected object"])
    if data.get("format") not in (None, INSTANCE_FORMAT) and isinstance(data.get("format"), str):
        hint = (" (a plan file, not an instance: the plan names its instance in 'instance')"
                if data["format"].startswith("planner.plan/") else "")
        raise InputError([f"{path}: format: expected {INSTANCE_FORMAT!r}, got {data['format']!r}"
                          + hint])
    instance = parse_instance(data, str(path), Path(path).resolve().parent,
                              hashlib.sha256(raw).hexdigest())
    return replace(instance, path=str(Path(path).resolve()))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write JSON to ``path`` through a temporary file and a rename."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    return write_atomic(path, write)


# --- plans ----------------------------------------------------------------------

def engine_to_json(e: Engine) -> dict[str, Any]:
    out = {"id": e.id, "model": e.model, "device": e.device, "n_gpu_layers": e.n_gpu_layers,
           "n_ctx": e.n_ctx, "gpu_bytes": e.gpu_bytes, "host_bytes": e.host_bytes}
    if e.extra_bufts is not None:
        out["extra_bufts"] = e.extra_bufts
    if e.n_parallel != 1:
        out["n_parallel"] = e.n_parallel
    if e.shares:
        out["devices"] = [s.to_json() for s in e.shares]
    return out


def plan_format(schedule: Schedule) -> str:
    """``planner.plan/1.1`` when an engine has slots or spans GPUs, or a load is made on
    demand, else ``planner.plan/1`` (so plans without any stay readable by version-1
    readers)."""
    new = any(e.n_parallel != 1 or e.shares for e in schedule.engines) or \
        any(a.on_demand is not None for a in schedule.actions)
    return PLAN_FORMAT_1_1 if new else PLAN_FORMAT


def plan_to_json(plan: Plan, instance: Instance) -> dict[str, Any]:
    """Serialise a plan (SPEC section 2), with metrics recomputed from its actions."""
    from planner.metrics import compute_metrics, request_outcomes

    s = plan.solver
    outcomes = request_outcomes(instance, plan.schedule.actions)
    return {
        "format": plan_format(plan.schedule),
        "instance": {"name": plan.instance_name, "sha256": plan.instance_sha256},
        "solver": {"name": s.name, "status": s.status, "objective": s.objective,
                   "objective_name": plan.objective_name, "bound": s.bound, "gap": s.gap,
                   "wall_s": round(s.wall_s, 3), "time_limit_s": s.time_limit_s,
                   "workers": s.workers, "notes": s.notes,
                   "first_improvement_s": s.first_improvement_s},
        "engines": [engine_to_json(e) for e in plan.schedule.engines],
        "actions": [a.to_json() for a in plan.schedule.actions],
        "requests": [o.to_json() for o in outcomes],
        "metrics": compute_metrics(instance, plan.schedule.actions).to_json(),
        "baselines": plan.baselines,
    }


def parse_schedule(data: dict[str, Any], where: str) -> Schedule:
    """Engines and actions of a plan file, schema-checked."""
    faults = schema_faults(data, "plan", where)
    if faults:
        raise InputError(faults)
    try:
        engines = tuple(Engine(e["id"], e["model"], e["device"], e["n_gpu_layers"], e["n_ctx"],
                               e["gpu_bytes"], e["host_bytes"], e.get("extra_bufts"),
                               int(e.get("n_parallel", 1)),
                               tuple(DeviceShare(d["id"], float(d["fraction"]),
                                                 int(d["gpu_bytes"]))
                                     for d in e.get("devices", [])))
                        for e in data["engines"])
        actions = tuple(
            Action(kind=a["kind"], engine=a["engine"], device=a["device"],
                   start_s=float(a["start_s"]), end_s=float(a["end_s"]),
                   request=a.get("request"), tokens_from=a.get("tokens_from"),
                   tokens_to=a.get("tokens_to"), recompute=bool(a.get("recompute", False)),
                   bytes=a.get("bytes"), on_demand=a.get("on_demand"))
            for a in data["actions"])
    except DomainError as exc:
        raise InputError([f"{where}: {exc}"]) from None
    return Schedule(engines, actions)


def load_plan(path: str | Path) -> tuple[dict[str, Any], Schedule]:
    data, _raw = read_json(path)
    if not isinstance(data, dict) or data.get("format") not in PLAN_FORMATS:
        raise InputError([f"{path}: format: expected {PLAN_FORMAT!r} or {PLAN_FORMAT_1_1!r}"])
    return data, parse_schedule(data, str(path))
