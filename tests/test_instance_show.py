"""`planner instance show`: each model's fit and speed per device, and the busy share.

Hand-made cases use the round-number cost model of ``tests/test_solver.py`` (10 layers
of 1 GiB, 0.1 s per token with every layer on the GPU, 0.1 * (1 + (10-g)/5) s at g
layers, free prefill, loads 2 s) on the 10 and 5 GiB GPUs of ``tests/test_polish.py``.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from planner.cli import cli
from planner.costmodel import cost_model_for
from planner.domain import Request
from planner.io import load_instance
from planner.summary import summarize
from tests.conftest import ROOT
from tests.test_polish import two_gpus
from tests.test_solver import RoundCost


def test_fits_speeds_and_busy_share_by_hand() -> None:
    """r0 (100 tokens) at 0 s and r1 (100 tokens) at 10 s. "fast" holds all 10 layers
    (0.1 s per token: 10 tok/s, a run 10 s), "slow" 5 (0.2 s per token, 5 tok/s), the host
    CPU none (0.3 s per token). Each request is fastest on "fast": 20 s of work over a
    10 s span on 2 GPUs, busy share 1.0."""
    inst = two_gpus([("r0", 0.0, 100), ("r1", 10.0, 100)])
    s = summarize(inst, RoundCost())
    fit = {f.device: f for f in s.fits}
    assert (fit["fast"].n_gpu_layers, fit["slow"].n_gpu_layers, fit["h"].n_gpu_layers) == \
        (10, 5, 0)
    assert fit["fast"].decode_tok_s == pytest.approx(10.0)
    assert fit["slow"].decode_tok_s == pytest.approx(5.0)
    assert fit["fast"].gpu_gib == pytest.approx(10.0) and fit["slow"].host_gib == \
        pytest.approx(5.0)
    assert fit["fast"].load_s == pytest.approx(2.0)
    room = {r.device: r for r in s.rooms}
    assert (room["fast"].need_gib, room["fast"].most_at_once, room["fast"].models) == \
        (10.0, 1, 1)
    (a,) = s.work
    assert (a.requests, a.fastest_on, a.median_output) == (2, "fast", 100)
    assert a.fastest_s == pytest.approx(20.0) and a.rate_per_s == pytest.approx(0.2)
    assert (s.pool, s.pool_size, s.span_s) == ("GPUs", 2, 10.0)
    assert s.busy_share == pytest.approx(1.0)
    # twice the tokens: twice the work, the GPUs cannot keep up
    heavy = replace(inst, requests=tuple(replace(r, output_tokens=200) for r in inst.requests))
    assert summarize(heavy, RoundCost()).busy_share == pytest.approx(2.0)


def test_requests_all_at_once_have_no_busy_share() -> None:
    inst = two_gpus([("r0", 5.0, 100), ("r1", 5.0, 50)])
    s = summarize(inst, RoundCost())
    assert s.span_s == 0.0 and s.busy_share is None and s.work[0].rate_per_s is None
    assert s.fastest_s == pytest.approx(15.0)


def test_a_model_that_fits_nowhere_is_named() -> None:
    """With 4 GiB of host RAM and two 1 GiB GPUs, the model's 10 GiB fit nowhere: one
    layer on a GPU leaves 9 GiB for the host, the host CPU alone needs all 10."""
    inst = two_gpus([("r0", 0.0, 100)], slow_gib=1)
    host = replace(inst.cluster.hosts[0], memory_bytes=4 * 2**30,
                   gpus=tuple(replace(g, memory_bytes=2**30) for g in inst.cluster.hosts[0].gpus))
    tight = replace(inst, cluster=replace(inst.cluster, hosts=(host,)))
    s = summarize(tight, RoundCost())
    assert s.unservable == ("A",)
    assert all(f.n_gpu_layers is None for f in s.fits)
    assert s.fastest_s == 0.0


def test_mixed_instance_with_the_analytic_model() -> None:
    """Every (model, device) of mixed.json is listed; a model too large for any GPU (the
    70B one on 32 GiB RTX 5000s) fits partly, the split engine's devices are not rows,
    and the per-model work adds up to the total."""
    inst = load_instance(ROOT / "instances" / "mixed.json")
    s = summarize(inst, cost_model_for(inst, "analytic"))
    assert len(s.fits) == len(inst.models) * len(inst.cluster.devices)
    seventy = [f for f in s.fits if f.model.startswith("llama2-70b") and
               f.device.startswith("srv1-gpu")]
    assert seventy and all(f.n_gpu_layers is not None and 0 < f.n_gpu_layers < f.max_gpu_layers
                           for f in seventy)
    assert sum(m.requests for m in s.work) == len(inst.requests)
    assert sum(m.fastest_s for m in s.work) == pytest.approx(s.fastest_s)
    assert s.busy_share is not None and s.busy_share > 0
    assert all(f.source == "analytic" for f in s.fits)
    # six models at their most layers never fit one GPU together: swaps are certain
    assert len(s.rooms) == 4
    assert all(r.need_gib > r.gib and 0 < r.most_at_once < r.models == 6 for r in s.rooms)


def test_cli_table_and_json() -> None:
    path = str(ROOT / "instances" / "mixed.json")
    out = CliRunner().invoke(cli, ["instance", "show", path], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "busy share" in out.output and "llama2-70b-q4_k_m" in out.output
    js = CliRunner().invoke(cli, ["instance", "show", path, "--json"],
                            catch_exceptions=False)
    assert js.exit_code == 0
    data = json.loads(js.output)
    assert data["requests"] == len(load_instance(path).requests)
    assert {"fits", "work", "busy_share", "unservable"} <= set(data)


def test_cli_refuses_a_missing_file_in_one_line() -> None:
    out = CliRunner().invoke(cli, ["instance", "show", "/nonexistent/x.json"])
    assert out.exit_code == 2
    assert "Traceback" not in out.output
    assert "x.json" in out.output


def test_work_sums_each_requests_fastest_run() -> None:
    """Runs of 100, 40 and 10 tokens, each fastest on "fast" (0.1 s per token): 15 s."""
    inst = two_gpus([("r0", 0.0, 100), ("r1", 1.0, 40)])
    inst = replace(inst, requests=(*inst.requests, Request("r2", "A", 2.0, 16, 10)))
    s = summarize(inst, RoundCost())
    assert s.work[0].fastest_on == "fast"
    assert s.work[0].fastest_s == pytest.approx(15.0)


def test_an_instance_without_requests_says_so() -> None:
    inst = two_gpus([])
    s = summarize(inst, RoundCost())
    assert (s.requests, s.span_s, s.busy_share, s.fastest_s) == (0, 0.0, None, 0.0)
    assert s.work[0].requests == 0 and s.work[0].median_prompt is None
