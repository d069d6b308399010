"""The job manager: a bounded pool of worker processes fed from a FIFO queue.

Each worker process has its own task queue and cancel event, so a cancel reaches
exactly the process that runs the job. One thread dispatches queued jobs to idle
workers and watches them (a worker that died fails its job and is replaced; a
cancelled job whose worker does not stop within ``cancel_grace_s`` is ended by
terminating the process, keeping the best plan stored so far); another thread
reads the workers' results into the store. Solves never run in a request thread.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from planner.server.store import Store
from planner.server.worker import worker_main

log = logging.getLogger("planner.server")


@dataclass
class _Slot:
    """One worker process and what it is doing."""

    index: int
    process: Any
    tasks: Any
    stop: Any
    job: str | None = None
    cancel_at: float | None = None


@dataclass
class _Waiters:
    """Per-job change counters: event streams wait on them instead of polling the file."""

    versions: dict[str, int] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def bump(self, job_id: str) -> None:
        with self.cond:
            self.versions[job_id] = self.versions.get(job_id, 0) + 1
            self.cond.notify_all()

    def version(self, job_id: str) -> int:
        with self.cond:
            return self.versions.get(job_id, 0)


class JobManager:
    def __init__(self, store: Store, workers: int = 1, cancel_grace_s: float = 10.0) -> None:
        self.store = store
        self.cancel_grace_s = cancel_grace_s
        self._ctx = mp.get_context("spawn")  # no fork of a threaded server
        self._results: Any = self._ctx.Queue()
        self._slots = [self._spawn(i) for i in range(workers)]
        self._queue: deque[str] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self.waiters = _Waiters()
        self._on_change: list[Callable[[str], None]] = [self.waiters.bump]
        self._threads = [threading.Thread(target=self._dispatch, name="dispatch", daemon=True),
                         threading.Thread(target=self._read, name="results", daemon=True)]
        for job_id in store.recover():
            self._queue.append(job_id)
        for t in self._threads:
            t.start()

    def _spawn(self, index: int) -> _Slot:
        tasks = self._ctx.Queue()
        stop = self._ctx.Event()
        p = self._ctx.Process(target=worker_main, args=(tasks, self._results, stop),
                              name=f"planner-worker-{index}", daemon=True)
        p.start()
        return _Slot(index, p, tasks, stop)

    def _changed(self, job_id: str) -> None:
        for fn in self._on_change:
            fn(job_id)

    # --- API ---------------------------------------------------------------------

    def submit(self, job_id: str) -> None:
        with self._lock:
            self._queue.append(job_id)
        self._wake.set()

    def cancel(self, job_id: str) -> str:
        """Cancel a job; returns its status now (a running job stops shortly)."""
        with self._lock:
            if job_id in self._queue:
                self._queue.remove(job_id)
                self.store.finish(job_id, "cancelled", "cancelled before it started")
                self._changed(job_id)
                return "cancelled"
            for slot in self._slots:
                if slot.job == job_id:
                    if slot.cancel_at is None:
                        slot.cancel_at = time.monotonic()
                        slot.stop.set()
                    return "running"
        job = self.store.job(job_id)
        return job["status"] if job else "unknown"

    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    def busy(self) -> int:
        with self._lock:
            return sum(1 for s in self._slots if s.job is not None)

    def close(self) -> None:
        """Stop the workers; jobs they were running become interrupted (best plan kept)."""
        with self._lock:
            self._closing = True
            running = [s.job for s in self._slots if s.job is not None]
            for s in self._slots:
                s.stop.set()
                if s.process.is_alive():
                    s.process.terminate()
        self._wake.set()
        for s in self._slots:
            s.process.join(timeout=5)
        for job_id in running:
            self.store.finish(job_id, "interrupted", "the server stopped while this job ran; "
                              "its best plan so far is kept")
            self._changed(job_id)
        self._results.put(None)
        for t in self._threads:
            t.join(timeout=5)
        for s in self._slots:  # release their semaphores now, not at interpreter exit
            s.tasks.close()
            s.tasks.join_thread()
        self._results.close()
        self._slots.clear()
        gc.collect()

    # --- threads -----------------------------------------------------------------

    def _dispatch(self) -> None:
        while True:
            self._wake.wait(0.2)
            self._wake.clear()
            with self._lock:
                if self._closing:
                    return
                self._watch()
                for slot in self._slots:
                    if slot.job is None and self._queue:
                        job_id = self._queue.popleft()
                        body = self.store.instance(job_id)
                        job = self.store.job(job_id)
                        if body is None or job is None:
                            continue
                        slot.stop.clear()
                        slot.job, slot.cancel_at = job_id, None
                        self.store.start(job_id)
                        slot.tasks.put((job_id, body, job["options"]))
                        self._changed(job_id)

    def _watch(self) -> None:
        """Replace dead workers; end cancels that did not stop in time. Holds the lock."""
        for i, slot in enumerate(self._slots):
            late = slot.cancel_at is not None and \
                time.monotonic() - slot.cancel_at > self.cancel_grace_s
            if slot.process.is_alive() and not late:
                continue
            if slot.job is not None:
                if late:
                    self.store.finish(slot.job, "cancelled", "cancelled; the solve did not stop "
                                      "in time and was ended, its best plan so far is kept")
                else:
                    code = slot.process.exitcode
                    self.store.finish(slot.job, "failed", f"the worker process died (exit code "
                                      f"{code}); the best plan so far is kept")
                    log.warning("worker %d died (exit code %s) running job %s",
                                i, code, slot.job)
                self._changed(slot.job)
            if slot.process.is_alive():
                slot.process.terminate()
                slot.process.join(timeout=5)
            self._slots[i] = self._spawn(i)

    def _read(self) -> None:
        while True:
            try:
                msg = self._results.get(timeout=0.5)
            except queue.Empty:
                if self._closing:
                    return
                continue
            except (EOFError, OSError):
                return
            if msg is None:
                return
            try:
                self._handle(msg)
            except Exception:  # keep reading; one bad message must not stop the server
                log.exception("could not record a worker message")

    def _slot_of(self, job_id: str) -> _Slot | None:
        return next((s for s in self._slots if s.job == job_id), None)

    def _handle(self, msg: tuple[Any, ...]) -> None:
        kind, job_id = msg[0], msg[1]
        with self._lock:
            slot = self._slot_of(job_id)
            if slot is None and kind != "idle":
                return  # a late message from a worker that was replaced
            if kind == "plan":
                self.store.best(job_id, msg[2])
            elif kind == "done":
                cancelled = slot is not None and slot.cancel_at is not None
                self.store.best(job_id, msg[2], final=True)
                self.store.finish(job_id, "cancelled" if cancelled else "done",
                                  "cancelled; the best plan so far is kept" if cancelled
                                  else None)
            elif kind == "failed":
                self.store.finish(job_id, "failed", msg[2])
            elif kind == "idle" and slot is not None:
                slot.job, slot.cancel_at = None, None
                self._wake.set()
        self._changed(job_id)
