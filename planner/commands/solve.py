"""`planner solve`: plan placement, layer splits and a timed schedule for an instance."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from planner.commands.common import FiniteFloat, console, err, fmt
from planner.costmodel import COST_MODELS
from planner.domain import MAX_TIME_S, OBJECTIVES
from planner.errors import Interrupted
from planner.metrics import METRIC_LABELS, headroom


def print_summary(data: dict[str, Any], out: Path) -> None:
    s = data["solver"]
    console.print(f"[bold]{data['instance']['name']}[/]: {s['name']} {s['status']}, "
                  f"objective {s.get('objective_name', '')} = {fmt(s['objective'])}, "
                  f"bound {fmt(s['bound'])}, gap {fmt(s['gap'])}, "
                  f"{fmt(s['wall_s'])} s -> {out}")
    if s.get("notes"):
        console.print(f"  {s['notes']}")
    room = headroom(data)
    if room:
        console.print(f"  {room}")
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
    for key, label in METRIC_LABELS:
        table.add_row(label, *[fmt(m.get(key)) for m in plans.values()])
    console.print(table)
    for name, error in errors.items():
        console.print(f"[yellow]{name}[/]: {error}")


class SolveClock:
    """A transient bar on a terminal's stderr while a solve runs: its phase (the baselines,
    then the search and the polish) and the wall time against the limit, which covers
    both; after the limit, the checks and the re-timing that follow. Off where stderr is
    no terminal (logs, pipes), so nothing there changes."""

    def __init__(self, limit_s: float, console: Any = None, enabled: bool = True) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        con = console or err
        self.limit_s = limit_s
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            TimeElapsedColumn(), TextColumn(f"of {limit_s:g} s"),
                            console=con, transient=True,
                            disable=not (enabled and con.is_terminal))
        self.task = self.bar.add_task("baselines", total=limit_s)
        self._done = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)

    def phase(self, what: str) -> None:
        self.bar.update(self.task, description=what)

    def _tick(self) -> None:
        t0 = time.perf_counter()
        while not self._done.wait(0.25):
            elapsed = time.perf_counter() - t0
            if elapsed > self.limit_s:
                self.phase("checking and re-timing the plan")
            self.bar.update(self.task, completed=min(elapsed, self.limit_s))

    def __enter__(self) -> SolveClock:
        self.bar.start()
        self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._ticker.join()
        self.bar.stop()


@click.command()
@click.argument("instance", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Plan file to write [default: solutions/<instance name>.json].")
@click.option("--solver", type=click.Choice(["cp-sat", "fcfs-lru", "grouped", "static"]),
              default="cp-sat", show_default=True, help="CP-SAT or one of the baselines.")
@click.option("--objective", type=click.Choice(OBJECTIVES),
              help="Override the instance's objective.")
@click.option("--time-limit", type=FiniteFloat(min=0.1, max=MAX_TIME_S), default=60.0,
              show_default=True,
              help="Wall-clock seconds for the solve: the baselines, CP-SAT's search and "
                   "the polish.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="CP-SAT search workers.")
@click.option("--seed", type=int, default=0, show_default=True, help="CP-SAT random seed.")
@click.option("--log", is_flag=True, help="Print CP-SAT's search log.")
@click.option("--cpu-engines/--no-cpu-engines", default=True, show_default=True,
              help="Let CP-SAT place engines on host CPUs beside the GPUs.")
@click.option("--preemption/--no-preemption", default=True, show_default=True,
              help="Let CP-SAT split long requests (kv_save/kv_restore or recompute).")
@click.option("--polish/--no-polish", default=True, show_default=True,
              help="Keep 30% of the time limit for local moves in CP-SAT's plan, or in the "
                   "best start plan when CP-SAT's is worse: single runs into other periods "
                   "or new ones (on any engine of the split pool), and, when none helps, "
                   "several at once (ruin and recreate); a change is kept only where the "
                   "objective improves.")
@click.option("--slots", default="1", show_default=True, metavar="N[,N...]",
              help="Parallel slots (n_parallel) CP-SAT may give each engine, e.g. 1,2,4; "
                   "baselines serve with the largest (OLLAMA_NUM_PARALLEL, concurrencyLimit).")
@click.option("--cost-model", type=click.Choice(COST_MODELS), default="auto", show_default=True,
              help="auto: the instance's profiles where they cover a pair, else analytic.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan's summary as JSON.")
def solve(instance: Path, out: Path | None, solver: str, objective: str | None,
          time_limit: float, workers: int, seed: int, log: bool, preemption: bool,
          slots: str, cost_model: str, as_json: bool, cpu_engines: bool = True,
          polish: bool = True) -> None:
    """Plan placement, layer splits and a timed schedule for INSTANCE.

    Writes a plan (SPEC section 2) that the plan checker has passed, with the
    metrics of the baselines (fcfs-lru: what Ollama does; grouped: what
    llama-swap does; static: no swapping) beside it.

    \b
    Examples:
      planner solve instances/mixed.json
      planner solve instances/mixed.json --solver fcfs-lru -o /tmp/lru.json
      planner solve instances/mixed.json --objective makespan --time-limit 30
      planner solve instances/cpu-demo.json --slots 1,2,4
    """
    from planner import interrupt
    from planner.plan_files import write_plan
    from planner.service import SolveOptions, mark_interrupted, prepare
    from planner.service import solve as do_solve

    inst, cost = prepare(instance, cost_model)
    try:
        slot_values = tuple(sorted({int(x) for x in slots.split(",") if x.strip()}))
    except ValueError:
        slot_values = ()
    if not slot_values or min(slot_values) < 1 or max(slot_values) > 64:
        raise click.BadParameter(f"{slots!r}: integers from 1 to 64, comma-separated",
                                 param_hint="--slots")
    if cost_model != "analytic":
        from planner.machine import profile_warnings

        for w in profile_warnings(inst):
            click.echo(f"warning: {w}", err=True)
    opts = SolveOptions(solver, objective, time_limit, workers, seed, log, preemption,
                        cpu_engines=cpu_engines, slots=slot_values, polish=polish)
    target = out or Path("solutions") / f"{instance.stem}.json"

    # (not beside CP-SAT's own log, which prints to the same terminal)
    clock = SolveClock(time_limit, enabled=not log)

    def started(what: str) -> None:
        err.print(f"{what}: searching for up to {time_limit:g} s (Ctrl-C stops the search and "
                  "keeps the best plan found so far)", soft_wrap=True)
        clock.phase(f"{what} search and polish")

    def stopping(signame: str) -> None:
        err.print(f"{signame}: stopping; the best plan found so far will be checked and "
                  f"written to {target} (a second signal quits at once, writing nothing)",
                  soft_wrap=True)

    interrupt.reset()
    with clock:
        plan = interrupt.run_stoppable(lambda: do_solve(inst, cost, opts, progress=started),
                                       on_stop=stopping)
    reason = interrupt.stop_reason()
    if reason is not None:
        plan = mark_interrupted(plan, reason)
    with interrupt.signals_raise():
        data = write_plan(plan, inst, target)
    if as_json:
        click.echo(json.dumps({"plan": str(target), "solver": data["solver"],
                               "metrics": data["metrics"], "baselines": data["baselines"]},
                              indent=1))
    else:
        print_summary(data, target)
    if reason is not None:
        stopped = Interrupted(f"interrupted ({reason}): the best plan found so far "
                              f"({data['solver']['status']}) was checked and written to {target}")
        stopped.exit_code = interrupt.exit_code(reason)
        raise stopped
