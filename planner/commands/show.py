"""`planner show`: draw a replay report as a Gantt chart."""

from __future__ import annotations

from pathlib import Path

import click

from planner.errors import InputError


@click.command()
@click.argument("report", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="PNG to write.")
def show(report: Path, out: Path) -> None:
    """Draw a replay report's predicted and measured actions as a Gantt chart.

    \b
    Example:
      planner show reports/cpu-demo.json -o gantt.png
    """
    from planner.io import read_json
    from planner.plots import gantt

    data, _ = read_json(report)
    if not isinstance(data, dict) or data.get("format") != "planner.report/1":
        raise InputError([f"{report}: format: expected 'planner.report/1'"])
    gantt(data, out)
    click.echo(f"{out}: written")
