"""`planner instance ...`: create and inspect instance files."""

from __future__ import annotations

from pathlib import Path

import click

from planner.commands.common import FiniteFloat
from planner.domain import MAX_TIME_S, OBJECTIVES, Instance
from planner.generate import ARRIVALS, LENGTHS, MIXED_MODELS


@click.group()
def instance() -> None:
    """Create and inspect instance files."""


@instance.command("generate")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Instance file to write.")
@click.option("--like", type=click.Path(dir_okay=False, path_type=Path),
              help="Copy cluster, models and objective from this instance.")
@click.option("--cluster", "cluster_name", type=click.Choice(["two-servers", "one-gpu"]),
              default="two-servers", show_default=True, help="A built-in cluster.")
@click.option("--models", default=",".join(MIXED_MODELS),
              show_default=True, help="Reference model names, comma-separated.")
@click.option("--rate", "rates", multiple=True,
              help="Arrivals per second: one number for every model, or MODEL=RATE (repeat).")
@click.option("--duration", type=FiniteFloat(min=1, max=MAX_TIME_S), default=600.0,
              show_default=True,
              help="Seconds over which requests arrive.")
@click.option("--prompt-median", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--output-median", type=click.IntRange(min=1), default=192, show_default=True)
@click.option("--max-prompt", type=click.IntRange(min=1), default=3072, show_default=True)
@click.option("--max-output", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--name", help="Instance name [default: the output file's stem].")
@click.option("--objective", type=click.Choice(OBJECTIVES), default=None)
@click.option("--arrivals", type=click.Choice(ARRIVALS), default="poisson", show_default=True,
              help="bursty: in each period a few models are hot (their rate boosted).")
@click.option("--hot-models", type=click.IntRange(min=1), default=2, show_default=True,
              help="bursty: models hot in each period.")
@click.option("--burst-period", type=FiniteFloat(min=1, max=MAX_TIME_S), default=60.0,
              show_default=True, help="bursty: seconds per period.")
@click.option("--lengths", type=click.Choice(LENGTHS), default="lognormal", show_default=True,
              help="pareto: heavy-tailed prompt and output lengths (same medians).")
@click.option("--tail-alpha", type=FiniteFloat(min=1.01, max=100), default=1.5,
              show_default=True, help="pareto: tail shape (smaller is heavier).")
def generate_cmd(out: Path, like: Path | None, cluster_name: str, models: str,
                 rates: tuple[str, ...], duration: float, prompt_median: int,
                 output_median: int, max_prompt: int, max_output: int, seed: int,
                 name: str | None,
                 objective: str | None, arrivals: str = "poisson", hot_models: int = 2,
                 burst_period: float = 60.0, lengths: str = "lognormal",
                 tail_alpha: float = 1.5) -> None:
    """Write an instance: Poisson or bursty arrivals, log-normal or heavy-tailed lengths.

    \b
    Examples:
      planner instance generate -o instances/busy.json --rate 0.1 --seed 3
      planner instance generate --like instances/mixed.json --rate 0.05 -o /tmp/x.json
      planner instance generate -o x.json --models llama3-8b-q4_k_m --rate llama3-8b-q4_k_m=0.5
      planner instance generate -o b.json --arrivals bursty --hot-models 2 --lengths pareto
    """
    from planner.generate import WorkloadSpec, generate_instance
    from planner.io import write_json_atomic
    from planner.metrics import counted

    spec = WorkloadSpec(rates={}, duration_s=duration, prompt_median=prompt_median,
                        output_median=output_median, max_prompt=max_prompt,
                        max_output=max_output, seed=seed, arrivals=arrivals,
                        burst_period_s=burst_period, hot_models=hot_models, lengths=lengths,
                        tail_alpha=tail_alpha)
    data, inst, shortened = generate_instance(out, like, cluster_name, models, rates, spec,
                                              name, objective)
    _refuse_unservable(inst, out)
    write_json_atomic(out, data)
    click.echo(f"{out}: {len(data['requests'])} requests over {duration:.0f} s")
    if shortened:
        click.echo(f"  {counted(shortened, 'request')} shortened to their model's trained "
                   "context (prompt + output at most n_ctx_train)")


def _refuse_unservable(inst: Instance, out: Path) -> None:
    """Raise the lines `planner solve` would print where a model of the generated instance
    fits on no device at any layer split (nothing is written then): an instance that no
    command could plan. Other faults (a profile that does not load) are left to `validate`."""
    from planner.costmodel import cost_model_for
    from planner.errors import InputError, PlannerError
    from planner.service import sizing_faults

    try:
        cost = cost_model_for(inst, "auto")
    except PlannerError:
        return
    faults = sizing_faults(inst, cost, str(out))
    if faults:
        raise InputError(faults, hint="nothing written: leave that model out, or give the "
                         "cluster more memory")
