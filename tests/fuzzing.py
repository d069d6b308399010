"""Fuzzing the command line: what any input file may do to `validate`, `solve` and
`execute --dry-run`.

Two sources of inputs, both Hypothesis strategies:

- instances built from the instance schema with values at and past every boundary
  (zero, one, the limits of :mod:`planner.domain`, 2**31, 2**63, 1e308, NaN,
  infinities, wrong types, missing and unknown fields, duplicate and dangling ids);
- byte-level mutations (flips, deletions, insertions, duplications, truncations,
  numbers swapped for boundary values) of valid instance and plan files.

The property: every run ends with exit code 0 or 2, never a traceback or the
last-resort handler's "internal error", and never a partial output file (a plan
is written whole, passes ``planner validate``, or is absent, and no temporary
file is left). ``tests/test_fuzz.py`` runs a fixed, small share on every test
run; ``benchmarks/fuzz.py`` runs thousands.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from hypothesis import strategies as st

from planner.cli import cli
from planner.domain import PLAN_FORMATS

ROOT = Path(__file__).resolve().parent.parent
OBJECTIVES = ["mean_response", "makespan", "slo_attainment", "tardiness"]
REFERENCES = ["llama3-8b-q4_k_m", "qwen2.5-3b-f16", "smollm2-135m-q4_1", "llama2-70b-q4_k_m"]
GPU_TYPES = ["rtx-4090", "rtx-a6000", "l4", "no-such-gpu"]
CPUS = ["local", "desktop-dual-channel", "threadripper-pro-5995wx", "no-such-cpu"]

INTS = [-(2**63), -1, 0, 1, 2, 3, 16, 255, 256, 4095, 4096, 8191, 8192, 8193, 65535, 65536,
        65537, 2**24, 2**24 + 1, 2**31 - 1, 2**31, 2**53, 2**53 + 1, 2**63, 10**30]
FLOATS = [-1e308, -1.0, -0.0, 0.0, 5e-324, 1e-12, 1e-9, 0.001, 0.5, 0.75, 1.0, 1.5, 59.999,
          999.999, 1000.0, 1000.001, 999999.0, 1e6, 1000000.1, 1048576.0, 1048577.0, 1e12,
          1e308, float("nan"), float("inf"), float("-inf")]
WRONG: list[Any] = [None, "", "x", "12", True, False, [], {}, [1], {"a": 1}]


def numbers(ints: bool) -> st.SearchStrategy[Any]:
    """A value for a numeric field: a boundary, or a value of the wrong type."""
    edge = st.sampled_from(INTS) if ints else st.sampled_from(FLOATS + INTS)
    return st.one_of(edge, edge, edge, st.sampled_from(WRONG))


@cache
def smollm2_path() -> str:
    from profiler.models import fetch_smollm2

    return str(fetch_smollm2())


ARCH = {"n_layers": 4, "hidden_size": 256, "n_heads": 4, "n_kv_heads": 2, "head_dim": 64,
        "ffn_size": 768, "vocab_size": 1000, "layer_bytes": 10**6, "other_bytes": 10**6,
        "n_ctx_train": 4096}


@st.composite
def base_instance(draw: st.DrawFn) -> dict[str, Any]:
    """A valid instance of ordinary values: one or two hosts (local CPU or named CPUs,
    zero to two GPUs), one to three models (reference, GGUF or inline arch), zero to
    six requests."""
    hosts = []
    for h in range(draw(st.integers(1, 2))):
        gpus = [{"id": f"h{h}-g{g}", "type": draw(st.sampled_from(GPU_TYPES[:3])),
                 "memory_gib": draw(st.sampled_from([8, 24, 48, 80]))}
                for g in range(draw(st.integers(0, 2)))]
        hosts.append({"id": f"h{h}", "cpu": draw(st.sampled_from(CPUS[:3])),
                      "threads": draw(st.integers(1, 64)),
                      "memory_gib": draw(st.sampled_from([1.5, 16, 64, 512])), "gpus": gpus})
    models = []
    for m in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["reference", "reference", "gguf", "arch"]))
        entry: dict[str, Any] = {"id": f"m{m}"}
        if kind == "reference":
            entry["reference"] = draw(st.sampled_from(REFERENCES))
        elif kind == "gguf":
            entry["gguf"] = smollm2_path()
        else:
            entry["arch"] = dict(ARCH)
        models.append(entry)
    requests = []
    for r in range(draw(st.integers(0, 6))):
        req: dict[str, Any] = {
            "id": f"r{r}", "model": f"m{draw(st.integers(0, len(models) - 1))}",
            "arrival_s": draw(st.floats(0, 120, allow_nan=False)),
            "prompt_tokens": draw(st.integers(1, 2000)),
            "output_tokens": draw(st.integers(1, 500))}
        if draw(st.booleans()):
            req["weight"] = draw(st.sampled_from([0.5, 1, 2]))
        if draw(st.booleans()):
            req["slo_s"] = draw(st.sampled_from([None, 5, 60, 300]))
        requests.append(req)
    d: dict[str, Any] = {"format": "planner.instance/1", "name": "fuzz",
                         "cluster": {"hosts": hosts}, "models": models, "requests": requests}
    if draw(st.booleans()):
        d["objective"] = draw(st.sampled_from(OBJECTIVES))
    return d


def _paths(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON tree (objects' keys and lists' items)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*path, k)
            yield from _paths(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield (*path, i)
            yield from _paths(v, (*path, i))


@st.composite
def instances(draw: st.DrawFn) -> dict[str, Any]:
    """A valid instance with zero to three fields set to boundary values (numbers at and
    past every limit, NaN, infinities, wrong types), dropped, duplicated or renamed."""
    d = draw(base_instance())
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        paths = list(_paths(d))
        if not paths:
            break
        *parent_path, key = draw(st.sampled_from(paths))
        parent: Any = d
        for p in parent_path:
            parent = parent[p]
        old = parent[key]
        op = draw(st.sampled_from(["value", "value", "value", "drop", "copy", "id"]))
        if op == "drop":
            del parent[key]
        elif op == "copy" and isinstance(parent, list):
            parent.append(json.loads(json.dumps(old)))  # a duplicate: same ids
        elif op == "id":  # a dangling or clashing reference
            parent[key] = draw(st.sampled_from(["m0", "m9", "h0", "h0-g0", "r0", ""]))
        elif isinstance(old, bool) or not isinstance(old, int | float):
            parent[key] = draw(st.sampled_from(WRONG + INTS[:4]))
        else:
            parent[key] = draw(numbers(isinstance(old, int)))
    return d


# --- byte-level mutations ---------------------------------------------------------------

NUMBER = re.compile(rb"-?\d+(\.\d+)?([eE][-+]?\d+)?")
SWAPS = [b"0", b"-1", b"1e308", b"1e999", b"NaN", b"Infinity", b"-Infinity", b"2147483648",
         b"9223372036854775808", b"1048577", b"0.0000000001", b"null", b"true", b'"x"',
         b"[]", b"{}"]


@st.composite
def mutations(draw: st.DrawFn, raw: bytes) -> bytes:
    """``raw`` after one to four random edits."""
    data = bytearray(raw)
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3, 4]))):
        n = len(data)
        op = draw(st.sampled_from(["flip", "delete", "insert", "duplicate", "truncate",
                                   *["number"] * 6]))
        i = draw(st.integers(0, max(0, n - 1)))
        if op == "flip" and n:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete" and n:
            del data[i:i + draw(st.integers(1, 16))]
        elif op == "insert":
            data[i:i] = draw(st.one_of(st.binary(min_size=1, max_size=8),
                                       st.sampled_from([b"{", b"}", b"[", b",", b'"', b"\\",
                                                        b"\xff", b"\x00"])))
        elif op == "duplicate" and n:
            j = draw(st.integers(i, min(n, i + 64)))
            data[j:j] = data[i:j]
        elif op == "truncate":
            del data[i:]
        elif op == "number":
            found = list(NUMBER.finditer(bytes(data)))
            if found:
                m = found[draw(st.integers(0, len(found) - 1))]
                data[m.start():m.end()] = draw(st.sampled_from(SWAPS))
    return bytes(data)


# --- running the commands -----------------------------------------------------------------

@dataclass
class Stats:
    """What a fuzz run saw: inputs, command runs by exit code, and the faults."""

    inputs: int = 0
    runs: int = 0
    exit_codes: Counter[int] = field(default_factory=Counter)
    by_command: Counter[str] = field(default_factory=Counter)
    tracebacks: int = 0
    internal_errors: int = 0
    partial_files: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        codes = ", ".join(f"exit {k}: {v}" for k, v in sorted(self.exit_codes.items()))
        return (f"{self.inputs} inputs, {self.runs} command runs ({codes}); "
                f"{self.tracebacks} tracebacks, {self.internal_errors} internal errors, "
                f"{self.partial_files} partial files")


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh working folder for one input."""
    old = Path.cwd()
    folder = Path(tempfile.mkdtemp(prefix="planner-fuzz-"))
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(old)
        shutil.rmtree(folder, ignore_errors=True)


def run(stats: Stats, name: str, *args: str) -> int:
    """One CLI run in this process; records its exit code and any fault."""
    res = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    stats.runs += 1
    stats.by_command[name] += 1
    stats.exit_codes[res.exit_code] += 1
    out = res.output
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        stats.tracebacks += 1
        stats.problems.append(f"{name}: exception {type(res.exception).__name__}: "
                              f"{res.exception}")
    if "Traceback" in out:
        stats.tracebacks += 1
        stats.problems.append(f"{name}: traceback in output")
    if "internal error" in out:
        stats.internal_errors += 1
        stats.problems.append(f"{name}: {out.strip().splitlines()[0][:300]}")
    if res.exit_code not in (0, 2):
        stats.problems.append(f"{name}: exit code {res.exit_code}: {out.strip()[-300:]}")
    return int(res.exit_code)


def leftovers(folder: Path, expected: set[str]) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and p.name not in expected)


def whole_plan(stats: Stats, path: Path, instance: str) -> None:
    """A plan ``solve`` reported as written: complete JSON that passes the checker."""
    try:
        data = json.loads(path.read_bytes())
        ok = isinstance(data, dict) and data.get("format") in PLAN_FORMATS  # 1.1: split engines
    except (OSError, ValueError):
        ok = False
    if not ok or run(stats, "validate plan", "validate", str(path), "--instance",
                     instance) != 0:
        stats.partial_files += 1
        stats.problems.append(f"solve wrote {path.name}, which is not a whole, valid plan")


def device_map_args(raw: bytes) -> list[str]:
    """``--device-map`` for every device of a readable instance, so a dry run gets past
    the check that this machine has the plan's devices."""
    try:
        d = json.loads(raw)
        devices = [h["id"] for h in d["cluster"]["hosts"]] + [
            g["id"] for h in d["cluster"]["hosts"] for g in h.get("gpus", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []
    args: list[str] = []
    for dev in devices:
        if isinstance(dev, str) and dev:
            args += ["--device-map", f"{dev}=host"]
    return args


def check_instance(stats: Stats, raw: bytes, time_limit: str = "1") -> None:
    """validate, solve --time-limit 1 and, when a plan is written, execute --dry-run."""
    stats.inputs += 1
    with scratch() as folder:
        Path("inst.json").write_bytes(raw)
        run(stats, "validate instance", "validate", "inst.json")
        code = run(stats, "solve", "solve", "inst.json", "--time-limit", time_limit,
                   "--workers", "1", "-o", "out/plan.json")
        plan = folder / "out" / "plan.json"
        if code == 0:
            whole_plan(stats, plan, "inst.json")
            run(stats, "execute --dry-run", "execute", str(plan), "--dry-run",
                *device_map_args(raw))
        elif plan.exists():
            stats.partial_files += 1
            stats.problems.append(f"solve failed (exit {code}) but wrote {plan.name}")
        extra = leftovers(folder, {"inst.json", "plan.json"})
        if extra:
            stats.partial_files += 1
            stats.problems.append(f"files left behind: {extra}")


def check_plan_file(stats: Stats, raw: bytes, instance: bytes) -> None:
    """validate and execute --dry-run of a (mutated) plan against its instance."""
    stats.inputs += 1
    with scratch() as folder:
        Path("inst.json").write_bytes(instance)
        Path("plan.json").write_bytes(raw)
        run(stats, "validate plan", "validate", "plan.json", "--instance", "inst.json")
        run(stats, "execute --dry-run", "execute", "plan.json", "--instance", "inst.json",
            "--dry-run", *device_map_args(instance))
        extra = leftovers(folder, {"inst.json", "plan.json"})
        if extra:
            stats.partial_files += 1
            stats.problems.append(f"files left behind: {extra}")


@cache
def seeds() -> dict[str, tuple[bytes, bytes]]:
    """Valid instance files and their plans (solved once), as bytes."""
    tiny = (ROOT / "instances" / "tiny.json").read_bytes()
    cpu = json.dumps({
        "format": "planner.instance/1", "name": "cpu",
        "cluster": {"hosts": [{"id": "here", "cpu": "local", "threads": 1,
                               "memory_gib": 1.5}]},
        "models": [{"id": "smollm2", "gguf": smollm2_path()},
                   {"id": "ref", "reference": "smollm2-135m-q4_1"}],
        "requests": [{"id": "a", "model": "smollm2", "arrival_s": 0, "prompt_tokens": 64,
                      "output_tokens": 16, "slo_s": 10},
                     {"id": "b", "model": "smollm2", "arrival_s": 0.5, "prompt_tokens": 32,
                      "output_tokens": 8, "weight": 2},
                     {"id": "c", "model": "ref", "arrival_s": 1, "prompt_tokens": 8,
                      "output_tokens": 4}]}, indent=1).encode()
    out: dict[str, tuple[bytes, bytes]] = {}
    for name, raw in (("tiny", tiny), ("cpu", cpu)):
        with scratch():
            Path("inst.json").write_bytes(raw)
            res = CliRunner().invoke(cli, ["solve", "inst.json", "--solver", "fcfs-lru",
                                           "-o", "plan.json"], catch_exceptions=False)
            assert res.exit_code == 0, res.output
            out[name] = (raw, Path("plan.json").read_bytes())
    return out


def instance_json(d: dict[str, Any]) -> bytes:
    """JSON as Python writes it: NaN and infinities as ``NaN``/``Infinity``."""
    return json.dumps(d).encode()


Check = Callable[[Stats, bytes], None]
