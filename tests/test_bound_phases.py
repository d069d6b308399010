"""The bounds' seconds per share of a request (``planner.solver.bound_phases``): a request
split over devices, each piece timed by the cost model, never does its whole work in less
than one share's worth of device time, however it is split (prefilled on a GPU and
decoded on the host CPU after a KV restore, or the other way round, or recomputed)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

from planner.costmodel import cost_model_for
from planner.generate import CLUSTERS
from planner.io import parse_instance
from planner.solver.bound import request_bounds
from planner.solver.candidates import curves, solver_devices

M14 = "qwen2.5-14b-f16"


def _instance(cluster: dict[str, Any], models: list[str], reqs: list[tuple[str, int, int]]
              ) -> Any:
    data = {"format": "planner.instance/1", "name": "phases", "objective": "mean_response",
            "cluster": cluster, "models": [{"id": m, "reference": m} for m in models],
            "requests": [{"id": f"r{i}", "model": m, "arrival_s": 0.0, "prompt_tokens": p,
                          "output_tokens": o} for i, (m, p, o) in enumerate(reqs)]}
    return parse_instance(data, "phases", Path("."), "")


def _pieces_share(inst: Any, cost: Any, r: Any, pd: dict[str, float],
                  pieces: list[tuple[str, int, int, bool]]) -> float:
    """Shares of ``r`` that ``pieces`` (device, from, to, recompute) are charged: each
    piece's seconds at the fastest configuration of its device, over the bound's seconds
    per share there."""
    pool = curves(inst, cost, solver_devices(inst, True))
    total = 0.0
    for dev, k1, k2, again in pieces:
        secs = min(cost.run_s(c, r.prompt_tokens, k1, k2, recompute=again)
                   for c in pool[(r.model, dev)] if r.total_tokens <= c.n_ctx)
        total += secs / pd[r.id][dev]
    return total


def test_a_request_prefilled_on_the_gpu_and_decoded_on_the_cpu_takes_a_whole_share() -> None:
    """One RTX 4090 and its host's CPU, a 14B F16 model: the CPU prefills 85 times slower
    than the GPU but decodes only 5.5 times slower (analytic cost model). Before, the bound
    charged a share on the CPU at its whole run's seconds, so this split (the prompt and
    first token on the GPU, the rest on the CPU) came to 0.78 of a share: a plan could
    beat it. Now every split is at least one share."""
    inst = _instance(CLUSTERS["one-gpu"], [M14], [(M14, 500, 200)])
    cost = cost_model_for(inst, "analytic")
    _, pd, _ = request_bounds(inst, cost)
    r = inst.requests[0]
    gpu, cpu = "box-gpu0", "box"
    pool = curves(inst, cost, solver_devices(inst, True))
    whole = {r.id: {d: min(cost.run_s(c, 500, 0, 200) for c in pool[(M14, d)])
                    for d in (gpu, cpu)}}
    migrate = [(gpu, 0, 1, False), (cpu, 1, 200, False)]
    assert _pieces_share(inst, cost, r, whole, migrate) < 0.8  # the old charge
    for k in (1, 50, 100, 199):
        for pieces in ([(gpu, 0, k, False), (cpu, k, 200, False)],
                       [(cpu, 0, k, False), (gpu, k, 200, False)],
                       [(cpu, 0, k, False), (gpu, k, 200, True)],
                       [(gpu, 0, k, False), (cpu, k, 200, True)]):
            assert _pieces_share(inst, cost, r, pd, pieces) >= 1.0 - 1e-9, (k, pieces)


def test_every_split_of_random_requests_is_at_least_one_share() -> None:
    """Random requests of the study's models on its two-server cluster (two GPU kinds,
    two host CPUs) and on one GPU: random splits over two or three devices, each piece
    at least one share in total."""
    rng = random.Random(3)
    models = ["llama3-8b-q4_k_m", "qwen3-8b-f16", "qwen2.5-3b-f16", M14]
    for cluster in (CLUSTERS["two-servers"], CLUSTERS["one-gpu"]):
        reqs = [(rng.choice(models), rng.randint(20, 1500), rng.randint(8, 600))
                for _ in range(12)]
        inst = _instance(cluster, sorted({m for m, _, _ in reqs}), reqs)
        cost = cost_model_for(inst, "analytic")
        _, pd, _ = request_bounds(inst, cost)
        for r in inst.requests:
            devs = sorted(pd[r.id])
            for _ in range(20):
                n = rng.randint(2, min(3, r.output_tokens))
                cuts = sorted(rng.sample(range(1, r.output_tokens), n - 1))
                bounds = [0, *cuts, r.output_tokens]
                pieces = [(rng.choice(devs), a, b, a > 0 and rng.random() < 0.3)
                          for a, b in itertools.pairwise(bounds)]
                assert _pieces_share(inst, cost, r, pd, pieces) >= 1.0 - 1e-9, (r, pieces)


def _phase_splits_hold(cluster: dict[str, Any], seed: int, split_gpu: str | None) -> None:
    """Random requests on ``cluster``; places: every device with its candidate splits (and,
    for ``split_gpu``, each of that GPU's splits a place of its own, as the swap MIP's
    groups are). Random splits of each request over random places do at least the
    prefill's part and the decode's part in those places' seconds per unit share."""
    from planner.solver.bound_phases import TwoPhases
    rng = random.Random(seed)
    models = ["llama3-8b-q4_k_m", "qwen3-8b-f16", M14]
    reqs = [(rng.choice(models), rng.randint(20, 1500), rng.randint(8, 600)) for _ in range(10)]
    inst = _instance(cluster, sorted({m for m, _, _ in reqs}), reqs)
    cost = cost_model_for(inst, "analytic")
    pool = curves(inst, cost, solver_devices(inst, True))
    rates = TwoPhases(cost, list(inst.requests), [(m, cs) for (m, _), cs in pool.items()])
    for r in inst.requests:
        places: list[tuple[Any, str, list[Any]]] = []
        for (m, d), cs in sorted(pool.items()):
            cs = [c for c in cs if m == r.model and r.total_tokens <= c.n_ctx]
            if d == split_gpu:
                places += [((i,), d, [c]) for i, c in enumerate(cs)]
            elif cs:
                places.append(((), d, cs))
        _, part, secs = rates.seconds(r, [cs for _, _, cs in places])
        for _ in range(30):
            n = rng.randint(1, min(3, r.output_tokens))
            cuts = sorted(rng.sample(range(1, r.output_tokens), n - 1))
            pre = dec = 0.0
            for a, b in itertools.pairwise([0, *cuts, r.output_tokens]):
                k = rng.randrange(len(places))
                cs = places[k][2]
                # the piece at its place's fastest configuration for it
                c = min(cs, key=lambda x: cost.run_s(x, r.prompt_tokens, a, b))
                sp, sd = secs[k]
                if a == 0 and sp is not None:
                    pre += cost.prefill_s(c, r.prompt_tokens) / sp
                if sd is not None:
                    dec += cost.decode_s(c, r.prompt_tokens + a, b - a) / sd
            assert pre >= part - 1e-9 and dec >= 1.0 - part - 1e-9, (r, pre, dec, part)


def test_two_phase_shares_cover_every_split_of_a_request() -> None:
    """The swap MIP and the LP count a request's work in two phases
    (``bound_phases.TwoPhases``): its prefill, and its decode at each place's best decode
    rate. On one GPU (each split a place, as the MIP's groups) with its host's CPU, and on
    the study's two servers (two GPU kinds, two host CPUs), no split of a request does
    less than each phase's part."""
    _phase_splits_hold(CLUSTERS["one-gpu"], 5, "box-gpu0")
    _phase_splits_hold(CLUSTERS["two-servers"], 6, None)
