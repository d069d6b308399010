"""Replay a plan on this machine's real llama.cpp engines and measure every action.

Actions are dispatched as soon as what they depend on is done, not at their
predicted times (``realtime=True`` also waits for those):

- the previous action in the same lane of the same device (plan order),
- the previous action on the same engine (so one engine is never driven by two
  actions at once, and residency follows the plan),
- the previous action of the same request (runs, KV save and restore in order),
- for a run, the request's arrival on the replay clock; for a load made on demand
  (``on_demand``, the baselines' loads: Ollama and llama-swap load a model when a
  request for it comes in), its request's arrival.

Each engine lives in its own worker process (``profiler.engine.Engine``), all
started before the replay clock begins, so a crash ends one engine, not the
replay: the failed action is reported with its error, everything that depends
on it is marked ``not_run``, and the rest goes on. The report (SPEC section 3)
is rewritten atomically after every action, so an interrupted replay keeps
what it measured; Ctrl-C stops dispatching, lets running actions finish or
fail, and writes the report so far.

Saved states are files in ``/dev/shm`` (``llama_state_seq_save_file``, as
llama-server's ``--slot-save-path``), held until their restore ends. Before a
``load`` or a ``kv_save`` starts, :mod:`planner.memguard` refuses it (the
action fails with a one-line reason, its dependents are not run) when what it
will hold plus what the host holds now would pass the host's memory budget.
"""

from __future__ import annotations

from planner.errors import ExecuteError
from planner.executor.deps import dependencies, lane_dependencies, plan_order
from planner.executor.memory import MemorySampler
from planner.executor.replay import Replay
from planner.executor.report import ActionRecord, relative_errors

__all__ = [
    "ActionRecord",
    "ExecuteError",
    "MemorySampler",
    "Replay",
    "dependencies",
    "lane_dependencies",
    "plan_order",
    "relative_errors",
]
