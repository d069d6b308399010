"""CP-SAT planner (in progress)."""
