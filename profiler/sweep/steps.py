"""The sweep's measurement steps on one model: loads, the context walk, prefills, the profile."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from profiler.devices import (
    discover_build,
    discover_gpus,
    discover_host,
)
from profiler.engine import Engine, LoadInfo, SavedStateFile, StepInfo, state_dir
from profiler.fingerprint import PROBE_PROMPT, PROBE_TOKENS, decode_probe, fingerprint
from profiler.models import read_arch
from profiler.store import (
    MeasurementLog,
    build_profile,
    make_row,
    profile_paths,
    read_measurements,
    write_profile,
)
from profiler.sweep.method import method_notes
from profiler.sweep.settings import (
    PROFILER_REVISION,
    PROMPT_TEXT,
    Progress,
    SweepConfig,
    SweepResult,
    SweepSettingError,
    _Budget,
    _device_of,
    evict_from_page_cache,
    gpu_layer_settings,
    round_robin,
)


class Sweep:
    """One sweep of one model; :meth:`run` measures what is missing and writes the profile."""

    def __init__(self, model_path: Path, out_root: Path, config: SweepConfig) -> None:
        self.model_path = Path(model_path)
        self.arch = read_arch(self.model_path)
        self.host = discover_host()
        self.gpus = discover_gpus()
        self.build = discover_build()
        self.device = _device_of(self.build, self.host, self.gpus)
        cfg = config.for_model(self.arch)
        if cfg.gpu_layers is None:
            layers = (gpu_layer_settings(self.arch.n_layers, cfg.mode)
                      if self.device["kind"] == "gpu" else (0,))
            cfg = replace(cfg, gpu_layers=layers)
        elif self.device["kind"] != "gpu" and any(cfg.gpu_layers):
            raise SweepSettingError(
                "this llama.cpp build has no GPU offload: only n_gpu_layers 0 can be measured")
        elif max(cfg.gpu_layers, default=0) > self.arch.n_layers + 1:
            raise SweepSettingError(
                f"{self.model_path.name} has {self.arch.n_layers} layers: n_gpu_layers goes "
                f"up to {self.arch.n_layers + 1} (the output layer)")
        self.cfg = cfg
        self.csv_path, self.json_path = profile_paths(
            Path(out_root), self.arch.key, self.device["type"], self.build.slug)
        self.primary_ngl = max(cfg.gpu_layers or (0,))
        self.cold_ok: bool | None = None
        self.idle_rss: int | None = None
        self.engine_options: dict[str, Any] | None = None
        self.fingerprint: dict[str, Any] | None = None

    # ------------------------------------------------------------------ planning
    def _load_settings(self) -> list[tuple[int, int]]:
        assert self.cfg.gpu_layers is not None
        ngls = [self.primary_ngl] if self.device["kind"] == "cpu" else list(self.cfg.gpu_layers)
        out = [(self.primary_ngl, n) for n in self.cfg.load_n_ctx]
        out += [(g, self.cfg.walk_n_ctx) for g in ngls if g != self.primary_ngl]
        return out

    def _walk_ngls(self) -> list[int]:
        assert self.cfg.gpu_layers is not None
        return [self.primary_ngl] + [g for g in self.cfg.gpu_layers if g != self.primary_ngl]

    def _walk_depths(self, ngl: int) -> tuple[int, ...]:
        if ngl == self.primary_ngl:
            return self.cfg.depths
        d = self.cfg.depths
        return (d[0], d[len(d) // 2]) if len(d) > 1 else d

    def _prefill_lengths(self, ngl: int) -> tuple[int, ...]:
        p = self.cfg.prompt_lengths
        if ngl == self.primary_ngl or len(p) < 2:
            return p
        return (p[1], p[-1])

    @staticmethod
    def _s_load(ngl: int, n_ctx: int) -> str:
        return f"load:ngl={ngl}:n_ctx={n_ctx}"

    @staticmethod
    def _s_decode(ngl: int, n_ctx: int, depth: int) -> str:
        return f"decode:ngl={ngl}:n_ctx={n_ctx}:depth={depth}"

    @staticmethod
    def _s_kv(ngl: int, n_ctx: int, depth: int) -> str:
        return f"kv:ngl={ngl}:n_ctx={n_ctx}:depth={depth}"

    @staticmethod
    def _s_prefill(ngl: int, n_ctx: int, prompt: int) -> str:
        return f"prefill:ngl={ngl}:n_ctx={n_ctx}:prompt={prompt}"

    def planned_work(self, budget: _Budget) -> float:
        """Work units still to do (for the progress bar): ~1 unit per 0.1 s expected."""
        c = self.cfg
        units = 0.0
        for ngl, n in self._load_settings():
            s = self._s_load(ngl, n)
            units += 3 * (budget.missing("cold_load_s", s, c.cold_reps)
                          + budget.missing("load_s", s, c.warm_reps)
                          + budget.missing("busy_load_s", s, c.busy_reps))
        for n in sorted({min(c.load_n_ctx), max(c.load_n_ctx)}):
            units += 10 * budget.missing("first_load_s", self._s_load(self.primary_ngl, n),
                                         c.first_reps)
        for ngl in self._walk_ngls():
            n = c.walk_n_ctx
            for d in self._walk_depths(ngl):
                units += budget.missing("decode_s_per_token", self._s_decode(ngl, n, d),
                                        c.decode_reps)
                units += budget.missing("kv_save_s", self._s_kv(ngl, n, d), c.kv_reps)
            for p in self._prefill_lengths(ngl):
                units += budget.missing("prefill_s", self._s_prefill(ngl, n, p),
                                        c.prefill_reps) * max(1.0, p / 64)
        for d in self._busy_kv_depths():
            units += budget.missing("busy_kv_save_s",
                                    self._s_kv(self.primary_ngl, c.walk_n_ctx, d), c.kv_reps)
        return units

    def missing_work(self) -> float:
        """Work units this configuration still lacks in the journal on disk (0: complete)."""
        return self.planned_work(_Budget(read_measurements(self.csv_path), self.cfg.threads))

    # ------------------------------------------------------------------ running
    def run(self, progress: Progress | None = None,
            on_total: Callable[[float], None] | None = None) -> SweepResult:
        t0 = time.perf_counter()
        existing = read_measurements(self.csv_path)
        budget = _Budget(existing, self.cfg.threads)
        total = self.planned_work(budget)
        if on_total is not None:
            on_total(total)
        if total == 0 and self.json_path.is_file():
            # nothing left to measure: the profile on disk already fits these rows
            doc = json.loads(self.json_path.read_text(encoding="utf-8"))
            return SweepResult(self.json_path, self.csv_path, 0, len(existing),
                               time.perf_counter() - t0, doc)
        tick: Progress = progress or (lambda units, what: None)
        new_rows = 0
        if total > 0:
            with MeasurementLog(self.csv_path) as log:
                try:
                    self._measure(log, budget, tick)
                finally:
                    new_rows = log.written
        rows = [r for r in read_measurements(self.csv_path) if r["threads"] == self.cfg.threads]
        doc = self.make_profile(rows)
        write_profile(doc, self.json_path)
        return SweepResult(self.json_path, self.csv_path, new_rows, len(existing),
                           time.perf_counter() - t0, doc)

    def _row(self, log: MeasurementLog, budget: _Budget, kind: str, setting: str, value: float,
             unit: str, **kw: Any) -> None:
        rep = budget.next_rep(kind, setting)
        log.write(make_row(kind, value, unit, setting=setting, threads=self.cfg.threads,
                           repetition=rep, **kw))

    def _measure(self, log: MeasurementLog, budget: _Budget, tick: Progress) -> None:
        c = self.cfg
        with Engine(threads=c.threads) as eng:
            self.idle_rss = eng.idle_rss_bytes
            try:
                self._probe(eng)
            finally:
                self.engine_options = eng.options
            fp = fingerprint(c.threads)
            fp["probes"]["decode_s_per_token"] = decode_probe(
                eng, self.model_path, self.primary_ngl)
            fp["probes"]["decode_probe"] = {"prompt_tokens": PROBE_PROMPT,
                                            "tokens": PROBE_TOKENS}
            fp["idle_worker_bytes"] = self.idle_rss
            self.fingerprint = fp
            self._measure_with(eng, log, budget, tick)
            self.engine_options = eng.options

    def _load(self, eng: Engine, n_gpu_layers: int, n_ctx: int) -> LoadInfo:
        """Load the model into ``eng`` as every measurement of this sweep does."""
        return eng.load(self.model_path, n_gpu_layers=n_gpu_layers, n_ctx=n_ctx,
                        n_batch=self.cfg.n_batch, use_mmap=self.cfg.use_mmap)

    def _probe(self, eng: Engine) -> None:
        """A short load, prefill and decode before any measurement, so a crash of this
        CPU's llama.cpp kernels (and the engine's fallback without extra buffer types)
        happens before anything is measured: every row then has the same engine options."""
        self._load(eng, self.primary_ngl, 256)
        eng.prefill(self._prompt_tokens(eng, 32))
        eng.decode(2)
        eng.unload()

    def _measure_with(self, eng: Engine, log: MeasurementLog, budget: _Budget,
                      tick: Progress) -> None:
        c = self.cfg
        # ---- phase 1: loads, memory, unloads, round-robin over the settings (a cold and
        # a warm load of each per round), so that a slow spell of the machine falls on
        # every setting alike instead of bending the fit's n_ctx slope
        todo = []
        for ngl, n_ctx in self._load_settings():
            s = self._s_load(ngl, n_ctx)
            todo += [((ngl, n_ctx, s, "cold_load_s"), budget.missing("cold_load_s", s,
                                                                     c.cold_reps)),
                     ((ngl, n_ctx, s, "load_s"), budget.missing("load_s", s, c.warm_reps))]
        for ngl, n_ctx, s, kind in round_robin(todo):
            if kind == "cold_load_s":
                self.cold_ok = evict_from_page_cache(self.model_path)
            info = self._load(eng, ngl, n_ctx)
            common = {"n_gpu_layers": ngl, "n_ctx": n_ctx}
            self._row(log, budget, kind, s, info.wall_s, "s", **common)
            if kind == "load_s" and budget.missing("host_bytes", s, 1):
                self._memory_rows(eng, log, budget, s, common)
            self._row(log, budget, "unload_s", s, eng.unload(), "s", **common)
            tick(3, f"load n_ctx={n_ctx} ngl={ngl}")
        self._first_loads(log, budget, tick)
        self._busy_loads(log, budget, tick)
        self._busy_kv(log, budget, tick)
        # ---- phases 2 and 3 per n_gpu_layers
        tokens: list[int] = []
        for ngl in self._walk_ngls():
            if not self._walk_needed(budget, ngl):
                continue
            self._load(eng, ngl, c.walk_n_ctx)
            if not tokens:
                tokens = self._prompt_tokens(eng, c.walk_n_ctx)
            self._walk(eng, log, budget, tick, ngl, tokens)
            self._prefills(eng, log, budget, tick, ngl, tokens)
            eng.unload()

    def _memory_rows(self, eng: Engine, log: MeasurementLog, budget: _Budget, s: str,
                     common: dict[str, int]) -> None:
        """Memory held while resident: RSS (and NVML) after a full-batch prefill, which
        touches the compute buffers a load alone leaves untouched."""
        n = min(self.cfg.n_batch, common["n_ctx"] - 8)
        if n > 0:
            eng.prefill(self._prompt_tokens(eng, n))
            eng.reset()
        mem = eng.memory()
        self._row(log, budget, "host_bytes", s, mem.rss_bytes, "bytes", **common)
        if common["n_gpu_layers"] > 0 and mem.gpu_bytes is not None:
            self._row(log, budget, "gpu_bytes", s, mem.gpu_bytes, "bytes", **common)

    def _first_loads(self, log: MeasurementLog, budget: _Budget, tick: Progress) -> None:
        """The first load in a freshly started worker, file in the page cache: what every
        engine's first load in a replay is (the executor reads the files through first)."""
        c = self.cfg
        ns = sorted({min(c.load_n_ctx), max(c.load_n_ctx)})
        todo = [(n, budget.missing("first_load_s", self._s_load(self.primary_ngl, n),
                                   c.first_reps)) for n in ns]
        for n_ctx in round_robin(todo):
            with Engine(threads=c.threads, extra_bufts=self._extra()) as fresh:
                info = self._load(fresh, self.primary_ngl, n_ctx)
                fresh.unload()
            self._row(log, budget, "first_load_s", self._s_load(self.primary_ngl, n_ctx),
                      info.wall_s, "s", n_gpu_layers=self.primary_ngl, n_ctx=n_ctx)
            tick(10, f"first load n_ctx={n_ctx}")

    def _busy_loads(self, log: MeasurementLog, budget: _Budget, tick: Progress) -> None:
        """Loads while another engine on this host decodes (they share memory bandwidth
        and caches): what a load overlapping a run on the same host takes."""
        c = self.cfg
        todo = [(n, k) for n in c.load_n_ctx
                if (k := budget.missing("busy_load_s", self._s_load(self.primary_ngl, n),
                                        c.busy_reps))]
        if not todo:
            return
        with self._beside_a_decode() as eng:
            for n_ctx in round_robin(todo):
                s = self._s_load(self.primary_ngl, n_ctx)
                info = self._load(eng, self.primary_ngl, n_ctx)
                eng.unload()
                self._row(log, budget, "busy_load_s", s, info.wall_s, "s",
                          n_gpu_layers=self.primary_ngl, n_ctx=n_ctx)
                tick(3, f"load beside a decode n_ctx={n_ctx}")

    def _busy_kv_depths(self) -> list[int]:
        """Depths of the KV copies beside a decode: the walk's least, middle and largest."""
        ds = sorted(self._walk_depths(self.primary_ngl))
        return sorted({ds[0], ds[len(ds) // 2], ds[-1]}) if ds else []

    def _busy_kv(self, log: MeasurementLog, budget: _Budget, tick: Progress) -> None:
        """KV save/restore while another engine on this host decodes (they share the
        cores and memory bandwidth): what a copy overlapping a run on the same host takes."""
        c, ngl, n_ctx = self.cfg, self.primary_ngl, self.cfg.walk_n_ctx
        todo = [(d, k) for d in self._busy_kv_depths()
                if (k := budget.missing("busy_kv_save_s", self._s_kv(ngl, n_ctx, d),
                                        c.kv_reps))]
        if not todo:
            return
        with self._beside_a_decode() as eng:
            self._load(eng, ngl, n_ctx)
            tokens = self._prompt_tokens(eng, max(d for d, _k in todo))
            for d, _k in todo:
                eng.reset()
                if d > 0:
                    eng.prefill(tokens[:d])
                self._copies(eng, log, budget, tick, ngl, d, busy=True)
            eng.unload()

    def _copies(self, eng: Engine, log: MeasurementLog, budget: _Budget, tick: Progress,
                ngl: int, depth: int, busy: bool = False) -> None:
        """The KV save/restore repetitions a depth lacks (``busy``: the ones beside a
        decode), after one warm-up copy (the first save of a new size warms llama.cpp's
        own buffers); the state sits at ``depth`` tokens."""
        c, n_ctx = self.cfg, self.cfg.walk_n_ctx
        pre = "busy_" if busy else ""
        sk = self._s_kv(ngl, n_ctx, depth)
        reps = budget.missing(f"{pre}kv_save_s", sk, c.kv_reps)
        if reps:
            self._kv_once(eng)
        common = {"context": depth, "n_gpu_layers": ngl, "n_ctx": n_ctx}
        for _ in range(reps):
            st, r = self._kv_once(eng)
            self._row(log, budget, f"{pre}kv_save_s", sk, st.wall_s, "s", nbytes=st.nbytes,
                      **common)
            if not busy:
                self._row(log, budget, "kv_bytes", sk, st.nbytes, "bytes", nbytes=st.nbytes,
                          **common)
            self._row(log, budget, f"{pre}kv_restore_s", sk, r.wall_s, "s", nbytes=st.nbytes,
                      **common)
            tick(1, f"kv save/restore{' beside a decode' if busy else ''} context={depth}")

    @contextlib.contextmanager
    def _beside_a_decode(self) -> Iterator[Engine]:
        """An engine to measure with while a second engine of the same model on this host
        decodes without pause."""
        import threading

        c = self.cfg
        with Engine(threads=c.threads, extra_bufts=self._extra()) as other, \
                Engine(threads=c.threads, extra_bufts=self._extra()) as eng:
            self._load(other, self.primary_ngl, 1024)
            prompt = self._prompt_tokens(other, 64)
            other.prefill(prompt)
            stop = threading.Event()

            def compete() -> None:
                while not stop.is_set():
                    other.decode(8)
                    other.truncate(64)

            t = threading.Thread(target=compete, daemon=True)
            t.start()
            try:
                time.sleep(0.2)
                yield eng
            finally:
                stop.set()
                t.join()

    def _extra(self) -> bool | None:
        """Extra buffer types as the main engine ended up (after any crash fallback)."""
        opts = self.engine_options or {}
        return False if opts.get("extra_bufts") is False else None

    def _walk_needed(self, budget: _Budget, ngl: int) -> bool:
        c, n = self.cfg, self.cfg.walk_n_ctx
        return any(
            budget.missing("decode_s_per_token", self._s_decode(ngl, n, d), c.decode_reps)
            or budget.missing("kv_save_s", self._s_kv(ngl, n, d), c.kv_reps)
            for d in self._walk_depths(ngl)) or any(
            budget.missing("prefill_s", self._s_prefill(ngl, n, p), c.prefill_reps)
            for p in self._prefill_lengths(ngl))

    @staticmethod
    def _prompt_tokens(eng: Engine, n: int) -> list[int]:
        once = eng.tokenize(PROMPT_TEXT, add_bos=False)
        bos = eng.tokenize("", add_bos=True)
        toks = list(bos)
        while len(toks) < n:
            toks.extend(once)
        return toks[:n]

    def _walk(self, eng: Engine, log: MeasurementLog, budget: _Budget, tick: Progress, ngl: int,
              tokens: list[int]) -> None:
        c, n_ctx = self.cfg, self.cfg.walk_n_ctx
        depths = self._walk_depths(ngl)
        todo = [d for d in depths
                if budget.missing("decode_s_per_token", self._s_decode(ngl, n_ctx, d),
                                  c.decode_reps)
                or budget.missing("kv_save_s", self._s_kv(ngl, n_ctx, d), c.kv_reps)]
        if not todo:
            return
        # warm-up after the load: first decodes touch fresh buffers and are slow
        eng.reset()
        eng.prefill(tokens[:64])
        eng.decode(3 * c.decode_block)
        eng.reset()
        cached = 0
        common = {"n_gpu_layers": ngl, "n_ctx": n_ctx}
        for d in todo:
            # bring the cache to depth d (rewinding over decoded tokens when past it)
            if cached > d:
                eng.truncate(d)
                cached = d
            if cached < d:
                cached = eng.prefill(tokens[cached:d]).n_tokens
            eng.decode(1)  # warm-up: first single-token step after a batch
            eng.truncate(d)
            sd = self._s_decode(ngl, n_ctx, d)
            for _ in range(budget.missing("decode_s_per_token", sd, c.decode_reps)):
                eng.truncate(d)
                out = eng.decode(c.decode_block)
                self._row(log, budget, "decode_s_per_token", sd,
                          out.seconds / c.decode_block, "s",
                          context=d + c.decode_block // 2, **common)
                tick(1, f"decode ngl={ngl} context={d}")
            eng.truncate(d)
            cached = d
            self._copies(eng, log, budget, tick, ngl, d)

    @staticmethod
    def _kv_once(eng: Engine) -> tuple[SavedStateFile, StepInfo]:
        """Save the request state to a fresh file in /dev/shm, restore it, delete the file
        (as the executor does, and llama-server with --slot-save-path)."""
        path = state_dir() / f"sweep-{os.getpid()}.kv"
        try:
            st = eng.save_state_file(path)
            return st, eng.restore_state_file(st)
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    def _prefills(self, eng: Engine, log: MeasurementLog, budget: _Budget, tick: Progress,
                  ngl: int, tokens: list[int]) -> None:
        c, n_ctx = self.cfg, self.cfg.walk_n_ctx
        lengths = self._prefill_lengths(ngl)
        need = {p: budget.missing("prefill_s", self._s_prefill(ngl, n_ctx, p), c.prefill_reps)
                for p in lengths}
        if not any(need.values()):
            return
        eng.reset()
        eng.prefill(tokens[:32])  # warm-up
        for p in round_robin((p, need[p]) for p in lengths):
            eng.reset()
            r = eng.prefill(tokens[:p])
            self._row(log, budget, "prefill_s", self._s_prefill(ngl, n_ctx, p), r.seconds,
                      "s", prompt_tokens=p, context=0, n_gpu_layers=ngl, n_ctx=n_ctx)
            tick(max(1.0, p / 64), f"prefill prompt={p}")

    # ------------------------------------------------------------------ profile
    def make_profile(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        c = self.cfg
        cpu_only = self.device["kind"] == "cpu"
        method = method_notes(c, cold_ok=self.cold_ok, idle_rss=self.idle_rss,
                              cpu_only=cpu_only, gpu_offload=self.build.gpu_offload)
        settings = asdict(c)
        settings["primary_n_gpu_layers"] = self.primary_ngl
        build = self.build.to_json()
        build["engine_options"] = self.engine_options  # extra buffer types, fallbacks
        doc = build_profile(
            rows=rows, arch=self.arch, device=self.device, build=build,
            settings=settings, method=method,
            source={"kind": "measured", "by": "planner profile", "host": self.host.hostname},
            measurements_file=self.csv_path.name)
        fp = self.fingerprint
        if fp is None and self.json_path.is_file():  # nothing new measured: keep the old one
            with contextlib.suppress(OSError, ValueError):
                fp = json.loads(self.json_path.read_text(encoding="utf-8")).get("fingerprint")
        if fp is not None:
            doc["fingerprint"] = fp
        doc["profiler_revision"] = PROFILER_REVISION
        return doc
