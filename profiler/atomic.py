"""Files written whole or not at all: a temporary file beside the target, then a rename.

Shared by the profile store, the GGUF metadata cache and (re-exported by
``planner.io``) every file the planner writes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _read_umask() -> int:
    """The process umask (read once, at import, before any writer thread exists)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Have ``write`` fill a temporary file beside ``path``, then rename it into place.

    Nothing half-written is ever left at ``path``: on any failure (an interrupt
    too) the temporary file is removed and the old file, if any, stays as it was; the
    new file's data reaches the disk before the rename.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp" + p.suffix, dir=p.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:  # on disk before the rename: a crash right after it
            os.fsync(f.fileno())  # leaves the new file whole, not empty
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        # (the old file's, or 0666 less the umask)
        os.chmod(tmp, p.stat().st_mode & 0o7777 if p.exists() else 0o666 & ~_UMASK)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``text`` (UTF-8) at ``path``, written whole or not at all."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
