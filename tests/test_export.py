"""Exports: the llama_cpp.server config starts the real server; the others parse."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from planner.cli import cli
from tests.conftest import ROOT

# keys llama-swap documents for its config file, models and groups
SWAP_TOP = {"healthCheckTimeout", "logLevel", "startPort", "macros", "models", "groups", "hooks"}
SWAP_MODEL = {"cmd", "cmdStop", "proxy", "aliases", "env", "checkEndpoint", "ttl", "unlisted",
              "useModelName", "filters", "concurrencyLimit"}
SWAP_GROUP = {"swap", "exclusive", "persistent", "members"}


def _solve(instance: Path, out: str) -> None:
    res = CliRunner().invoke(cli, ["solve", str(instance), "--solver", "fcfs-lru", "-o", out],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output


def test_llama_swap_config_has_documented_keys(tmp_path: Path) -> None:
    inst = ROOT / "instances" / "mixed.json"
    _solve(inst, "plan.json")
    res = CliRunner().invoke(cli, ["export", "plan.json", "--instance", str(inst), "--to",
                                   "llama-swap", "--llama-swap-form", "groups", "-o", "out"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = yaml.safe_load(Path("out/llama-swap.yaml").read_text())
    assert set(doc) <= SWAP_TOP
    assert doc["models"] and all(set(m) <= SWAP_MODEL for m in doc["models"].values())
    assert all("${PORT}" in m["cmd"] and "-ngl" in m["cmd"] for m in doc["models"].values())
    members = [m for g in doc["groups"].values() for m in g["members"]]
    assert sorted(members) == sorted(doc["models"])  # every model in exactly one group
    assert all(set(g) <= SWAP_GROUP for g in doc["groups"].values())
    assert set(doc["groups"]) == {"srv1-gpu0", "srv1-gpu1", "srv2-gpu0", "srv2-gpu1"}


def test_llama_server_and_ollama_exports(tmp_path: Path) -> None:
    inst = ROOT / "instances" / "swap.json"
    _solve(inst, "plan.json")
    for target in ("llama-server", "ollama"):
        res = CliRunner().invoke(cli, ["export", "plan.json", "--instance", str(inst), "--to",
                                       target, "-o", "out"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
    script = Path("out/llama-server.sh").read_text()
    assert "--slot-save-path" in script and "-ngl" in script and "-c " in script
    modelfiles = sorted(Path("out").glob("*.Modelfile"))
    assert modelfiles
    text = modelfiles[0].read_text()
    assert "PARAMETER num_gpu" in text and "PARAMETER num_ctx" in text and "keep_alive" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.engine
def test_llama_cpp_server_config_serves_a_completion(tmp_path: Path) -> None:
    from profiler.models import fetch_smollm2

    gguf = fetch_smollm2()
    inst = tmp_path / "srv.json"
    inst.write_text(json.dumps({
        "format": "planner.instance/1", "name": "srv",
        "cluster": {"hosts": [{"id": "here", "cpu": "local", "threads": 1, "memory_gib": 2}]},
        "models": [{"id": "smol", "gguf": str(gguf)}],
        "requests": [{"id": "a", "model": "smol", "arrival_s": 0, "prompt_tokens": 8,
                      "output_tokens": 4}]}))
    _solve(inst, "plan.json")
    res = CliRunner().invoke(cli, ["export", "plan.json", "--instance", str(inst), "--to",
                                   "llama-cpp-python", "-o", "out"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    cfg = json.loads(Path("out/llama_cpp_server.json").read_text())
    port = _free_port()
    cfg["port"] = port
    Path("out/llama_cpp_server.json").write_text(json.dumps(cfg))
    launcher = Path("out/llama_cpp_server.sh").read_text()
    assert "python -m profiler.llama_server --config_file llama_cpp_server.json" in launcher
    # what the launcher runs (with this interpreter): llama_cpp.server with the engine CPU
    # options applied, so it serves on CPUs whose AMX path crashes too
    proc = subprocess.Popen([sys.executable, "-m", "profiler.llama_server", "--config_file",
                             "out/llama_cpp_server.json"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/v1/models", timeout=2) as r:
                    models = json.load(r)
                break
            except OSError:
                assert proc.poll() is None, "server exited"
                assert time.monotonic() < deadline, "server did not start in 90 s"
                time.sleep(0.5)
        assert [m["id"] for m in models["data"]] == ["smol"]
        req = urllib.request.Request(
            f"{base}/v1/completions", method="POST",
            data=json.dumps({"model": "smol", "prompt": "The capital of France is",
                             "max_tokens": 4}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            out = json.load(r)
        assert out["choices"] and isinstance(out["choices"][0]["text"], str)
        assert out["usage"]["completion_tokens"] >= 1
    finally:
        proc.terminate()
        proc.wait(10)
