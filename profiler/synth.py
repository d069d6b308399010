"""Synthetic llama-architecture GGUF models of a chosen shape, for profiling and replay.

The weights are random (finite, small) and written straight in the block layout
of the chosen type, so even a 1.5 GB file takes seconds. The tokenizer metadata
is copied from SmolLM2's GGUF, so tokenization works as for a real model. The
file carries ``planner.synthetic = true``; every profile made from it says
``synthetic_weights: true`` (timings do not depend on weight values; outputs do).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from profiler.models import SYNTHETIC_KEY, ModelSourceError, fetch_smollm2

TYPES = ("F16", "Q8_0", "Q4_0")
_FILE_TYPE = {"F16": 1, "Q4_0": 2, "Q8_0": 7}


@dataclass(frozen=True)
class SynthShape:
    """Shape of a synthetic llama model."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    type: str = "Q8_0"
    context_length: int = 8192

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"type must be one of {', '.join(TYPES)}, not {self.type!r}")
        for name in ("layers", "hidden", "heads", "kv_heads", "ffn"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads "
                             f"({self.kv_heads})")
        if self.hidden % 32 or self.ffn % 32:
            raise ValueError("hidden and ffn must be multiples of 32 (quantization blocks)")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def tensors(self, vocab: int) -> list[tuple[str, tuple[int, int] | tuple[int], bool]]:
        """``(name, numpy shape (rows, cols), quantizable)`` in file order."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        out: list[tuple[str, tuple[int, int] | tuple[int], bool]] = [
            ("token_embd.weight", (vocab, h), True), ("output_norm.weight", (h,), False)]
        for i in range(self.layers):
            b = f"blk.{i}."
            out += [(b + "attn_norm.weight", (h,), False),
                    (b + "attn_q.weight", (h, h), True), (b + "attn_k.weight", (kv, h), True),
                    (b + "attn_v.weight", (kv, h), True),
                    (b + "attn_output.weight", (h, h), True),
                    (b + "ffn_norm.weight", (h,), False),
                    (b + "ffn_gate.weight", (self.ffn, h), True),
                    (b + "ffn_up.weight", (self.ffn, h), True),
                    (b + "ffn_down.weight", (h, self.ffn), True)]
        return out

    def estimate_bytes(self, vocab: int = 49152) -> int:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        bs, ts = GGML_QUANT_SIZES[GGMLQuantizationType[self.type]]
        total = 0
        for _, shape, quant in self.tensors(vocab):
            n = int(np.prod(shape))
            total += n * ts // bs if quant else n * 4
        return total


def _tokenizer_fields(source: Path) -> list[tuple[str, Any, Any, Any]]:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(source))
    out = []
    for key, f in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        out.append((key, f.contents(), vtype, sub))
    return out


def _random_f16(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # random sign and mantissa, exponent fixed at 2^-7: values in +-[0.0078, 0.0156)
    bits = rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
    bits = (bits & np.uint16(0x83FF)) | np.uint16(0x2000)
    return bits.view(np.float16)


def _random_quant(rng: np.random.Generator, rows: int, cols: int, qtype: str) -> np.ndarray:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    bs, ts = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    blocks = rows * cols // bs
    data = rng.integers(0, 256, size=(blocks, ts), dtype=np.uint8)
    data[:, 0:2] = np.frombuffer(np.float16(0.002).tobytes(), dtype=np.uint8)  # finite scale
    return data.reshape(rows, cols // bs * ts)


def write_synthetic(path: Path, shape: SynthShape, *, tokenizer_from: Path | None = None,
                    seed: int = 0, name: str | None = None) -> Path:
    """Write a synthetic llama GGUF of ``shape`` to ``path``; returns ``path``."""
    from gguf import GGMLQuantizationType, GGUFWriter

    path = Path(path)
    src = Path(tokenizer_from) if tokenizer_from is not None else fetch_smollm2()
    if not src.is_file():
        raise ModelSourceError(f"tokenizer source not found: {src}")
    tok = _tokenizer_fields(src)
    vocab = next((len(v) for k, v, _, _ in tok if k == "tokenizer.ggml.tokens"), 0)
    if vocab <= 0:
        raise ModelSourceError(f"{src}: no tokenizer.ggml.tokens to copy")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    s = shape
    w = GGUFWriter(str(tmp), "llama")
    w.add_name(name or f"synthetic-llama-{s.layers}l-{s.hidden}h-{s.type.lower()}")
    w.add_bool(SYNTHETIC_KEY, True)
    w.add_uint32("planner.synthetic_seed", seed)
    w.add_block_count(s.layers)
    w.add_context_length(s.context_length)
    w.add_embedding_length(s.hidden)
    w.add_feed_forward_length(s.ffn)
    w.add_head_count(s.heads)
    w.add_head_count_kv(s.kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(s.head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_file_type(_FILE_TYPE[s.type])
    for key, value, vtype, sub in tok:
        w.add_key_value(key, value, vtype, sub_type=sub)
    qt = GGMLQuantizationType[s.type]
    specs = s.tensors(vocab)
    for tname, tshape, quant in specs:
        if not quant:
            w.add_tensor_info(tname, tshape, np.dtype(np.float32), int(np.prod(tshape)) * 4)
        elif s.type == "F16":
            w.add_tensor_info(tname, tshape, np.dtype(np.float16), int(np.prod(tshape)) * 2)
        else:
            rows, cols = tshape  # type: ignore[misc]
            qa = _random_quant(np.random.default_rng(0), 1, 32, s.type)  # byte width of a block
            row_bytes = cols // 32 * qa.shape[1]
            w.add_tensor_info(tname, (rows, row_bytes), np.dtype(np.uint8), rows * row_bytes,
                              raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for _tname, tshape, quant in specs:
        if not quant:
            w.write_tensor_data(np.ones(tshape, dtype=np.float32))
        elif s.type == "F16":
            w.write_tensor_data(_random_f16(rng, tshape))
        else:
            rows, cols = tshape  # type: ignore[misc]
            w.write_tensor_data(_random_quant(rng, rows, cols, s.type))
    w.close()
    tmp.replace(path)
    return path
