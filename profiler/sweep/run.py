"""Running a sweep with progress bars, then its parallel-slot step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from profiler.engine import short_gil_switch
from profiler.store import set_aside
from profiler.sweep.settings import Progress, SweepConfig, SweepResult
from profiler.sweep.steps import Sweep


@contextlib.contextmanager
def rich_progress(description: str) -> Iterator[tuple[Progress, Callable[[float], None]]]:
    """A rich progress bar with ETA; yields ``(tick, set_total)`` for :meth:`Sweep.run`."""
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[what]}"),
                  transient=False) as bar:
        task = bar.add_task(description, total=None, what="")

        def tick(units: float, what: str) -> None:
            bar.update(task, advance=units, what=what)

        def set_total(total: float) -> None:
            bar.update(task, total=max(total, 1e-9))

        yield tick, set_total


def run_sweep(model_path: Path, out_root: Path, config: SweepConfig,
              show_progress: bool = True, fresh: bool = False,
              on_set_aside: Callable[[Path], None] | None = None) -> SweepResult:
    """Measure ``model_path`` on this machine and write its profile under ``out_root``.

    ``fresh``: move the existing profile and its journals aside first
    (:func:`profiler.store.set_aside`; each moved file is passed to ``on_set_aside``)
    instead of resuming from them.
    """
    sweep = Sweep(model_path, out_root, config)
    if fresh:
        for moved in set_aside(sweep.json_path):
            if on_set_aside is not None:
                on_set_aside(moved)
    with short_gil_switch():  # caller-side times as the executor takes them
        if not show_progress:
            return _with_slots(sweep, sweep.run(), config)
        with rich_progress(f"profiling {sweep.arch.key}") as (tick, set_total):
            result = sweep.run(tick, set_total)
        with rich_progress(f"slots {sweep.arch.key}") as (tick, set_total):
            return _with_slots(sweep, result, config, tick)


def _with_slots(sweep: Sweep, result: SweepResult, config: SweepConfig,
                tick: Progress | None = None) -> SweepResult:
    """The parallel-slot step (profiler.batch): batched decode steps, fitted into the profile."""
    if not config.slots:
        return result
    from profiler.batch import BatchConfig, add_batch_profile

    cfg = BatchConfig.quick() if config.mode == "quick" else BatchConfig.full()
    doc = add_batch_profile(sweep.model_path, sweep.csv_path, sweep.json_path, cfg,
                            threads=sweep.cfg.threads, n_gpu_layers=sweep.primary_ngl, tick=tick)
    return replace(result, profile=doc)
