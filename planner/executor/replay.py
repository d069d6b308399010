"""The replay: dispatch a plan's actions on engine workers as their dependencies allow."""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from planner.domain import REPORT_FORMAT, Instance, Schedule, fresh_worker_per_load
from planner.errors import ExecuteError
from planner.executor.deps import dependencies, lane_dependencies, plan_order, spans_of
from planner.executor.memory import MemorySampler
from planner.executor.report import ActionRecord, engine_options, measured_report
from planner.io import write_json_atomic
from planner.memguard import Holding, MemoryGuard, MemoryRefused
from profiler.engine.types import short_gil_switch

WRITE_EVERY_S = 1.0  # the report on disk lags the replay by at most this, while it runs


def _read_through(path: Path) -> None:
    """Read a file once so that it sits in the page cache (a missing one fails at its load)."""
    if not path.is_file():
        return
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def _engine_s(info: Any) -> dict[str, float]:
    """``engine_s``: the seconds the engine worker itself took (what the measured time
    adds to it is the executor's: the call to the worker and back)."""
    sec = getattr(info, "seconds", None)
    return {"engine_s": round(sec, 6)} if isinstance(sec, float) else {}


class Replay:
    """One replay of a plan; :meth:`run` returns the report (SPEC section 3)."""

    def __init__(self, instance: Instance, schedule: Schedule, model_paths: dict[str, Path],
                 report_path: Path, *, threads: int | None = None, realtime: bool = False,
                 gpu_layers: dict[str, int] | None = None, plan_path: str = "",
                 warnings: list[str] | None = None,
                 engine_factory: Callable[[int | None], Any] | None = None,
                 on_action: Callable[[ActionRecord], None] | None = None) -> None:
        self.inst = instance
        self.schedule = schedule
        self.model_paths = model_paths
        self.report_path = report_path
        self.threads = threads
        self.realtime = realtime
        self.gpu_layers = gpu_layers or {}
        self.plan_path = plan_path
        self.warnings = list(warnings or [])
        self.on_action = on_action
        self._written_at = -math.inf  # perf_counter of the last report write
        if engine_factory is None:

            from profiler.batch import BatchEngine

            def engine_factory(t: int | None) -> Any:
                # engines with slots decode in one context with n_seq_max slots
                return BatchEngine(threads=t)
        self.engine_factory = engine_factory
        actions = plan_order(schedule)
        slots = {e.id: e.n_parallel for e in schedule.engines}
        spans = spans_of(schedule)  # an engine split over GPUs waits for all their lanes
        self.records = [ActionRecord(i, a, d, lane_deps=ld) for i, (a, d, ld)
                        in enumerate(zip(actions, dependencies(actions, slots, spans),
                                         lane_dependencies(actions, slots, spans),
                                         strict=True))]
        #: why the last report write failed (disk full, folder gone...); None once one works
        self.write_error: str | None = None
        self.drivers: dict[str, Any] = {}  # slot engine -> profiler.batch.SlotDriver
        self.engines: dict[str, Any] = {}
        self.states: dict[str, Any] = {}  # request -> SavedStateFile held in host RAM
        self.state_host: dict[str, str] = {}  # request -> host holding its saved state
        self.state_dir: Path | None = None
        self.machine: list[dict[str, Any]] = []  # do the profiles match this machine?
        self.generated: dict[str, list[int]] = {}
        self.vocab: dict[str, int] = {}
        self.loaded: set[str] = set()
        #: engine -> the fresh worker being started after its unload (GPU engines)
        self._respawn: dict[str, Future[Any]] = {}
        self._spawner = ThreadPoolExecutor(max_workers=2)
        self._abort = threading.Event()
        self.t0 = 0.0
        self.status = "not started"
        self._lock = threading.Lock()  # the saved states (the sampler and the guard read them)
        self._write_lock = threading.Lock()  # one report write at a time
        self.sampler: MemorySampler | None = None
        self.guard = MemoryGuard({h.id: h.memory_bytes for h in instance.cluster.hosts},
                                 self._holdings, self._state_bytes)

    # --- engines ---------------------------------------------------------------
    def _prompt(self, request: str, n: int, vocab: int) -> list[int]:
        """Deterministic token ids: timing does not depend on which tokens they are."""
        seed = sum(map(ord, request))
        return [10 + (seed + 7919 * i) % max(1, vocab - 20) for i in range(n)]

    def _admit(self, rec: ActionRecord) -> None:
        """The memory guard's decision, before the action's clock starts: it is the
        executor's check, not part of the action (raises MemoryRefused)."""
        a = rec.action
        e = self.schedule.engine(a.engine)
        host = self.inst.cluster.device(e.device).host
        if a.kind == "load":
            self.guard.admit(host, e.host_bytes, f"load of {e.id} ({e.model})")
        elif a.kind == "kv_save" and a.request is not None:
            self.guard.admit(host, a.bytes or 0, f"kv_save of {a.request} on {e.id}")

    def _do(self, rec: ActionRecord) -> dict[str, Any]:
        a = rec.action
        eng = self.engines[a.engine]
        e = self.schedule.engine(a.engine)
        host = self.inst.cluster.device(e.device).host
        if a.kind == "load" and e.n_parallel > 1:
            from profiler.batch import SlotDriver

            self.loaded.add(e.id)
            got = eng.batch_load(self.model_paths[e.model], n_gpu_layers=self.gpu_layers.get(
                e.id, e.n_gpu_layers), n_ctx=e.n_ctx, n_parallel=e.n_parallel)
            self.vocab[e.id] = int(got["n_vocab"])
            self.drivers[e.id] = SlotDriver(eng, e.n_parallel)
            self.drivers[e.id].start()
            return {"rss_bytes": got["rss_bytes"]}
        if a.kind == "load":
            self.loaded.add(e.id)
            info = eng.load(self.model_paths[e.model], n_gpu_layers=self.gpu_layers.get(
                e.id, e.n_gpu_layers), n_ctx=e.n_ctx)
            self.vocab[e.id] = info.n_vocab
            return {"rss_bytes": info.rss_bytes, **_engine_s(info)}
        if a.kind == "unload":
            driver = self.drivers.pop(e.id, None)
            if driver is not None:
                driver.stop()
            eng.unload()
            self.loaded.discard(e.id)
            return {}
        assert a.request is not None
        req = self.inst.request(a.request)
        if a.kind == "kv_save":
            assert self.state_dir is not None
            state = eng.save_state_file(self.state_dir / f"{req.id}.{rec.index}.kv")
            with self._lock:
                self.states[req.id] = state
                self.state_host[req.id] = host
            return {"bytes_measured": state.nbytes, **_engine_s(state)}
        if a.kind == "kv_restore":
            with self._lock:
                state = self.states[req.id]
            info = eng.restore_state_file(state)
            with self._lock:  # held until the end of its restore (SPEC rule 4)
                self.states.pop(req.id, None)
                self.state_host.pop(req.id, None)
            # the file goes after the clock stops (a server keeps it; deleting is ours)
            rec.cleanup = state.path
            return {"bytes_measured": state.nbytes, **_engine_s(info)}
        # run
        tf, tt = a.tokens_from or 0, a.tokens_to or 0
        done = self.generated.setdefault(req.id, [])
        prompt = self._prompt(req.id, req.prompt_tokens, self.vocab.get(e.id, 1000))
        if e.n_parallel > 1:  # continuous batching: joins the engine's decoding sequences
            if tf != 0:
                raise ExecuteError(f"run {req.id} on {e.id}: slot engines replay whole "
                                   "requests only")
            tokens = self.drivers[e.id].generate(prompt, tt)
            done[:] = tokens
            return {"tokens_produced": len(tokens)}
        if tf == 0:
            eng.reset()
            eng.prefill(prompt)
            done.clear()
        elif a.recompute:
            eng.reset()
            eng.prefill(prompt + done[:tf])
        out = eng.decode(tt - tf)
        del done[tf:]
        done.extend(out.tokens)
        return {"tokens_produced": len(out.tokens)}

    def _execute(self, rec: ActionRecord) -> None:
        a = rec.action
        not_before = a.start_s if self.realtime else 0.0
        if a.kind == "run" and a.request is not None:
            not_before = max(not_before, self.inst.request(a.request).arrival_s)
        elif a.on_demand is not None:  # a load made when its request arrives
            not_before = max(not_before, self.inst.request(a.on_demand).arrival_s)
        delay = not_before - (time.perf_counter() - self.t0)
        if delay > 0 and self._abort.wait(delay):
            rec.status = "not_run"
            rec.error = "replay interrupted before it started"
            return
        try:
            self._admit(rec)
        except MemoryRefused as exc:  # refused before it started: nothing was taken
            rec.measured_start_s = rec.measured_end_s = time.perf_counter() - self.t0
            rec.status = "failed"
            rec.error = str(exc)
            rec.detail = {"refused": True}
            return
        except Exception as exc:  # the check itself failed (a worker gone, say): as below
            rec.measured_start_s = rec.measured_end_s = time.perf_counter() - self.t0
            rec.status = "failed"
            rec.error = f"{type(exc).__name__}: {exc}"
            return
        spawn = self._respawn.pop(a.engine, None)
        if spawn is not None:  # the engine's fresh worker (started at its last unload)
            try:
                self.engines[a.engine] = spawn.result()
            except Exception as exc:
                rec.measured_start_s = rec.measured_end_s = time.perf_counter() - self.t0
                rec.status = "failed"
                rec.error = f"fresh worker did not start: {type(exc).__name__}: {exc}"
                return
        rec.measured_start_s = time.perf_counter() - self.t0
        try:
            rec.detail = self._do(rec)
            rec.status = "done"
        except Exception as exc:  # a crashed or failing engine: report, go on
            rec.status = "failed"
            rec.error = f"{type(exc).__name__}: {exc}"
        rec.measured_end_s = time.perf_counter() - self.t0
        if rec.cleanup is not None:
            with contextlib.suppress(OSError):
                os.unlink(rec.cleanup)
        if a.kind == "unload" and rec.status == "done" and self._fresh(a.engine):
            # as a deployment's server process ends with its model: the old worker goes
            # (freeing its CUDA context) and a new one starts beside the replay; only
            # this engine's next action waits for it
            old = self.engines[a.engine]
            self._respawn[a.engine] = self._spawner.submit(self._replace_worker, old)

    def _fresh(self, engine: str) -> bool:
        e = self.schedule.engine(engine)
        return fresh_worker_per_load(self.inst, e, self.gpu_layers.get(e.id, e.n_gpu_layers))

    def _replace_worker(self, old: Any) -> Any:
        with contextlib.suppress(Exception):  # a crashed worker is already gone
            old.close()
        return self.engine_factory(self.threads)

    # --- dispatch --------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        ids = {e.id for e in self.schedule.engines}
        for eid in sorted(ids):  # start every worker before the clock starts
            self.engines[eid] = self.engine_factory(self.threads)
        for path in set(self.model_paths.values()):
            _read_through(path)  # loads are predicted warm (file in the page cache)
        from profiler.engine import state_dir

        self.state_dir = state_dir()  # saved states: files in /dev/shm, as --slot-save-path
        if self.inst.profiles:
            from planner.machine import machine_summary

            try:
                self.machine = machine_summary(self.inst)
            except Exception as exc:  # a report without it is still a report
                self.machine = [{"error": f"{type(exc).__name__}: {exc}"}]
        uses_gpu = any(self.gpu_layers.get(e.id, e.n_gpu_layers) > 0
                       for e in self.schedule.engines)
        self.sampler = MemorySampler(self._worker_pids,
                                     lambda: sum(s.nbytes for s in list(self.states.values())),
                                     gpu=uses_gpu)
        self.sampler.start()
        gil = contextlib.ExitStack()  # caller-side times as the profiler takes them
        gil.enter_context(short_gil_switch())
        self.t0 = time.perf_counter()
        self.status = "running"
        pending = {r.index for r in self.records}
        running: dict[Future[None], ActionRecord] = {}
        by_index = {r.index: r for r in self.records}
        interrupted = False
        pool = ThreadPoolExecutor(max_workers=max(1, len(ids) * 2))
        try:
            while pending or running:
                for i in sorted(pending):
                    rec = by_index[i]
                    dep_status = [by_index[d].status for d in rec.deps]
                    blocking = [d for d in sorted(rec.deps - rec.lane_deps)
                                if by_index[d].status in ("failed", "not_run")]
                    if blocking:
                        b = by_index[blocking[0]].action
                        rec.status = "not_run"
                        rec.error = (f"depends on action {blocking[0]} ({b.kind} "
                                     f"{b.request or ''} on {b.engine}), which "
                                     f"{by_index[blocking[0]].status.replace('_', ' ')}")
                        pending.discard(i)
                        self._progress(rec)
                    elif all(s in ("done", "failed", "not_run") for s in dep_status):
                        rec.status = "running"
                        pending.discard(i)
                        running[pool.submit(self._execute, rec)] = rec
                if not running:
                    if pending:  # cannot happen with plan-order dependencies
                        raise ExecuteError("replay deadlocked on its dependencies")
                    break
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for f in finished:
                    self._progress(running.pop(f))
        except KeyboardInterrupt:
            interrupted = True
            self._abort.set()  # actions still waiting for their time give up at once
            for i in pending:
                by_index[i].status = "not_run"
                by_index[i].error = "replay interrupted"
        finally:
            pool.shutdown(wait=True)  # actions already running finish (or fail)
            for eid, spawn in self._respawn.items():  # fresh workers no action used
                with contextlib.suppress(Exception):
                    self.engines[eid] = spawn.result()  # (closed with the others below)
            self._respawn.clear()
            self._spawner.shutdown(wait=True)
            gil.close()
            for driver in self.drivers.values():
                driver.stop()
            self.sampler.stop()
            for eng in self.engines.values():
                with contextlib.suppress(Exception):  # a crashed worker is already gone
                    eng.close()
            self._remove_states()
            if interrupted:
                self.status = "interrupted"
            else:
                self.status = "complete" if all(r.status == "done" for r in self.records) \
                    else "partial"
            self.write()
        if interrupted:
            raise KeyboardInterrupt
        return self.report()

    def _remove_states(self) -> None:
        if self.state_dir is None:
            return
        import shutil

        shutil.rmtree(self.state_dir, ignore_errors=True)

    def _state_bytes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._lock:
            for req, st in self.states.items():
                h = self.state_host.get(req, "")
                out[h] = out.get(h, 0) + int(st.nbytes)
        return out

    def _holdings(self) -> list[Holding]:
        """What each engine worker holds now, measured (for the memory guard)."""
        import psutil

        out = []
        for eid, eng in list(self.engines.items()):
            e = self.schedule.engine(eid)
            host = self.inst.cluster.device(e.device).host
            loaded = eid in self.loaded
            measured = 0
            pid = getattr(eng, "pid", 0)
            if pid:
                try:
                    rss = psutil.Process(pid).memory_info().rss
                    measured = max(0, rss - (0 if loaded else getattr(eng, "idle_rss_bytes", 0)))
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    measured = 0
            out.append(Holding(eid, host, int(measured), e.host_bytes if loaded else 0))
        return out

    def _worker_pids(self) -> list[tuple[int, int]]:
        out = []
        for eid, eng in list(self.engines.items()):
            pid = getattr(eng, "pid", 0)
            if pid:
                out.append((pid, 0 if eid in self.loaded else getattr(eng, "idle_rss_bytes", 0)))
        return out

    def _progress(self, rec: ActionRecord) -> None:
        if self.on_action is not None:
            self.on_action(rec)
        # The report is rebuilt whole on every write (16 ms at 436 actions, growing with
        # the plan), in the process that times the actions: while they run, at most one
        # write per WRITE_EVERY_S (or at once after a refused one); the replay's end (or
        # interruption) always writes.
        if self.write_error is not None or \
                time.perf_counter() - self._written_at >= WRITE_EVERY_S:
            self.write()

    # --- report ------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "plan": self.plan_path,
            "instance": {"name": self.inst.name, "sha256": self.inst.sha256},
            "status": self.status,
            "realtime": self.realtime,
            "threads": self.threads or os.cpu_count(),
            "warnings": self.warnings,
            "memory_refusals": list(self.guard.refusals),
            "profiles_here": self.machine,
            "engines": engine_options(self.schedule, self.engines),
            **measured_report(self.inst, self.schedule, self.records, self.sampler),
        }

    def write(self) -> None:
        """Rewrite the report atomically. A write the disk refuses (full, read-only,
        folder gone) does not stop the replay: the report stays whole in memory, the
        last version on disk stays valid, and every later action tries again."""
        with self._write_lock:
            self._written_at = time.perf_counter()
            try:
                write_json_atomic(self.report_path, self.report())
                self.write_error = None
            except OSError as exc:
                self.write_error = f"{type(exc).__name__}: {exc}"
