"""Outputs: results.csv, the Pareto plot, the scenario files and the terminal table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.io import write_atomic, write_json_atomic
from planner.study.analysis import cheapest_meeting, pareto_front
from planner.study.scenarios import _fmt_scale
from planner.study.spec import Scenario, StudyResult, StudySpec


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    import pandas as pd

    return write_atomic(path, lambda p: pd.DataFrame(rows).to_csv(p, index=False))


def plot_pareto(rows: list[dict[str, Any]], spec: StudySpec, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = [("mean_response_s", "mean response (s)", False),
              ("slo_attainment", "SLO attainment", True)]
    for ax, (metric, label, maximize) in zip(axes, panels, strict=True):
        for i, scale in enumerate(spec.scales):
            c = colors[i % len(colors)]
            rs = [r for r in rows if r["scale"] == scale and r.get(metric) is not None
                  and r["status"] == "solved"]
            if not rs:
                continue
            tag = f"load x{_fmt_scale(scale)}"
            ax.scatter([r["cost_per_hour"] for r in rs], [r[metric] for r in rs], s=18,
                       color=c, alpha=0.35, label=f"{tag}: all clusters")
            front = pareto_front(rs, metric, maximize)
            ax.step([r["cost_per_hour"] for r in front], [r[metric] for r in front],
                    where="post", color=c, lw=1.5)
            ax.scatter([r["cost_per_hour"] for r in front], [r[metric] for r in front], s=46,
                       color=c, edgecolor="black", zorder=3, label=f"{tag}: Pareto front")
            best = cheapest_meeting(rs, spec.target)
            if best is not None:
                ax.scatter([best["cost_per_hour"]], [best[metric]], marker="*", s=260,
                           color="gold", edgecolor="black", zorder=4,
                           label=f"{tag}: cheapest meeting target")
                ax.annotate(best["gpus"], (best["cost_per_hour"], best[metric]),
                            textcoords="offset points", xytext=(6, 6), fontsize=8)
        if spec.target.key == metric:
            ax.axhline(spec.target.value, color="gray", ls="--", lw=1,
                       label=f"target {spec.target}")
        vals = [r[metric] for r in rows if r.get(metric) and r["status"] == "solved"]
        if not maximize and vals and max(vals) > 20 * min(vals):
            ax.set_yscale("log")
        ax.set_xlabel(f"cluster cost ({spec.prices.currency}/h)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{spec.instance.name}: cost against service ({spec.solver}, "
                 f"{spec.time_limit_s:g} s per solve)")
    fig.tight_layout()

    def save(p: Path) -> None:
        fig.savefig(p, dpi=110, format="png")

    try:
        return write_atomic(path, save)
    finally:
        plt.close(fig)


def write_outputs(spec: StudySpec, scenarios: list[Scenario],
                  outcomes: dict[str, dict[str, Any]], rows: list[dict[str, Any]],
                  summary: dict[str, Any]) -> list[Path]:
    out = spec.out
    written: list[Path] = []
    for sc in scenarios:
        write_json_atomic(out / "scenarios" / f"{sc.id}.json", sc.data)
        plan = outcomes[sc.id].get("plan")
        if plan is not None:
            write_json_atomic(out / "scenarios" / f"{sc.id}.plan.json", plan)
    written.append(out / "scenarios")
    written.append(write_csv(rows, out / "results.csv"))
    written.append(plot_pareto(rows, spec, out / "pareto.png"))
    written.append(write_json_atomic(out / "summary.json", summary))
    return written


def study_table(result: StudyResult) -> Any:
    """A rich table of the scenarios, cheapest first, the targets met in green.

    Solver statuses and every metric are in results.csv; the table keeps to 80 columns.
    """
    from rich import box
    from rich.table import Table

    spec = result.spec
    table = Table(title=f"{spec.instance.name}: {len(result.rows)} scenarios, "
                        f"target {spec.target}", box=box.SIMPLE_HEAD, pad_edge=False)
    cols = ["cluster", "hosts", f"{spec.prices.currency}/h", "mean (s)", "p95 (s)", "SLO",
            "met"]
    if len(spec.scales) > 1:
        cols.insert(0, "load")
    for c in cols:
        table.add_column(c, justify="left" if c == "cluster" else "right", no_wrap=True)

    def f(v: Any, nd: int = 1) -> str:
        return "-" if v is None else f"{v:.{nd}f}"

    for r in result.rows:
        if r["status"] != "solved":
            met = f"[yellow]{r['status']}[/]"
        else:
            met = "[green]yes[/]" if r["target_met"] else "[red]no[/]"
        cells = [r["gpus"].replace("x ", "x").replace(" + ", "+"), str(r["hosts"]),
                 f"{r['cost_per_hour']:.2f}",
                 f(r["mean_response_s"]), f(r["p95_response_s"]), f(r["slo_attainment"], 3),
                 met]
        if len(spec.scales) > 1:
            cells.insert(0, f"x{_fmt_scale(r['scale'])}")
        table.add_row(*cells)
    return table
