"""Read a model's architecture from a GGUF file's metadata (the ``gguf`` package)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from planner.domain import ModelArch


class GgufError(ValueError):
    """The file is missing, unreadable or lacks the metadata we need."""


_BLOCK = re.compile(r"^blk\.(\d+)\.")


def read_gguf_arch(path: str | Path) -> ModelArch:
    """Architecture metadata and weight bytes (per block and outside the blocks)."""
    from gguf import GGUFReader  # imported lazily: it is slow to import

    p = Path(path)
    if not p.is_file():
        raise GgufError(f"{p}: no such GGUF file")
    try:
        reader = GGUFReader(str(p), "r")
    except Exception as exc:  # the reader raises several kinds on corrupt files
        raise GgufError(f"{p}: not a readable GGUF file ({exc})") from exc

    def get(key: str, default: Any = None) -> Any:
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    arch = get("general.architecture")
    if not arch:
        raise GgufError(f"{p}: general.architecture missing")
    n_layers = get(f"{arch}.block_count")
    hidden = get(f"{arch}.embedding_length")
    n_heads = get(f"{arch}.attention.head_count")
    if n_layers is None or hidden is None or n_heads is None:
        raise GgufError(f"{p}: {arch}.block_count/embedding_length/attention.head_count missing")
    n_kv = get(f"{arch}.attention.head_count_kv", n_heads)
    head_dim = get(f"{arch}.attention.key_length", hidden // n_heads)
    ffn = get(f"{arch}.feed_forward_length", 4 * hidden)
    layer_total = 0
    other = 0
    params = 0
    vocab = 0
    types: dict[str, int] = {}
    for t in reader.tensors:
        params += int(t.n_elements)
        if _BLOCK.match(t.name):
            layer_total += int(t.n_bytes)
            tname = t.tensor_type.name
            types[tname] = types.get(tname, 0) + int(t.n_bytes)
        else:
            other += int(t.n_bytes)
        if t.name == "token_embd.weight":
            vocab = int(max(t.shape))
    quant = max(types, key=lambda k: types[k]) if types else "unknown"
    name = get("general.name") or p.stem
    return ModelArch(
        name=str(name), n_layers=int(n_layers), hidden_size=int(hidden),
        n_heads=int(n_heads), n_kv_heads=int(n_kv), head_dim=int(head_dim),
        ffn_size=int(ffn), vocab_size=vocab, layer_bytes=max(1, layer_total // int(n_layers)),
        other_bytes=other, quantization=quant, params=params, source=f"GGUF {p.name}",
    )
