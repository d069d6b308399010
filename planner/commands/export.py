"""`planner export`: the configuration that deploys a plan with llama.cpp-based servers."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="export")
@click.argument("plan", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "target", type=click.Choice(["llama-server", "llama-swap", "ollama",
                                                   "llama-cpp-python"]), required=True,
              help="What to write.")
@click.option("--instance", type=click.Path(dir_okay=False, path_type=Path),
              help="The plan's instance [default: the path the plan records, then "
                   "<name>.json beside the plan, then instances/<name>.json].")
@click.option("--force", is_flag=True,
              help="Use the instance even if it changed since the plan was made (sha256).")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write into [default: exports/<plan stem>/].")
def export_cmd(plan: Path, target: str, instance: Path | None, out: Path | None,
               force: bool) -> None:
    """Write the configuration that deploys PLAN with llama.cpp-based servers.

    \b
    llama-server      one command line per engine (-ngl, -c, --slot-save-path)
    llama-swap        config.yaml: a model per engine, a group per device (swap
                      follows the plan's co-residency), ttl from the plan's idle times
    ollama            a Modelfile per engine (num_gpu, num_ctx) and its keep_alive
    llama-cpp-python  a `python -m llama_cpp.server --config_file` multi-model file

    \b
    Examples:
      planner export solutions/mixed.json --to llama-swap
      planner export solutions/cpu-demo.json --to llama-cpp-python -o /tmp/srv
    """
    from planner.export import export
    from planner.service import plan_and_instance

    warnings: list[str] = []
    inst, schedule = plan_and_instance(plan, instance, force=force, warnings=warnings)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    written = export(inst, schedule, target, out or Path("exports") / plan.stem)
    for p in written:
        click.echo(f"{p}: written")
