"""Parallel slots: one llama.cpp context decoding several sequences together.

``llama-server --parallel N`` (and Ollama's ``OLLAMA_NUM_PARALLEL``) keep N
request states in one context (``n_seq_max = N``, ``n_ctx`` cells per slot) and
advance every active sequence by one token per ``llama_decode`` call: continuous
batching, where a new request's prompt joins the batch of the sequences already
decoding and finished ones leave between steps. :class:`BatchEngine` drives that
through llama-cpp-python's low-level API (``llama_batch`` with several sequence
ids) in the same kind of worker process as :class:`profiler.engine.Engine`; the
executor replays slot plans with it and :func:`measure_batch` profiles its step
time. The KV cache is unified (``kv_unified``, llama-server's default since it
went to several slots): one buffer of ``n_parallel * n_ctx`` cells whose used
part every token of a step attends over. (Separate streams per slot make
llama.cpp split a prompt that joins decoding sequences into one micro-batch per
token, many times slower on the CPU.)

A step's time is fitted (:func:`fit_batch`) as
``a + e*batched + w*wide + b*batch_tokens + c*n_outputs + d*attn_cells``: the
weights are read once per step (a), a batch of more than one token switches
llama.cpp's CPU backend from matrix-vector to matrix-matrix kernels (e), one of
more than 8 tokens switches its CUDA backend from batched matrix-vector kernels
to matrix-matrix ones (w), every token in the batch costs its
share of the matrix products (b), every sequence that produces a token its
output-layer row and sampling (c), and every token attends over the cache's
used cells, rounded up to llama.cpp's KV padding (d).

Example
-------
>>> with BatchEngine(threads=2) as eng:                   # doctest: +SKIP
...     eng.batch_load("model.gguf", n_ctx=1024, n_parallel=4)
...     eng.batch_add(0, prompt_a, n_decode=32)
...     eng.batch_add(1, prompt_b, n_decode=8)
...     out = eng.batch_step()                             # until a sequence finishes
...     out.finished                                       # (1,)
"""

from profiler.batch.engine import BatchEngine, BatchResult, BatchWorker, SlotDriver, StepRecord
from profiler.batch.fit import (
    BATCH_COLUMNS,
    BATCH_DOC,
    BATCH_FEATURES,
    BATCH_QUANTITY,
    batch_features,
    fit_batch,
    predict_step,
    slot_cells,
    step_features,
)
from profiler.batch.measure import (
    BatchConfig,
    add_batch_profile,
    batch_journal,
    batch_settings,
    measure_batch,
    read_batch_rows,
    synthetic_tokens,
)

__all__ = ["BATCH_COLUMNS", "BATCH_DOC", "BATCH_FEATURES", "BATCH_QUANTITY", "BatchConfig",
           "BatchEngine", "BatchResult", "BatchWorker", "SlotDriver", "StepRecord",
           "add_batch_profile", "batch_features", "batch_journal", "batch_settings", "fit_batch",
           "measure_batch", "predict_step", "read_batch_rows", "slot_cells", "step_features",
           "synthetic_tokens"]
