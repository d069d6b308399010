"""The instance's bound (``bound.lower_bound``'s) computed again in a child process with
more time, while the polish runs on a plan with several GPUs.

Before the search the bound's LP gets a sixth of the time limit at most (10 s); its finer
grids, each a valid bound, need more (``mixed.json``: 9.995 s given 10 s, 10.19 s given
30 s, 10.36 s given 60 s). During the polish one of the cores CP-SAT's two workers had is
idle on a plan with several GPUs (on one GPU the swap MIP has it), so the bound is
computed there again with the polish's time, and the larger of the two is reported.

A child rather than a thread: SciPy's HiGHS would keep Python's lock from the polish, and
a child is killed at its deadline whatever HiGHS is doing (and at exit: ``highs_child``'s
registry and grace serve both kinds of child). The child is this module run by
the same interpreter (``python -P``, as ``highs_child``); the instance and cost model go to
it pickled on its standard input (written by a thread: the child reads it once started),
the bound comes back as one JSON line on its standard output.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import subprocess
import sys
import threading
import time

from planner.costmodel.base import CostModel
from planner.domain import Instance
from planner.solver.highs_child import GRACE_S, RUNNING  # its children's grace and registry

#: the child's bound is given until this long before its deadline (its own start, the
#: instance's grids and its answer take the rest)
MARGIN_S = 1.0


class RefinedBound:
    """``bound._lower_bound`` for ``instance`` in a child process until ``deadline``
    (``time.perf_counter()``), its LP given all that time."""

    def __init__(self, instance: Instance, cost: CostModel, slots: int, objective: str,
                 deadline: float) -> None:
        self._deadline = deadline
        self._proc: subprocess.Popen[bytes] | None = None
        self._feeder = threading.Thread()
        lp_time_s = deadline - time.perf_counter() - MARGIN_S
        if lp_time_s <= 1.0:
            return
        try:
            payload = pickle.dumps((instance, cost, slots, objective, lp_time_s))
            self._proc = subprocess.Popen(
                [sys.executable, "-P", __file__], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except (OSError, pickle.PicklingError, TypeError, AttributeError):
            self._proc = None
            return
        RUNNING.add(self._proc)
        proc = self._proc

        def feed() -> None:  # the child reads it once started (the pipe holds 64 KiB)
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.write(payload)
                proc.stdin.close()

        self._feeder = threading.Thread(target=feed, name="bound-child-input", daemon=True)
        self._feeder.start()

    def value(self, wait_until: float) -> tuple[float, str] | None:
        """(bound, its name) from the child, waited for until ``wait_until`` at most (and
        no later than its deadline and grace); None when it has none by then."""
        proc = self._proc
        if proc is None:
            return None
        until = min(wait_until, self._deadline + GRACE_S)
        self._feeder.join(max(0.0, until - time.perf_counter()))
        if self._feeder.is_alive():  # the child did not even read its input
            proc.kill()
        proc.stdin = None  # written and closed by the feeder (communicate must not)
        try:
            out, _ = proc.communicate(timeout=max(0.0, until - time.perf_counter()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        except (OSError, ValueError):
            proc.kill()
            proc.wait()
            return None
        finally:
            RUNNING.discard(proc)
        for line in reversed(out.decode(errors="replace").splitlines()):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                got = json.loads(line)
                v = float(got["bound"])
                if math.isfinite(v):
                    return v, str(got["name"])
        return None


def _child() -> None:
    data = sys.stdin.buffer.read()
    from planner.solver.bound import _lower_bound

    instance, cost, slots, objective, lp_time_s = pickle.loads(data)
    value, name = _lower_bound(instance, cost, slots, objective, lp_time_s)
    print(json.dumps({"bound": value, "name": name}), flush=True)


if __name__ == "__main__":
    _child()
