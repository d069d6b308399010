"""A model's architecture from a GGUF file, as the planner's ModelArch.

The reading itself is the profiler's (``profiler.models.read_arch``, the
``gguf`` package); this adapter converts it and its errors.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from planner.domain import ModelArch
from planner.errors import GgufError


def read_gguf_arch(path: str | Path) -> ModelArch:
    """Architecture metadata and weight bytes (per block and outside the blocks).

    Reading a GGUF's metadata parses its whole tokenizer (about 2 s for a 49k-token
    vocabulary), so results are kept per (file, size, modification time): here for the
    process, and on disk by ``profiler.models.read_arch`` for later commands.
    """
    try:
        st = Path(path).stat()
        key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        key = (str(path), -1, -1)  # missing: read_arch reports it
    return _read_cached(*key)


@lru_cache(maxsize=64)
def _read_cached(path: str, size: int, mtime_ns: int) -> ModelArch:
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
