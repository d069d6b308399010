"""Polish: local moves on a finished plan, each kept only when the plan gets better.

CP-SAT's plan at the time limit is often not locally optimal: on a one-GPU workload
with heavy-tailed lengths (``1gpu-5models-pareto``, seed 2) its GPU idled for 10 s with
the 14B model resident and four of its requests waiting, which then waited 70 s more
for the model's next load. A move takes one request's run out of its place and puts
it right after another action of an engine of the same model (a load or a run, so
the engine is resident there), on the same engine or another one (its duration then
comes from the cost model for that engine), or into a period of its own: an engine of
its model loaded for it where its device's transfer lane frees memory (after an
unload) or ends, and unloaded after it. That engine may be one the plan does not
have yet (``extra``: e.g. the fastest split of the model on a GPU the plan never gave
it, so that a request waiting for a busy fast GPU can run on an idle one). The plan
is then *compacted*: every action starts as soon as the actions it waits for end (the
previous one in its lane, on its engine and of its request, as the executor
dispatches them; runs not before their arrival), keeping each lane's, engine's and
request's order. A move is kept when the objective improves, the executor would wait
for the same actions (plan order = the order moved to) and the plan checker accepts
it (the checker shares no code with this module; memory, residency and lanes are its
to judge).

When no single move helps, several runs move at once (*ruin and recreate*): a costly
request and runs of one device that overlap its stay are taken out and put back one
by one, each in its best place; the result is kept when the whole plan is better.

Moves only touch requests served by one run on an engine of one device, and ruins also
requests paused on one engine (preempted requests otherwise, and engines split over
GPUs, keep their places); a plan with slot engines is left as it is (their runs'
durations depend on what runs beside them).
Best-improvement over the requests that cost the objective most first, then ruins:
the listed ones (the costliest requests with the runs nearest their arrival; then the
runs of each period of an engine, and of each two periods in a row on a device, so
that a period can move whole or two can trade places), then
random ones (a request drawn by its weighted response, 2 to 24 runs of a random device
near a random instant of its stay, put back by arrival or in random order), until
``RANDOM_STALL`` random ruins per movable request in a row failed or the deadline
passes. Once ``PAUSE_WAIT`` random ruins per movable request in a row failed, *pauses*
are tried on each new plan: a request runs until a heavier one arrives, which runs on the
same device (on its engine, with the state saved and restored or recomputed; on an
engine resident beside it, nothing copied; or, on a GPU, with the paused engine unloaded
and the other's loaded for it and the requests of its model that arrive meanwhile, then
back), then the paused one goes on. A ruin may take a pause back (it puts the request
back whole). With preemption off (``pauses=False``) no pause is added.

In the last ``HANDOFF_SHARE`` of the time (or once nothing else is left to try),
*hand-overs* to the host CPU (``handoffs.py``, with pauses allowed only): a request's
prompt prefilled on a GPU engine of its model, its state restored on a CPU engine of its
model on the same host, which decodes the rest (a *hand-over*) or part of it while the
request waits for its GPU engine, the state then handed back there (a *relay*).

A paused request whose first part ends before its device's next run could start (a
move started it sooner than its pause was timed for) makes more tokens before the pause
(``fills``), when that pays.

Two clean-ups are kept at an equal objective too, since they only spare the machine
work: an engine unloaded and loaded again with nothing of it between stays loaded, and a
request's state saved and restored on one engine with nothing else on it between is not
saved (its two runs become one).
"""

from planner.solver.polish.loop import polish
from planner.solver.polish.timing import compact

__all__ = ["compact", "polish"]
