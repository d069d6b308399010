"""HiGHS (``highspy``) on a MIP in a child process, given up at a deadline.

Why a child: HiGHS checks its time limit between its own steps (SciPy 1.17's copy ran up
to 6 s past it, in a cut round, on the swap MIP), and a HiGHS solve still running in a
thread of ours when the process exits ends it with ``terminate called without an active
exception`` (its workers are C++ threads). A child process is killed at the deadline,
whatever HiGHS is doing, and holds no lock of the parent's (the polish, in Python, keeps
its core). ``highspy`` (HiGHS 1.16) rather than SciPy's copy: it kept to its time limit
on the MIPs here, and its bound was as good or better.

The child is this file run by the same interpreter (``python -P``: its folder is not put
on ``sys.path``, so the package's module names cannot shadow others), not a
``multiprocessing`` one (which would import the parent's main script again); it imports
only numpy and highspy. The model goes to it as an ``.npz`` on its standard input, the
bound comes back as one line."""

from __future__ import annotations

import atexit
import contextlib
import io
import math
import os
import subprocess
import sys
import time

import numpy as np
from scipy.sparse import csc_matrix

#: the child is killed this long after the deadline it was given if it has not answered
GRACE_S = 0.3
#: children not yet answered or killed (this module's and ``bound_child``'s)
RUNNING: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_children() -> None:
    """A child still running when the process exits (its thread is a daemon) is killed."""
    for proc in list(RUNNING):
        proc.kill()


def mip_dual_bound(c: np.ndarray, a: csc_matrix, lo: np.ndarray, hi: np.ndarray,
                   lb: np.ndarray, ub: np.ndarray, integer: np.ndarray,
                   time_limit_s: float) -> float | None:
    """HiGHS's dual bound on ``min c x`` over ``lo <= a x <= hi``, ``lb <= x <= ub``, ``x``
    integer where ``integer`` is true, after ``time_limit_s`` seconds at most (from now,
    the child's start included); None when it has none by then (or the child failed)."""
    deadline = time.time() + time_limit_s
    buf = io.BytesIO()
    np.savez(buf, c=c, indptr=a.indptr, indices=a.indices, data=a.data,
             shape=np.array(a.shape), lo=lo, hi=hi, lb=lb, ub=ub,
             integer=np.flatnonzero(integer), deadline=np.array(deadline))
    try:
        proc = subprocess.Popen([sys.executable, "-P", __file__], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError:
        return None
    RUNNING.add(proc)
    try:
        out, _ = proc.communicate(buf.getvalue(),
                                  timeout=max(0.0, deadline + GRACE_S - time.time()))
    except subprocess.TimeoutExpired:  # past its deadline: the last bound it sent
        proc.kill()
        out, _ = proc.communicate()
    except OSError:
        proc.kill()
        proc.wait()
        return None
    finally:
        RUNNING.discard(proc)
    value = None
    for line in out.decode().splitlines():
        with contextlib.suppress(ValueError):
            v = float(line)
            value = v if math.isfinite(v) else value
    return value


def _child() -> None:
    """Read the model, run HiGHS until its deadline, write its dual bound each time it
    rises (HiGHS's log lines: the root LP's, each cut round's, ...) and at the end, one
    line each ("nan" where it has none): the parent keeps the last line it got."""
    result = os.fdopen(os.dup(1), "w")
    with open(os.devnull, "wb") as null:  # HiGHS writes its banner and log to descriptor 1
        os.dup2(null.fileno(), 1)
    import highspy

    m = np.load(io.BytesIO(sys.stdin.buffer.read()))
    c = m["c"]
    h = highspy.Highs()
    h.setOptionValue("threads", 1)  # the parent's search or polish has the other core
    inf = highspy.kHighsInf
    sent = [-math.inf]

    def on_log(event: object) -> None:
        bound = event.data_out.mip_dual_bound  # type: ignore[attr-defined]
        if math.isfinite(bound) and abs(bound) < inf and bound > sent[0]:
            sent[0] = bound
            print(repr(float(bound)), file=result, flush=True)

    h.cbMipLogging.subscribe(on_log)  # needs the log on (it goes to os.devnull)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = len(c), int(m["shape"][0])
    lp.col_cost_ = c
    lp.col_lower_, lp.col_upper_ = m["lb"], m["ub"]
    lp.row_lower_ = np.where(np.isinf(m["lo"]), -inf, m["lo"])
    lp.row_upper_ = np.where(np.isinf(m["hi"]), inf, m["hi"])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = m["indptr"]
    lp.a_matrix_.index_ = m["indices"]
    lp.a_matrix_.value_ = m["data"]
    kinds = [highspy.HighsVarType.kContinuous] * len(c)
    for i in m["integer"]:
        kinds[int(i)] = highspy.HighsVarType.kInteger
    lp.integrality_ = kinds
    h.passModel(lp)
    value = math.nan
    left = float(m["deadline"]) - time.time()
    if left > 0.1:
        h.setOptionValue("time_limit", left)
        h.run()
        bound = h.getInfo().mip_dual_bound
        if h.getModelStatus() in (highspy.HighsModelStatus.kOptimal,
                                  highspy.HighsModelStatus.kTimeLimit) \
                and math.isfinite(bound) and abs(bound) < inf:
            value = float(bound)
    print(repr(value), file=result, flush=True)


if __name__ == "__main__":
    _child()
