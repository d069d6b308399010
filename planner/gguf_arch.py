"""A model's architecture from a GGUF file, as the planner's ModelArch.

The reading itself is the profiler's (``profiler.models.read_arch``, the
``gguf`` package); this adapter converts it and its errors.
"""

from __future__ import annotations

from pathlib import Path

from planner.domain import ModelArch
from planner.errors import GgufError


def read_gguf_arch(path: str | Path) -> ModelArch:
    """Architecture metadata and weight bytes (per block and outside the blocks)."""
    from profiler.models import ModelSourceError, read_arch

    try:
        a = read_arch(path)
    except ModelSourceError as exc:
        raise GgufError(str(exc)) from None
    if a.hidden_size <= 0 or a.n_heads <= 0 or a.head_dim <= 0:
        raise GgufError(f"{path}: embedding_length/attention.head_count missing")
    synthetic = ", synthetic weights" if a.synthetic_weights else ""
    return ModelArch(
        name=a.name, n_layers=a.n_layers, hidden_size=a.hidden_size, n_heads=a.n_heads,
        n_kv_heads=a.n_kv_heads, head_dim=a.head_dim, ffn_size=a.ffn_size or 4 * a.hidden_size,
        vocab_size=a.vocab_size, layer_bytes=max(1, a.layer_bytes), other_bytes=a.other_bytes,
        quantization=a.quantization, params=a.params, source=f"GGUF {a.file}{synthetic}",
        n_ctx_train=a.context_length if a.context_length > 0 else None,
    )
