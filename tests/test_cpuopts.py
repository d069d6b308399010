"""Engine CPU options (issue 17): the extra-buffer-types rule, its override, the hook,
the plan field and the exports. No engine runs here; tests/test_engine_fallback.py is
the real-engine counterpart."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from planner.cli import cli
from profiler import cpuopts

# llama_print_system_info() as llama.cpp 0.3.36 prints it on two machines
SAPPHIRE = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | "
            "FMA = 1 | BMI2 = 1 | AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | "
            "AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")
EPYC = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
        "AVX512 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")


@pytest.mark.parametrize(("info", "amx", "enabled", "reason"), [
    (SAPPHIRE, True, False, "default-amx"),  # AMX reported: off
    (EPYC, False, True, "default"),  # no AMX: llama.cpp's default (on)
    ("", False, True, "default"),  # unknown build: on
    ("CPU : AMX_INT8 = 0 | REPACK = 1 |", False, True, "default"),  # compiled without AMX
])
def test_default_follows_the_system_info(info: str, amx: bool, enabled: bool,
                                         reason: str) -> None:
    assert cpuopts.has_amx(info) is amx
    got = cpuopts.resolve_extra_bufts(info, environ={})
    assert (got.enabled, got.reason) == (enabled, reason)


@pytest.mark.parametrize(("value", "info", "enabled"), [
    ("on", SAPPHIRE, True),  # forced on where the default is off
    ("1", SAPPHIRE, True),
    ("off", EPYC, False),  # forced off where the default is on
    ("FALSE", EPYC, False),
    ("auto", SAPPHIRE, False),  # auto = the rule
    ("", EPYC, True),
])
def test_environment_forces_either_way(value: str, info: str, enabled: bool) -> None:
    got = cpuopts.resolve_extra_bufts(info, requested=not enabled,
                                      environ={cpuopts.ENV_VAR: value})
    if value.strip().lower() in ("", "auto"):
        assert got.reason == "requested" and got.enabled is (not enabled)
    else:
        assert got == cpuopts.ExtraBufts(enabled, "env")


def test_bad_environment_value_is_a_clear_error() -> None:
    with pytest.raises(cpuopts.CpuOptionError, match="PLANNER_EXTRA_BUFTS='maybe'"):
        cpuopts.env_setting({cpuopts.ENV_VAR: "maybe"})


def test_hook_sets_the_model_parameter_and_undoes() -> None:
    class Params:
        use_extra_bufts = True
        n_gpu_layers = 0

    low = SimpleNamespace(llama_model_default_params=Params)
    module = SimpleNamespace(llama_cpp=low)
    undo = cpuopts.hook_model_params(module, False)
    assert low.llama_model_default_params().use_extra_bufts is False
    cpuopts.hook_model_params(module, True)  # re-hooking wraps the original, not the hook
    assert low.llama_model_default_params().use_extra_bufts is True
    undo()
    assert low.llama_model_default_params is Params


def test_hook_also_wraps_the_package_re_export() -> None:
    """``llama_cpp.llama_model_default_params`` (the package's re-export, which the
    slot engine calls) must be wrapped too: unwrapped, the AMX path stayed on there."""
    class Params:
        use_extra_bufts = True

    low = SimpleNamespace(llama_model_default_params=Params)
    module = SimpleNamespace(llama_cpp=low, llama_model_default_params=Params)
    undo = cpuopts.hook_model_params(module, False)
    assert module.llama_model_default_params().use_extra_bufts is False
    assert low.llama_model_default_params().use_extra_bufts is False
    undo()
    assert module.llama_model_default_params is Params and low.llama_model_default_params is Params


def test_injected_crash_counter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "crashes"
    f.write_text("2")
    monkeypatch.setenv(cpuopts.FAULT_ENV_VAR, str(f))
    assert [cpuopts.take_injected_crash() for _ in range(3)] == [True, True, False]
    monkeypatch.delenv(cpuopts.FAULT_ENV_VAR)
    f.write_text("5")
    assert cpuopts.take_injected_crash() is False  # no switch, no crash


def _instance(tmp_path: Path, extra_bufts: bool | None) -> Path:
    host: dict[str, Any] = {"id": "box", "cpu": "threadripper-pro-5995wx", "threads": 8,
                            "memory_gib": 64,
                            "gpus": [{"id": "box-gpu0", "type": "rtx-4090", "memory_gib": 24}]}
    if extra_bufts is not None:
        host["extra_bufts"] = extra_bufts
    data = {"format": "planner.instance/1", "name": "xb", "cluster": {"hosts": [host]},
            "models": [{"id": "llama3", "reference": "llama3-8b-q4_k_m"}],
            "requests": [{"id": "a", "model": "llama3", "arrival_s": 0, "prompt_tokens": 64,
                          "output_tokens": 16}]}
    p = tmp_path / "xb.json"
    p.write_text(json.dumps(data))
    return p


@pytest.mark.parametrize("setting", [False, True, None])
def test_plan_records_the_setting_and_exports_carry_it(tmp_path: Path,
                                                       setting: bool | None) -> None:
    inst = _instance(tmp_path, setting)
    runner = CliRunner()
    res = runner.invoke(cli, ["solve", str(inst), "--solver", "fcfs-lru", "-o", "plan.json"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    plan = json.loads(Path("plan.json").read_text())
    assert [e.get("extra_bufts") for e in plan["engines"]] == [setting] * len(plan["engines"])
    res = runner.invoke(cli, ["validate", "plan.json", "--instance", str(inst)],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output  # the field reads back
    for target in ("llama-server", "llama-swap", "ollama", "llama-cpp-python"):
        res = runner.invoke(cli, ["export", "plan.json", "--instance", str(inst), "--to",
                                  target, "-o", "out"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
    commands = [ln for ln in Path("out/llama-server.sh").read_text().splitlines()
                if "llama-server -m" in ln]
    swap = yaml.safe_load(Path("out/llama-swap.yaml").read_text())
    commands += [m["cmd"] for m in swap["models"].values()]
    assert commands and all(("--no-repack" in c) is (setting is False) for c in commands)
    modelfile = next(Path("out").glob("*.Modelfile")).read_text()
    assert ("sapphirerapids" in modelfile) is (setting is False)
    launcher = Path("out/llama_cpp_server.sh").read_text()
    expected = {False: "PLANNER_EXTRA_BUFTS=off exec", True: "PLANNER_EXTRA_BUFTS=on exec",
                None: "\nexec python -m profiler.llama_server"}[setting]
    assert expected in launcher


def test_instance_rejects_a_non_boolean_setting(tmp_path: Path) -> None:
    inst = _instance(tmp_path, None)
    data = json.loads(inst.read_text())
    data["cluster"]["hosts"][0]["extra_bufts"] = "off"
    inst.write_text(json.dumps(data))
    res = CliRunner().invoke(cli, ["validate", str(inst)], catch_exceptions=False)
    assert res.exit_code == 2 and "extra_bufts" in res.output
