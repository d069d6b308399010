"""Layer splits worth considering: ``n_gpu_layers`` values drawn from a cost model's curve.

For one (model, device) pair the candidates are every ``n_gpu_layers`` that fits
the device (and its host's RAM), thinned and pruned:

- models of at most ``EVERY_LAYER_MAX`` layers keep every value that fits;
- larger ones keep, walking the curve from the fastest split down, each value
  whose neighbour would be more than ``DECODE_STEP`` (3 %) slower in decode
  time than the last value kept, so adjacent candidates are at most about 3 %
  apart; 0 (host only) and the most layers that fit are always kept;
- a split is dominated, and dropped, when another needs no more GPU and no more
  host memory and is no slower (decode per token at a reference context).

Baselines (``static``) and the CP-SAT planner draw their splits from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.costmodel.base import CostModel
from planner.domain import EngineConfig

EVERY_LAYER_MAX = 40
DECODE_STEP = 0.03


@dataclass(frozen=True)
class Split:
    cfg: EngineConfig
    gpu_bytes: int
    host_bytes: int
    decode_s: float  # seconds per token at the reference context


def split_curve(cost: CostModel, model: str, device: str, n_ctx: int, on_gpu: bool,
                gpu_cap: int | None, host_cap: int, n_parallel: int = 1) -> list[Split]:
    """Candidate splits, fastest first (see the module docstring); empty if none fits.
    ``n_parallel``: the engines' slots (a KV cache for each)."""
    ref_ctx = max(1, n_ctx // 2)
    if not on_gpu:
        cfg = EngineConfig(model, device, 0, n_ctx, n_parallel)
        hb = cost.host_bytes(cfg)
        return [Split(cfg, 0, hb, cost.decode_s_per_token(cfg, ref_ctx))] if hb <= host_cap \
            else []
    fits: list[Split] = []
    for g in range(cost.max_gpu_layers(model), -1, -1):
        cfg = EngineConfig(model, device, g, n_ctx, n_parallel)
        gb, hb = cost.gpu_bytes(cfg), cost.host_bytes(cfg)
        if (gpu_cap is None or gb <= gpu_cap) and hb <= host_cap:
            fits.append(Split(cfg, gb, hb, cost.decode_s_per_token(cfg, ref_ctx)))
    if not fits:
        return []
    kept = [s for s in fits if not any(
        o is not s and o.gpu_bytes <= s.gpu_bytes and o.host_bytes <= s.host_bytes
        and o.decode_s <= s.decode_s
        and (o.gpu_bytes, o.host_bytes, o.decode_s) != (s.gpu_bytes, s.host_bytes, s.decode_s)
        for o in fits)]
    kept.sort(key=lambda s: (s.decode_s, -s.cfg.n_gpu_layers))
    if cost.n_layers(model) <= EVERY_LAYER_MAX or len(kept) <= 2:
        return kept
    most = max(kept, key=lambda s: s.cfg.n_gpu_layers)
    zero = [s for s in kept if s.cfg.n_gpu_layers == 0]
    out = [kept[0]]
    for i in range(1, len(kept)):
        nxt = kept[i + 1] if i + 1 < len(kept) else None
        if nxt is None or nxt.decode_s > out[-1].decode_s * (1 + DECODE_STEP):
            out.append(kept[i])
    for s in (most, *zero):
        if s not in out:
            out.append(s)
    out.sort(key=lambda s: (s.decode_s, -s.cfg.n_gpu_layers))
    return out
