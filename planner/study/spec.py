"""The study's data: what it sweeps (StudySpec), one scenario, and the result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.study.args import Target
from planner.study.pricing import Prices


@dataclass
class StudySpec:
    instance: Path
    gpus: dict[str, list[int]]
    target: Target
    prices: Prices
    scales: list[float] = field(default_factory=lambda: [1.0])
    time_limit_s: float = 20.0
    solver: str = "cp-sat"
    cost_model: str = "auto"
    gpus_per_host: int = 2
    host_ram_gib: float | None = None
    pcie_gen: int | None = None
    boosts: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    objective: str | None = None  # None: the target's (see objective_for)
    jobs: int = 2
    ray_address: str | None = None
    out: Path = Path("studies")
    cache: Path | None = Path(".cache/study")


@dataclass
class Scenario:
    id: str
    counts: dict[str, int]  # GPU type -> count (zeros left out)
    scale: float
    n_hosts: int
    data: dict[str, Any]  # the instance, as written to <out>/scenarios/<id>.json
    key: str  # cache key


@dataclass
class StudyResult:
    spec: StudySpec
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    reused: int
    solved: int
    wall_s: float
    written: list[Path]


Progress = Callable[[int, int, str], None]
