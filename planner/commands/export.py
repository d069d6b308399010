"""`planner export`: the configuration that deploys a plan with llama.cpp-based servers."""

from __future__ import annotations

from pathlib import Path

import click

from planner.commands.common import plan_instance_options
from planner.errors import InputError


@click.command(name="export")
@click.argument("plan", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "target", type=click.Choice(["llama-server", "llama-server-router",
                                                   "llama-swap", "ollama",
                                                   "llama-cpp-python"]), required=True,
              help="What to write.")
@click.option("--llama-swap-form", "swap_form", type=click.Choice(["matrix", "groups"]),
              default="matrix", show_default=True,
              help="llama-swap's matrix router (per host), or the legacy groups.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="A replay report of PLAN: its measured load times set llama-swap's "
                   "evict_costs (else the plan's predicted ones).")
@plan_instance_options
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write into [default: exports/<plan stem>/].")
def export_cmd(plan: Path, target: str, swap_form: str, report: Path | None,
               instance: Path | None, out: Path | None, force: bool) -> None:
    """Write the configuration that deploys PLAN with llama.cpp-based servers.

    \b
    llama-server      one command line per engine (-ngl, -c, --slot-save-path)
    llama-server-router  router mode: a --models-preset INI per host (n-gpu-layers,
                      ctx-size, parallel, load-on-startup) and --models-max
    llama-swap        a model per engine, ttl from the plan's idle times; the matrix
                      router (sets resident together, evict_costs from reload
                      times) or, with --llama-swap-form groups, a group per device
    ollama            a Modelfile per engine (num_gpu, num_ctx) and its keep_alive
    llama-cpp-python  a `python -m llama_cpp.server --config_file` multi-model file

    \b
    Examples:
      planner export solutions/mixed.json --to llama-swap
      planner export solutions/mixed.json --to llama-server-router
      planner export solutions/cpu-demo.json --to llama-cpp-python -o /tmp/srv
    """
    from planner.export import export
    from planner.io import read_json
    from planner.plan_files import plan_and_instance

    warnings: list[str] = []
    inst, schedule = plan_and_instance(plan, instance, force=force, warnings=warnings)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    replay = None
    if report is not None:
        replay, _ = read_json(report)
        if not isinstance(replay, dict) or replay.get("format") != "planner.report/1":
            raise InputError([f"{report}: format: expected 'planner.report/1'"])
        if replay.get("instance", {}).get("name") != inst.name:
            raise InputError([f"{report}: a replay of another instance "
                              f"({replay.get('instance', {}).get('name')!r})"])
    written = export(inst, schedule, target, out or Path("exports") / plan.stem,
                     swap_form, replay)
    for p in written:
        click.echo(f"{p}: written")
