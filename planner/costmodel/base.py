"""The cost-model interface every scheduler, the checker's sizing and the executor use.

A cost model answers, for an engine configuration (model, device, n_gpu_layers,
n_ctx), how long each action takes and how much memory the engine holds. Two
implementations live beside this file: ``analytic`` (a roofline over reference
data) and ``profiled`` (fits from ``planner profile`` measurements).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from planner.domain import EngineConfig
from planner.errors import CostModelError as CostModelError  # re-exported

#: fixed GPU memory of an engine beyond weights and KV cache (CUDA context, compute
#: buffer), llama.cpp's typical figure; every GPU of a split engine holds one
GPU_RUNTIME_BYTES = 300 * 1024**2


class CostModel(ABC):
    """Predicts action durations (seconds) and memory (bytes) for engine configurations."""

    name: str = "abstract"

    # --- per-model facts -------------------------------------------------
    @abstractmethod
    def n_layers(self, model: str) -> int:
        """Number of repeating blocks."""

    def max_gpu_layers(self, model: str) -> int:
        """The largest useful ``n_gpu_layers``: the block count where the model has no
        output layer of its own to place. llama.cpp's models do: ``n_layers + 1`` puts
        the output layer on the GPU as well (the cost models of real engines say so)."""
        return self.n_layers(model)

    # --- memory -------------------------------------------------------------
    @abstractmethod
    def gpu_bytes(self, cfg: EngineConfig) -> int:
        """Bytes the engine holds on its GPU while resident (0 on a CPU device)."""

    @abstractmethod
    def host_bytes(self, cfg: EngineConfig) -> int:
        """Bytes the engine holds in its host's RAM while resident."""

    def gpu_shares(self, cfg: EngineConfig) -> dict[str, int]:
        """Bytes on each GPU the engine spans (``cfg.split``), summing to ``gpu_bytes``.

        Default: the fixed per-GPU runtime on every GPU, the rest by split fraction.
        """
        total = self.gpu_bytes(cfg)
        if not cfg.split:
            return {cfg.device: total} if total else {}
        rest = max(0, total - GPU_RUNTIME_BYTES)
        out = {d: round(rest * f) + GPU_RUNTIME_BYTES for d, f in cfg.split}
        out[cfg.split[-1][0]] += total + (len(cfg.split) - 1) * GPU_RUNTIME_BYTES \
            - sum(out.values())
        return out

    @abstractmethod
    def kv_bytes(self, cfg: EngineConfig, context_tokens: int) -> int:
        """Size of one request's saved state at ``context_tokens`` of context."""

    # --- time ---------------------------------------------------------------
    @abstractmethod
    def decode_s_per_token(self, cfg: EngineConfig, context_tokens: int) -> float:
        """Seconds to generate one token with ``context_tokens`` already in the cache."""

    @abstractmethod
    def prefill_s(self, cfg: EngineConfig, prompt_tokens: int) -> float:
        """Seconds to prefill a prompt of ``prompt_tokens`` into an empty cache."""

    @abstractmethod
    def load_s(self, cfg: EngineConfig) -> float:
        """Seconds to load (or reload) the engine: file read plus upload to the GPU."""

    def first_load_s(self, cfg: EngineConfig) -> float:
        """Seconds of the engine's first load in a replay (a freshly started worker, the
        file in the page cache). Without a measurement: :meth:`load_s`."""
        return self.load_s(cfg)

    def busy_load_s(self, cfg: EngineConfig) -> float:
        """Seconds of a load that overlaps a run on the same host (they compete for memory
        bandwidth and caches). Without a measurement: :meth:`load_s`."""
        return self.load_s(cfg)

    @abstractmethod
    def unload_s(self, cfg: EngineConfig) -> float:
        """Seconds to unload the engine and free its memory."""

    def kv_s(self, kind: str, cfg: EngineConfig, context_tokens: int) -> float:
        """:meth:`kv_save_s` or :meth:`kv_restore_s` by action kind (``kv_save``,
        ``kv_restore``)."""
        return (self.kv_save_s if kind == "kv_save" else self.kv_restore_s)(cfg,
                                                                            context_tokens)

    def busy_kv_s(self, kind: str, cfg: EngineConfig, context_tokens: int) -> float:
        """Seconds of a KV copy (``kind``: ``kv_save`` or ``kv_restore``) that overlaps a run
        on the same host (they share the host's cores and memory bandwidth). Without a
        measurement: the copy alone."""
        return self.kv_s(kind, cfg, context_tokens)

    @abstractmethod
    def kv_save_s(self, cfg: EngineConfig, context_tokens: int) -> float:
        """Seconds to copy a request's state out of the engine into host RAM."""

    @abstractmethod
    def kv_restore_s(self, cfg: EngineConfig, context_tokens: int) -> float:
        """Seconds to put a saved state back into an engine."""

    # --- derived ------------------------------------------------------------
    def decode_s(self, cfg: EngineConfig, context_from: int, n_tokens: int) -> float:
        """Seconds to decode ``n_tokens`` starting with ``context_from`` tokens in cache.

        Sums ``decode_s_per_token`` over the contexts ``context_from .. context_from+n-1``.
        """
        return float(sum(self.decode_s_per_token(cfg, context_from + i) for i in range(n_tokens)))

    def run_s(self, cfg: EngineConfig, prompt_tokens: int, tokens_from: int, tokens_to: int,
              recompute: bool = False) -> float:
        """Seconds for a SPEC ``run`` action generating output tokens [from, to).

        A run from token 0 prefills the prompt first; a recompute run prefills the
        prompt and the ``tokens_from`` tokens already generated.
        """
        if tokens_to <= tokens_from:
            return 0.0
        prefill = 0.0
        if tokens_from == 0:
            prefill = self.prefill_s(cfg, prompt_tokens)
        elif recompute:
            prefill = self.prefill_s(cfg, prompt_tokens + tokens_from)
        return prefill + self.decode_s(cfg, prompt_tokens + tokens_from, tokens_to - tokens_from)

    # --- parallel slots -----------------------------------------------------------
    def step_s(self, cfg: EngineConfig, active: int, depth: int, prompt_tokens: int = 0) -> float:
        """Seconds of one continuous-batching step: ``active`` sequences decode a token at
        ``depth`` cached tokens each, and (``prompt_tokens > 0``) one prompt joins.

        Default (no batch measurement): one sequence's step, plus for every further
        token in the batch its compute (prefill's marginal per-token cost) and its
        own KV read (decode's growth with context).
        """
        per_tok = self._batch_token_s(cfg)
        kv_read = max(0.0, self.decode_s_per_token(cfg, depth) - self.decode_s_per_token(cfg, 0))
        if active <= 0:
            return self.prefill_s(cfg, max(1, prompt_tokens))
        t = self.decode_s_per_token(cfg, depth) + (active - 1) * (per_tok + kv_read)
        if prompt_tokens:
            t += self.prefill_s(cfg, prompt_tokens) - self.prefill_s(cfg, 1) + per_tok
        return t

    def _batch_token_s(self, cfg: EngineConfig) -> float:
        """A further token's compute in a batch: prefill's marginal per-token cost, kept per
        configuration (a slot replay asks it at every step)."""
        memo: dict[EngineConfig, float] = self.__dict__.setdefault("_batch_token_memo", {})
        got = memo.get(cfg)
        if got is None:
            got = memo[cfg] = max(0.0, (self.prefill_s(cfg, 256) - self.prefill_s(cfg, 128))
                                  / 128)
        return got

    def run_s_at(self, cfg: EngineConfig, prompt_tokens: int, tokens_from: int, tokens_to: int,
                 recompute: bool = False, active: int = 1) -> float:
        """A run's seconds when ``active`` requests share the engine's slots throughout
        (the conservative duration at the engine's slot count): its prompt joins
        ``active - 1`` decoding sequences, then every step decodes ``active`` tokens.
        ``active = 1`` is :meth:`run_s`."""
        if active <= 1:
            return self.run_s(cfg, prompt_tokens, tokens_from, tokens_to, recompute)
        if tokens_to <= tokens_from:
            return 0.0
        t = 0.0
        start = prompt_tokens + tokens_from
        if tokens_from == 0:
            t += self.step_s(cfg, active - 1, start, prompt_tokens)
        elif recompute:
            t += self.step_s(cfg, active - 1, start, prompt_tokens + tokens_from)
        return t + self.decode_steps_s(cfg, active, start, tokens_to - tokens_from)

    def decode_steps_s(self, cfg: EngineConfig, active: int, depth: int, n_steps: int) -> float:
        """Sum of ``n_steps`` steps of ``active`` sequences from ``depth`` on (evaluated per
        64-token segment at its middle)."""
        t, i = 0.0, 0
        while i < n_steps:
            n = min(64, n_steps - i)
            t += n * self.step_s(cfg, active, depth + i + n // 2)
            i += n
        return t

    def extra_bufts(self, model: str, device: str) -> bool | None:
        """Whether the engine measurements behind (model, device) used llama.cpp's extra
        buffer types (CPU repack, AMX); None where nothing was measured."""
        return None

    def fits(self, cfg: EngineConfig, gpu_memory: int | None, host_memory: int) -> bool:
        """Whether the engine alone fits in the given device and host memory."""
        if gpu_memory is not None and self.gpu_bytes(cfg) > gpu_memory:
            return False
        return self.host_bytes(cfg) <= host_memory
