"""`planner study`: solve an instance on every cluster of a sweep; find the cheapest."""

from __future__ import annotations

from pathlib import Path

import click

from planner.commands.common import FiniteFloat, console
from planner.costmodel import COST_MODELS
from planner.domain import MAX_TIME_S, OBJECTIVES


@click.command()
@click.argument("instance", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--gpus", "gpus", required=True, metavar="TYPE:FROM-TO,...",
              help="GPU count range per GPU type; the sweep is their cartesian product "
                   "(the all-zero cluster left out), e.g. 'rtx-a6000:0-4,rtx-5000-ada:0-4'.")
@click.option("--prices", type=click.Path(dir_okay=False, path_type=Path),
              help="Price table (JSON) [default: the example in planner/data/prices.json].")
@click.option("--target", required=True, metavar="METRIC>=X|METRIC<=S",
              help="slo_attainment>=X, mean_response<=S, weighted_mean_response<=S, "
                   "p95_response<=S or makespan<=S.")
@click.option("--scales", default="1", show_default=True,
              help="Load scales, comma-separated: 2 compresses arrival times by 2 (twice the "
                   "load).")
@click.option("--time-limit", type=FiniteFloat(min=0.1, max=MAX_TIME_S), default=20.0,
              show_default=True,
              help="Solver limit per scenario, seconds.")
@click.option("--solver", type=click.Choice(["cp-sat", "fcfs-lru", "grouped", "static"]),
              default="cp-sat", show_default=True)
@click.option("--cost-model", type=click.Choice(COST_MODELS), default="auto", show_default=True)
@click.option("--jobs", type=click.IntRange(min=1), default=2, show_default=True,
              help="Scenarios solved at once (processes; each solve uses one CP-SAT worker).")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Run the scenarios as Ray tasks: 'auto', 'ray://HOST:10001', or 'local' "
                   "(start Ray here with --jobs CPUs).")
@click.option("--gpus-per-host", type=click.IntRange(min=1), default=2, show_default=True,
              help="GPUs filled onto each host (hosts copy the instance's first host).")
@click.option("--host-ram", type=FiniteFloat(min=1, max=2**20), metavar="GIB",
              help="What if: host RAM in GiB [default: the template host's].")
@click.option("--pcie-gen", type=click.Choice(["3", "4", "5"]),
              help="What if: every GPU on this PCIe generation (cost model's transfers).")
@click.option("--boost", "boosts", multiple=True, metavar="MODEL=FACTOR",
              help="What if: a model's traffic times FACTOR (requests copied with fresh ids, "
                   "jittered arrivals; repeat).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --boost.")
@click.option("--objective", type=click.Choice(OBJECTIVES),
              help="What each scenario is solved for [default: slo_attainment for an SLO "
                   "target, makespan for a makespan target, else the instance's].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder [default: studies/<instance stem>/].")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".cache/study"), show_default=True,
              help="Finished scenarios, keyed by a hash of instance, cluster, cost model and "
                   "solver settings; a rerun skips them.")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the cache.")
def study(instance: Path, gpus: str, prices: Path | None, target: str, scales: str,
          time_limit: float, solver: str, cost_model: str, jobs: int, ray_address: str | None,
          gpus_per_host: int, host_ram: float | None, pcie_gen: str | None,
          boosts: tuple[str, ...], seed: int, objective: str | None, out: Path | None,
          cache: Path, no_cache: bool) -> None:
    """Solve INSTANCE on every cluster of a sweep; find the cheapest meeting a target.

    Writes results.csv (one row per scenario), summary.json (the cheapest
    cluster meeting the target per load scale, the Pareto fronts of cost
    against mean response and SLO attainment), pareto.png, and every
    scenario's instance and plan under scenarios/ (re-solve any of them with
    planner solve). Cost per hour = GPU prices + host price x hosts.

    \b
    Examples:
      planner study instances/mixed.json --gpus "rtx-a6000:0-4,rtx-5000-ada:0-4" \\
          --target "slo_attainment>=0.95"
      planner study instances/mixed.json --gpus "l4:1-6" --target "p95_response<=120" \\
          --scales 1,1.5,2 --boost qwen3-8b-f16=2 --pcie-gen 3 --host-ram 256
      planner study X.json --gpus "rtx-4090:1-4" --target "mean_response<=30" --ray auto
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from planner.io import read_json
    from planner.study import (
        StudySpec,
        load_prices,
        parse_boosts,
        parse_gpu_ranges,
        parse_scales,
        parse_target,
        run_study,
        study_table,
    )

    spec_target = parse_target(target)
    ranges = parse_gpu_ranges(gpus)
    scale_list = parse_scales(scales)
    price_table = load_prices(prices)
    data, _ = read_json(instance)
    model_ids = [str(m.get("id")) for m in data.get("models", []) if isinstance(m, dict)] \
        if isinstance(data, dict) else []
    boost_map = parse_boosts(boosts, model_ids)
    spec = StudySpec(instance, ranges, spec_target, price_table, scale_list, time_limit,
                     solver, cost_model, gpus_per_host, host_ram,
                     int(pcie_gen) if pcie_gen else None, boost_map, seed, objective,
                     jobs, ray_address, out or Path("studies") / instance.stem,
                     None if no_cache else cache)
    with Progress(TextColumn("study"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.description}"),
                  console=console, transient=True) as bar:
        task = bar.add_task("", total=None)

        def progress(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label)

        result = run_study(spec, progress)
    console.print(study_table(result))
    s = result.summary
    console.print(f"{s['n_scenarios']} scenarios: {result.solved} solved now, "
                  f"{result.reused} reused from {cache}, {s['n_infeasible']} infeasible, "
                  f"{s['n_errors']} errors; {result.wall_s:.1f} s")
    for b in s["by_scale"]:
        console.print(("[green]" if b["cheapest_meeting_target"] else "[yellow]")
                      + b["statement"] + "[/]")
    for p in result.written:
        console.print(f"{p}: written")
