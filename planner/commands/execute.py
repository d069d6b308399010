"""`planner execute`: replay a plan on this machine's llama.cpp engines."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from planner import interrupt
from planner.commands.common import console, plan_instance_options
from planner.domain import Instance, Schedule
from planner.errors import ExecuteError, InputError, Interrupted
from planner.executor import Replay
from planner.io import write_json_atomic


def parse_device_map(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise InputError([f"--device-map {item!r}: expected PLAN_DEVICE=host"])
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def print_dry_run(plan: Path, inst: Instance, schedule: Schedule, paths: dict[str, Path]) -> None:
    used = sorted({e.model for e in schedule.engines})
    devices = sorted({e.device for e in schedule.engines})
    console.print(f"{plan}: ready to replay on this machine (instance {inst.path or inst.name}):"
                  f" {len(schedule.engines)} engines on {', '.join(devices) or 'no device'}, "
                  f"{len(schedule.actions)} actions; nothing was run", soft_wrap=True)
    for m in used:
        p = paths[m]
        console.print(f"  {m}: {p} ({p.stat().st_size / 2**20:.0f} MiB)", soft_wrap=True)


def print_report_summary(report: dict[str, Any], out: Path | str) -> None:
    table = Table(title=f"predicted against measured ({report['status']})")
    for c in ("what", "n", "median |err|", "p90 |err|"):
        table.add_column(c, justify="left" if c == "what" else "right")
    labels = {"response": "[bold]response time[/] (completion - arrival)",
              "completion": "request completion (since replay start)"}
    for kind, s in report["summary"].items():
        if s["n"]:
            label = labels.get(kind, f"{kind} duration")
            table.add_row(label, str(s["n"]), f"{100 * s['median']:.1f}%",
                          f"{100 * s['p90']:.1f}%")
    console.print(table)
    for d in report["devices"]:
        for kind in ("host", "gpu"):
            pred, meas = d.get(f"predicted_peak_{kind}_bytes"), d.get(f"measured_peak_{kind}_bytes")
            if pred is not None:
                shown = "not measured" if meas is None else f"{meas / 2**20:.0f} MiB"
                console.print(f"{d['id']}: {kind} memory peak predicted {pred / 2**20:.0f} MiB, "
                              f"measured {shown}")
    for e in report.get("engines", []):
        for fb in e.get("fallbacks", []):
            console.print(f"[yellow]note:[/] engine {e['id']}: llama.cpp crashed during the first "
                          f"{fb['during']} of {e['model']}; restarted with extra buffer types "
                          f"off ({fb['restart_s']:.2f} s, counted in that action)",
                          soft_wrap=True)
    failed = [a for a in report["actions"] if a["status"] in ("failed", "not_run")]
    for a in failed[:10]:
        console.print(f"[red]{a['status']}[/]: {a['kind']} {a.get('request') or ''} on "
                      f"{a['engine']}: {a.get('error', '')}")
    console.print(f"report: {out}")


@click.command()
@click.argument("plan", type=click.Path(dir_okay=False, path_type=Path))
@plan_instance_options
@click.option("--dry-run", is_flag=True,
              help="Check the plan for replay here (instance, checker, model files, devices) "
                   "and stop: no engine runs, no report is written.")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Report file [default: reports/<plan stem>.json].")
@click.option("--realtime", is_flag=True,
              help="Start each action no earlier than its predicted start.")
@click.option("--device-map", "device_map", multiple=True, metavar="PLAN_DEVICE=host",
              help="Replay a device this machine does not have on its CPU (repeat).")
@click.option("--threads", type=click.IntRange(min=1),
              help="llama.cpp threads per engine [default: the instance host's threads, "
                   "at most this machine's cores].")
def execute(plan: Path, instance: Path | None, force: bool, dry_run: bool, out: Path | None,
            realtime: bool, device_map: tuple[str, ...], threads: int | None) -> None:
    """Replay PLAN on this machine's llama.cpp engines and measure every action.

    Each action starts as soon as what it depends on is done (its lane, its
    engine, its request, the request's arrival; a load made on demand, as in the
    fcfs-lru and grouped baselines' plans, its request's arrival). The report
    (SPEC section 3) is written as the replay goes; Ctrl-C keeps what was measured.

    \b
    Examples:
      planner execute solutions/cpu-demo.json
      planner execute solutions/cpu-demo.json --dry-run
      planner execute solutions/x.json --device-map srv1-gpu0=host --threads 2
      planner show reports/cpu-demo.json -o gantt.png
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from planner.plan_files import prepare_replay

    inst, schedule, paths, overrides, warnings = prepare_replay(
        plan, instance, parse_device_map(device_map), force=force)
    for w in warnings:
        console.print(f"[yellow]warning[/]: {w}")
    if dry_run:
        print_dry_run(plan, inst, schedule, paths)
        return
    target = out or Path("reports") / f"{plan.stem}.json"
    if threads is None:
        threads = min([os.cpu_count() or 1, *(h.threads for h in inst.cluster.hosts)])
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total} actions"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("replaying", total=len(schedule.actions))
        replay = Replay(inst, schedule, paths, target, threads=threads, realtime=realtime,
                        gpu_layers=overrides, plan_path=str(plan), warnings=warnings,
                        on_action=lambda rec: progress.advance(task))
        with interrupt.keyboard_interrupt_on_signals() as signals:
            try:
                report = replay.run()
            except KeyboardInterrupt:
                name = signals[0] if signals else "SIGINT"
                if replay.status == "not started":  # still starting the engine workers
                    for eng in replay.engines.values():
                        eng.close()
                    told = "before the replay started; no report written"
                else:
                    told = f"what was measured is in {keep_report(replay, plan, target)}"
                stopped = Interrupted(f"interrupted ({name}); {told}")
                stopped.exit_code = interrupt.exit_code(name)
                raise stopped from None
    where = keep_report(replay, plan, target)
    print_report_summary(report, where)
    if replay.write_error is not None:
        raise ExecuteError([f"{target}: the report could not be written ({replay.write_error})",
                            f"the whole report is in {where}"])


def keep_report(replay: Replay, plan: Path, target: Path) -> str:
    """Where the report is: ``target``, or, when the disk refused it there, a file in the
    temporary folder, or (that refused too) standard output."""
    if replay.write_error is None:
        return str(target)
    fallback = Path(tempfile.gettempdir()) / f"planner-report-{plan.stem}-{os.getpid()}.json"
    try:
        write_json_atomic(fallback, replay.report())
        return str(fallback)
    except OSError:
        click.echo(json.dumps(replay.report(), indent=1))
        return "standard output (above)"
