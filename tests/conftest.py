"""Shared fixtures: small instances built in memory, output folders in tmp."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tiny_dict() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "instances" / "tiny.json").read_text())
    return copy.deepcopy(data)


@pytest.fixture
def tiny() -> dict[str, Any]:
    return tiny_dict()


@pytest.fixture
def write_instance(tmp_path: Path):  # type: ignore[no-untyped-def]
    def write(data: dict[str, Any] | str, name: str = "inst.json") -> Path:
        p = tmp_path / name
        p.write_text(data if isinstance(data, str) else json.dumps(data))
        return p

    return write


@pytest.fixture(autouse=True)
def _chdir_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in a fresh folder, so default outputs (solutions/) land there."""
    monkeypatch.chdir(tmp_path)
