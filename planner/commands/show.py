"""`planner show`: draw a replay report as a Gantt chart, or write a plan's HTML page."""

from __future__ import annotations

from pathlib import Path

import click

from planner.errors import InputError


@click.command()
@click.argument("report", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG to write (a replay report).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path),
              help="One self-contained HTML page to write (a plan or a replay report).")
@click.option("--instance", type=click.Path(dir_okay=False, path_type=Path),
              help="The plan's instance, for --html [default: instances/<its name>.json].")
def show(report: Path, out: Path | None, html_out: Path | None,
         instance: Path | None) -> None:
    """Draw a replay report's predicted and measured actions as a Gantt chart, or
    write a plan's (or a report's) page: Gantt and memory per device, baselines,
    metrics, predicted against measured.

    \b
    Examples:
      planner show reports/cpu-demo.json -o gantt.png
      planner show solutions/mixed.json --html mixed.html
    """
    from planner.io import read_json
    from planner.plots import gantt

    if out is None and html_out is None:
        raise InputError(["give -o PNG (a replay report) or --html FILE"])
    data, _ = read_json(report)
    if html_out is not None:
        from planner.page import write_page

        click.echo(f"{write_page(report, data, html_out, instance)}: written")
    if out is not None:
        if not isinstance(data, dict) or data.get("format") != "planner.report/1":
            raise InputError([f"{report}: format: expected 'planner.report/1' for a PNG "
                              "(a plan's page: --html)"])
        gantt(data, out)
        click.echo(f"{out}: written")
