"""`planner instance ...`: create and inspect instance files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


@instance.command("show")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--cost-model", type=click.Choice(["auto", "analytic"]), default="auto",
              show_default=True,
              help="auto: the instance's profiles where they cover a (model, device), the "
                   "analytic model elsewhere.")
def show_cmd(file: Path, as_json: bool, cost_model: str) -> None:
    """What an instance asks of its cluster: each model's fit and speed on each device,
    and the work its requests bring against the GPUs' time.

    For each model on each device alone: the most GPU layers that fit (host RAM
    included), decode speed at that split (prefill too with --json) and its load
    time. For each GPU: whether its models at those splits fit at once, and how many
    do. For each model's requests: count, rate, median lengths, and their runs at
    their fastest device, summed. The busy share divides that work by the GPUs' time
    over the arrival span: above 1 the GPUs cannot keep up even with no swap at all.

    \b
    Examples:
      planner instance show instances/mixed.json
      planner instance show instances/mixed.json --json | jq .busy_share
    """
    import json

    from planner.costmodel import cost_model_for
    from planner.io import load_instance
    from planner.summary import summarize

    inst = load_instance(file)
    s = summarize(inst, cost_model_for(inst, cost_model))
    if as_json:
        click.echo(json.dumps(s.to_json(), indent=2))
        return
    _print_summary(s)


def _print_summary(s: Any) -> None:
    from rich import box
    from rich.table import Table

    from planner.commands.common import console, fmt

    def num(v: float | None, digits: int = 1) -> str:
        return "-" if v is None else f"{v:,.{digits}f}"

    console.print(f"[bold]{s.name}[/bold]: {s.requests} requests over {s.span_s:,.0f} s of "
                  f"arrivals, objective {s.objective}")
    sources = {_short(f.source) for f in s.fits}
    one_source = len(sources) == 1
    names = max((len(f.model) for f in s.fits), default=5)
    t = Table(title="each model alone on a device: the most GPU layers that fit, decode speed "
                    "at its median prompt, load time"
                    + (f" ({next(iter(sources))} cost model)" if one_source else ""),
              box=box.SIMPLE_HEAD, pad_edge=False)
    cols = ["model", "devices", "layers", "GPU GiB", "host GiB", "tok/s", "load s"] + (
        [] if one_source else ["source"])
    for col in cols:
        t.add_column(col, justify="left" if col in ("model", "devices", "source") else "right",
                     min_width=names if col == "model" else None)
    rows: list[list[str]] = []
    for f in s.fits:  # devices with the same figures for a model share a row
        cells = ["none fit", "", "", "", ""] if f.n_gpu_layers is None else [
            f"{f.n_gpu_layers}/{f.max_gpu_layers}", f"{f.gpu_gib:.1f}", f"{f.host_gib:.1f}",
            num(f.decode_tok_s), num(f.load_s)]
        cells += [] if one_source else [_short(f.source)]
        if rows and rows[-1][0] == f.model and rows[-1][2:] == cells:
            rows[-1][1] += f"\n{f.device}"
        else:
            rows.append([f.model, f.device, *cells])
    for row in rows:
        t.add_row(*row)
    console.print(t)
    for r in s.rooms:
        if r.models and r.need_gib > r.gib:
            console.print(f"{r.device} ({r.gib:.0f} GiB): its {r.models} models at those "
                          f"splits need {r.need_gib:.1f} GiB together; at most "
                          f"{r.most_at_once} fit at once, so serving them all means swaps "
                          "(or fewer layers)")
        elif r.models:
            console.print(f"{r.device} ({r.gib:.0f} GiB): all {r.models} models fit at once "
                          f"at those splits ({r.need_gib:.1f} GiB)")
    w = Table(title="requests per model: median prompt and output tokens, and the work "
                    "of their runs alone at their fastest device",
              box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("model", "requests", "per s", "prompt", "output", "work s", "fastest on"):
        w.add_column(col, justify="left" if col in ("model", "fastest on") else "right",
                     min_width=names if col == "model" else None)
    for m in s.work:
        w.add_row(m.model, str(m.requests), num(m.rate_per_s, 3), fmt(m.median_prompt),
                  fmt(m.median_output), num(m.fastest_s), m.fastest_on or "-")
    console.print(w)
    for m in s.unservable:
        console.print(f"[red]{m} fits no device at any layer split[/red]: "
                      "`planner solve` refuses this instance")
    pool = f"{s.pool_size} {s.pool if s.pool_size > 1 else s.pool.rstrip('s')}"
    if s.requests == 0:
        console.print("no requests: nothing to serve (its plan is the empty plan)")
        return
    if s.busy_share is None:
        console.print(f"work at the fastest: {s.fastest_s:,.1f} s on {pool} (every request "
                      "arrives at once: no busy share)")
        return
    if s.busy_share > 1:
        verdict = f"the {s.pool} cannot keep up even with no swap: a backlog grows" + (
            " unless host CPUs take work" if s.pool == "GPUs" else "")
    else:
        verdict = "room left for swaps" + (" and slower splits" if s.pool == "GPUs" else "")
    console.print(f"busy share: [bold]{s.busy_share:.2f}[/bold] ({s.fastest_s:,.1f} s of work "
                  f"at the fastest over {s.span_s:,.0f} s of arrivals on {pool}): {verdict}")


def _short(source: str) -> str:
    """A profile's file name, not its whole path (the JSON keeps the path)."""
    if source.startswith("profile "):
        return "profile " + Path(source[len("profile "):]).name
    return source
