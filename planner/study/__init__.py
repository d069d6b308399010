"""Capacity studies: solve one workload on every cluster of a sweep and price each.

``planner study`` builds, from an instance and a range of GPU counts per GPU
type, one scenario per cluster (and per load scale), solves every scenario
independently (a process pool here, or Ray tasks on a cluster), and reports
the cheapest cluster that meets a target and the Pareto front of cost against
mean response and SLO attainment.

Each finished scenario is cached under a hash of what determines its result
(the instance after the what-if knobs, the cluster, the cost model and the
solver settings, the planner's version), so an interrupted or extended study
only solves what is new. Prices and the target are applied afterwards: a
change of either re-uses every solve.
"""

from __future__ import annotations

from planner.study.analysis import (
    STUDY_FORMAT,
    cheapest_meeting,
    pareto_front,
    rows_objective,
    summarize,
)
from planner.study.args import (
    TARGET_METRICS,
    Target,
    parse_boosts,
    parse_gpu_ranges,
    parse_scales,
    parse_target,
)
from planner.study.pricing import Prices, load_prices
from planner.study.report import plot_pareto, study_table, write_csv, write_outputs
from planner.study.scenarios import (
    apply_load,
    build_cluster,
    build_scenarios,
    cache_key,
    counts_label,
    objective_for,
    planner_version,
    scenario_id,
    solver_settings,
)
from planner.study.solve import instance_bytes, run_scenario
from planner.study.spec import Progress, Scenario, StudyResult, StudySpec
from planner.study.sweep import METRIC_COLUMNS, make_row, run_study

__all__ = [
    "METRIC_COLUMNS",
    "STUDY_FORMAT",
    "TARGET_METRICS",
    "Prices",
    "Progress",
    "Scenario",
    "StudyResult",
    "StudySpec",
    "Target",
    "apply_load",
    "build_cluster",
    "build_scenarios",
    "cache_key",
    "cheapest_meeting",
    "counts_label",
    "instance_bytes",
    "load_prices",
    "make_row",
    "objective_for",
    "pareto_front",
    "parse_boosts",
    "parse_gpu_ranges",
    "parse_scales",
    "parse_target",
    "planner_version",
    "plot_pareto",
    "rows_objective",
    "run_scenario",
    "run_study",
    "scenario_id",
    "solver_settings",
    "study_table",
    "summarize",
    "write_csv",
    "write_outputs",
]
