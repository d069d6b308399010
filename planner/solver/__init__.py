"""CP-SAT planner: engines, layer splits, loads, unloads and the request schedule."""

from planner.solver.solve import solve_cpsat

__all__ = ["solve_cpsat"]
