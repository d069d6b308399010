"""How a profile's measurements were made: the ``method`` notes every profile carries (what
each kind of row measures and how), from the sweep's settings and what it found here."""

from __future__ import annotations

from profiler.sweep.settings import SweepConfig


def method_notes(c: SweepConfig, *, cold_ok: bool | None, idle_rss: int | None,
                 cpu_only: bool, gpu_offload: bool) -> dict[str, str]:
    """``method`` of a profile (SPEC: profile files): one note per kind of measurement."""
    return {
        "timing": "time.perf_counter inside the engine worker process (one process per "
                  "engine, multiprocessing spawn); loads, kv_save_s and kv_restore_s are "
                  "caller-side (what the executor measures)",
        "decode": f"value = mean seconds per token over a block of {c.decode_block} greedy "
                  "tokens (EOS ignored) starting at the setting's depth; the row's context "
                  "is the block's middle; the cache is rewound to the depth between blocks",
        "prefill": "prompt into an empty cache, repetitions interleaved across lengths",
        "load": "load_s: warm load (file in the page cache) in a worker that has loaded "
                f"before; weights read into RAM (use_mmap={c.use_mmap}); includes context "
                "creation and a one-token warm-up eval; caller-side time",
        "first_load": "first_load_s: the first load in a freshly started worker, file in "
                      "the page cache (every engine's first load in a replay)",
        "busy_load": "busy_load_s: a warm load while another engine of the same model on "
                     "this host decodes without pause (loads overlapping runs)",
        "busy_kv": "busy_kv_save_s, busy_kv_restore_s: KV copies (as kv_save_s) at the "
                   "walk's least, middle and largest depth while another engine of the "
                   "same model on this host decodes without pause (copies overlapping "
                   "runs)",
        "cold_load": "cold_load_s: the file is evicted from the page cache before each load "
                     "with fsync + os.posix_fadvise(POSIX_FADV_DONTNEED)"
                     + ("" if cold_ok is not False else
                        " -- EVICTION FAILED on this system, cold loads may be warm"),
        "unload": "unload_s: freeing model and context inside the worker",
        "kv": "state of sequence 0 written to a fresh file in /dev/shm with "
              "llama_state_seq_save_file and read back with llama_state_seq_load_file "
              "(llama-server's --slot-save-path way; no pipe), the file deleted after; "
              "a restore first drops sequence 0's cells only (llama_memory_seq_rm, as "
              "llama-server's slot restore; clearing the whole cache would also zero "
              "its buffer, a cost that grows with n_ctx); times caller-side; one "
              "unrecorded save/restore at each depth first",
        "memory": "host_bytes: RSS of the worker process after a load and a full-batch "
                  "prefill (compute buffers touched; includes the worker's own overhead: "
                  "the Python interpreter and the llama.cpp library; an idle worker holds "
                  f"{idle_rss if idle_rss is not None else 'n/a'} bytes); "
                  "gpu_bytes: NVML per-process memory",
        "n_gpu_layers": ("CPU build (no GPU offload): only n_gpu_layers=0 measured"
                         if cpu_only and not gpu_offload else
                         "GPU offload available but no NVIDIA GPU found: only "
                         "n_gpu_layers=0 measured" if cpu_only else
                         f"n_gpu_layers swept over {list(c.gpu_layers or ())}"),
        "fits": "linear forms over physical features, fit with scikit-learn "
                "LinearRegression(positive=True) on setting medians weighted by "
                "1/median^2 (relative error); held-out MAPE is leave-one-setting-out",
    }
