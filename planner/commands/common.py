"""What the command modules share: the console and number formatting."""

from __future__ import annotations

from typing import Any

from rich.console import Console

console = Console(stderr=False)


def fmt(v: Any, unit: str = "") -> str:
    """A metric for a table: '-' for None, 3 decimals below 1000, one above."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}{unit}" if abs(v) < 1000 else f"{v:.1f}{unit}"
    return f"{v}{unit}"
