"""`planner profile check INSTANCE`: how far this machine is from each profile an instance uses."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(name="check")
@click.argument("instance", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--no-decode", is_flag=True,
              help="Identity and memory bandwidth only (no llama.cpp decode probe).")
@click.option("--json", "as_json", is_flag=True, help="Print the check as JSON.")
def profile_check(instance: Path, no_decode: bool, as_json: bool) -> None:
    """Probe this machine (at most about 15 s) against INSTANCE's profiles.

    For each profile: whether it was measured on this machine (CPU, cores,
    threads, memory, machine id, llama.cpp build and backend, GPUs), and how far
    a memory-bandwidth probe and a llama.cpp decode probe on the profile's own
    model are from it. A drift beyond 10% means re-profiling (the command says
    how). The probe spread is how much the decode probe's repetitions, a fraction
    of a second apart, disagree: above 10% the machine is too unsteady for any
    prediction to hold that closely (other load on it or on its VM host).
    `planner solve` and `planner execute` reuse this check (same boot, profile
    unchanged) for their warnings. Exit code 1 when a profile does not match.

    \b
    Examples:
      planner profile check instances/cpu-demo.json
      planner profile check instances/cpu-demo.json --json
    """
    from rich.console import Console
    from rich.table import Table

    from planner.io import load_instance
    from planner.machine import check_instance, profile_warnings

    inst = load_instance(instance)  # its faults are one line each, exit 2 (the CLI's handler)
    if not inst.profiles:
        click.echo(f"{instance}: lists no profiles (the analytic model serves it)")
        return
    checks = check_instance(inst, decode=not no_decode)
    summary = [c.to_json() for c in checks]
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    else:
        con = Console()
        table = Table(title=f"profiles of {inst.name} against this machine")
        for col in ("profile", "models", "machine", "decode predicted / here", "drift",
                    "probe spread", "matches"):
            table.add_column(col)
        for c in checks:
            d = c.distance
            machine = ("unknown (no fingerprint)" if d.same_machine is None else
                       "same" if d.same_machine else "elsewhere: " + "; ".join(d.differences))
            dec = (f"{1e3 * c.decode_predicted_s:.2f} / {1e3 * c.decode_measured_s:.2f} ms"
                   if c.decode_predicted_s and c.decode_measured_s else c.note or "-")
            drift = ", ".join(f"{k} {100 * v:+.1f}%" for k, v in sorted(d.drift.items())) or "-"
            noise = "-" if c.decode_spread is None else f"{100 * c.decode_spread:.0f}%"
            table.add_row(str(c.path), ", ".join(c.models), machine, dec, drift, noise,
                          "[green]yes[/]" if c.matches else "[red]no[/]")
        con.print(table)
        for w in profile_warnings(inst, summary):
            con.print(f"[yellow]warning[/]: {w}", soft_wrap=True)
    if not all(c.matches for c in checks):
        raise SystemExit(1)
