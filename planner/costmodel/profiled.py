"""Profiled cost model: the fits ``planner profile`` measured on real llama.cpp engines.

A profile belongs to one (model, device type, engine build). A (model, device)
pair of an instance is *covered* when some profile's model matches the
instance's model and its device kind and type match the device's; covered pairs
are predicted from the profile's fitted cost functions, every other pair is
delegated to the fallback (normally the analytic model).

A profile's model matches an instance model when one of its keys (the GGUF file
stem, the model name, the aliases the profile lists) equals one of the instance
model's keys (its id, its name, its GGUF file stem, its reference name, and the
``match_keys`` given), compared as slugs; or when both have the same shape
(layers, hidden size, heads, KV heads, FFN size, per-layer bytes, quantization).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from planner.costmodel.base import CostModel, CostModelError
from planner.domain import LOCAL_CPU, EngineConfig, Instance, ModelArch
from profiler.batch import BATCH_QUANTITY, predict_step
from profiler.devices import host_type_slug
from profiler.fit import kv_cells
from profiler.models import GgufArch, model_key
from profiler.naming import slugify
from profiler.store import Profile, ProfileError, find_profiles, load_profile

_REQUIRED = ("decode_s_per_token", "prefill_s")


@dataclass(frozen=True)
class _Entry:
    profile: Profile
    arch: GgufArch


def _model_keys(model_id: str, arch: ModelArch, extra: list[str]) -> set[str]:
    keys = {slugify(model_id), slugify(arch.name), *(slugify(k) for k in extra)}
    src = arch.source.removeprefix("GGUF ").strip()
    if src.lower().endswith(".gguf"):
        keys.add(model_key(src))
    return keys


def _profile_keys(p: Profile) -> set[str]:
    m = p.doc["model"]
    keys = {slugify(p.model_key), slugify(str(m.get("name", ""))), model_key(p.model_file)}
    keys.update(slugify(a) for a in m.get("aliases", []))
    return keys - {"unknown"}


def _same_shape(a: ModelArch, b: GgufArch) -> bool:
    return (a.n_layers, a.hidden_size, a.n_heads, a.n_kv_heads, a.ffn_size,
            a.layer_bytes, a.quantization.upper()) == (
        b.n_layers, b.hidden_size, b.n_heads, b.n_kv_heads, b.ffn_size,
        b.layer_bytes, b.quantization.upper())


class ProfiledCostModel(CostModel):
    """Predictions from measured profiles, with a fallback for uncovered pairs.

    Parameters
    ----------
    profiles:
        Profile JSON files (or folders holding them).
    models:
        Instance model id -> its architecture.
    device_types:
        Instance device id -> ``(kind, type)`` with kind ``"cpu"`` or ``"gpu"``.
    fallback:
        Answers for pairs no profile covers; ``None`` makes them an error.
    match_keys:
        Instance model id -> extra acceptable profile model keys.
    """

    name = "profiled"

    def __init__(self, profiles: list[Path], models: dict[str, ModelArch],
                 device_types: Mapping[str, tuple[str, str]], fallback: CostModel | None = None,
                 match_keys: dict[str, list[str]] | None = None) -> None:
        self.models = models
        self.device_types = {d: (k, slugify(t)) for d, (k, t) in device_types.items()}
        self.fallback = fallback
        entries: list[_Entry] = []
        for p in profiles:
            for f in find_profiles(Path(p)):
                try:
                    prof = load_profile(f)
                except ProfileError as exc:
                    raise CostModelError(str(exc)) from exc
                if all(prof.has(q) for q in _REQUIRED):
                    entries.append(_Entry(prof, prof.arch))
        self._pairs: dict[tuple[str, str], _Entry] = {}
        keys = match_keys or {}
        for mid, arch in models.items():
            mkeys = _model_keys(mid, arch, keys.get(mid, []))
            for did, (kind, dtype) in self.device_types.items():
                for e in entries:
                    if (e.profile.device_kind, slugify(e.profile.device_type)) != (kind, dtype):
                        continue
                    if _profile_keys(e.profile) & mkeys or _same_shape(arch, e.arch):
                        self._pairs[(mid, did)] = e
                        break

    # -- coverage
    def pairs(self) -> dict[tuple[str, str], _Entry]:
        """(instance model, device) -> the profile entry that covers it."""
        return dict(self._pairs)

    def covered(self, model_id: str, device_id: str) -> bool:
        return (model_id, device_id) in self._pairs

    def source(self, model_id: str, device_id: str) -> str:
        e = self._pairs.get((model_id, device_id))
        if e is not None:
            return f"profile {e.profile.path}"
        if self.fallback is not None:
            return f"fallback ({self.fallback.name})"
        return "none"

    def extra_bufts(self, model: str, device: str) -> bool | None:
        e = self._pairs.get((model, device))
        if e is None:
            return self.fallback.extra_bufts(model, device) if self.fallback else None
        opts = e.profile.doc.get("build", {}).get("engine_options") or {}
        value = opts.get("extra_bufts")
        return bool(value) if value is not None else None

    def _entry(self, cfg: EngineConfig) -> _Entry | None:
        # a profile measures one device: engines split over GPUs go to the fallback
        e = None if cfg.split else self._pairs.get((cfg.model, cfg.device))
        if e is None and self.fallback is None:
            raise CostModelError(
                f"no profile covers model {cfg.model!r} on device {cfg.device!r} "
                "and there is no fallback cost model")
        return e

    def _fb(self) -> CostModel:
        if self.fallback is None:
            raise CostModelError("the profile lacks this quantity and there is no fallback")
        return self.fallback

    @staticmethod
    def _p(e: _Entry, quantity: str, cfg: EngineConfig, **kw: int) -> float:
        # the context is created with every slot's cells (memory and load grow with them)
        return e.profile.predict(quantity, n_gpu_layers=cfg.n_gpu_layers, n_ctx=cfg.kv_cells,
                                 **kw)

    # -- per-model facts
    def n_layers(self, model: str) -> int:
        if model in self.models:
            return self.models[model].n_layers
        if self.fallback is not None:
            return self.fallback.n_layers(model)
        raise CostModelError(f"unknown model {model!r}")

    def max_gpu_layers(self, model: str) -> int:
        return self.n_layers(model) + 1  # the output layer too (profiler.fit's features)

    # -- memory
    def gpu_bytes(self, cfg: EngineConfig) -> int:
        e = self._entry(cfg)
        if e is None:
            return self._fb().gpu_bytes(cfg)
        if e.profile.device_kind == "cpu":
            return 0
        if e.profile.has("gpu_bytes"):
            return max(0, round(self._p(e, "gpu_bytes", cfg)))
        if self.fallback is not None:
            return self.fallback.gpu_bytes(cfg)
        raise CostModelError(f"profile {e.profile.path} has no gpu_bytes fit")

    def host_bytes(self, cfg: EngineConfig) -> int:
        e = self._entry(cfg)
        if e is None:
            return self._fb().host_bytes(cfg)
        if e.profile.has("host_bytes"):
            return max(0, round(self._p(e, "host_bytes", cfg)))
        return self._fb().host_bytes(cfg)

    def kv_bytes(self, cfg: EngineConfig, context_tokens: int) -> int:
        e = self._entry(cfg)
        if e is None or not e.profile.has("kv_bytes"):
            return self._fb().kv_bytes(cfg, context_tokens)
        return max(0, round(self._p(e, "kv_bytes", cfg, context=context_tokens)))

    # -- time
    def decode_s_per_token(self, cfg: EngineConfig, context_tokens: int) -> float:
        e = self._entry(cfg)
        if e is None:
            return self._fb().decode_s_per_token(cfg, context_tokens)
        return max(1e-6, self._p(e, "decode_s_per_token", cfg, context=context_tokens))

    def decode_s(self, cfg: EngineConfig, context_from: int, n_tokens: int) -> float:
        """Closed form over KV-padding segments.

        The fit is linear in context within a segment of constant ``kv_cells``
        (256 tokens), so each segment sums to ``len * (f(first) + f(last)) / 2``.
        """
        if n_tokens <= 0:
            return 0.0
        e = self._entry(cfg)
        if e is None:
            return self._fb().decode_s(cfg, context_from, n_tokens)
        total = 0.0
        c, end = context_from, context_from + n_tokens  # contexts c .. end-1
        while c < end:
            # last context with the same kv_cells as c: kv_cells(c) = ceil((c+1)/pad)*pad
            seg_end = min(end, int(kv_cells(c)))  # exclusive
            n = seg_end - c
            total += n * (self.decode_s_per_token(cfg, c)
                          + self.decode_s_per_token(cfg, seg_end - 1)) / 2
            c = seg_end
        return float(total)

    def step_s(self, cfg: EngineConfig, active: int, depth: int, prompt_tokens: int = 0) -> float:
        """From the profile's batched-step fit (``batch_step_s``) where it has one.

        The slot steps are measured at one ``n_gpu_layers`` (the sweep's primary one);
        at another, a step also reads the weights that moved between host and GPU once,
        as a single-sequence decode step does: the difference of the decode fit at the
        two settings is added (on an H200, the output layer on the host doubled a step).
        """
        e = self._entry(cfg)
        if e is None:
            return self._fb().step_s(cfg, active, depth, prompt_tokens)
        doc = e.profile.doc
        fit = doc.get("fits", {}).get(BATCH_QUANTITY)
        if fit is None:
            return super().step_s(cfg, active, depth, prompt_tokens)
        step = predict_step(fit, active, depth, prompt_tokens)
        measured_at = (doc.get("batch", {}).get("settings", {}).get("n_gpu_layers")
                       if isinstance(doc.get("batch"), dict) else None)
        if measured_at is None:
            measured_at = doc.get("settings", {}).get("primary_n_gpu_layers")
        if measured_at is not None and int(measured_at) != cfg.n_gpu_layers:
            at = replace(cfg, n_gpu_layers=int(measured_at))
            step += (self.decode_s_per_token(cfg, depth)
                     - self.decode_s_per_token(at, depth))
        return max(1e-6, step)

    def prefill_s(self, cfg: EngineConfig, prompt_tokens: int) -> float:
        e = self._entry(cfg)
        if e is None:
            return self._fb().prefill_s(cfg, prompt_tokens)
        return max(1e-6, self._p(e, "prefill_s", cfg, prompt_tokens=prompt_tokens))

    def load_s(self, cfg: EngineConfig) -> float:
        e = self._entry(cfg)
        if e is None or not e.profile.has("load_s"):
            return self._fb().load_s(cfg)
        return max(0.0, self._p(e, "load_s", cfg))

    def _load_variant(self, quantity: str, cfg: EngineConfig) -> float:
        e = self._entry(cfg)
        if e is None or not e.profile.has(quantity):
            return self.load_s(cfg)
        return max(0.0, self._p(e, quantity, cfg))

    def first_load_s(self, cfg: EngineConfig) -> float:
        return self._load_variant("first_load_s", cfg)

    def busy_load_s(self, cfg: EngineConfig) -> float:
        return self._load_variant("busy_load_s", cfg)

    def unload_s(self, cfg: EngineConfig) -> float:
        e = self._entry(cfg)
        if e is None:
            return self._fb().unload_s(cfg)
        if e.profile.has("unload_s"):
            return max(0.0, self._p(e, "unload_s", cfg))
        return self._fb().unload_s(cfg)

    def _kv_time(self, quantity: str, cfg: EngineConfig, context_tokens: int) -> float:
        e = self._entry(cfg)
        if e is None or not e.profile.has(quantity):
            fb = self._fb()
            return (fb.kv_save_s if quantity == "kv_save_s" else fb.kv_restore_s)(
                cfg, context_tokens)
        nbytes = self.kv_bytes(cfg, context_tokens)
        return max(0.0, self._p(e, quantity, cfg, context=context_tokens, nbytes=nbytes))

    def kv_save_s(self, cfg: EngineConfig, context_tokens: int) -> float:
        return self._kv_time("kv_save_s", cfg, context_tokens)

    def kv_restore_s(self, cfg: EngineConfig, context_tokens: int) -> float:
        return self._kv_time("kv_restore_s", cfg, context_tokens)

    def busy_kv_s(self, kind: str, cfg: EngineConfig, context_tokens: int) -> float:
        e = self._entry(cfg)
        if e is None or not e.profile.has(f"busy_{kind}_s"):
            return super().busy_kv_s(kind, cfg, context_tokens)
        return self._kv_time(f"busy_{kind}_s", cfg, context_tokens)


def profiled_for_instance(instance: Instance, fallback: CostModel | None) -> ProfiledCostModel:
    """The profiled model over an instance's listed profiles, falling back elsewhere."""
    models = {m.id: m.arch for m in instance.models}
    keys: dict[str, list[str]] = {}
    for m in instance.models:
        ks = [k for k in (m.reference, Path(m.gguf_path).name if m.gguf_path else None) if k]
        keys[m.id] = [model_key(k) if k.lower().endswith(".gguf") else k for k in ks]
    here = host_type_slug()
    devices = {d.id: (d.kind, here if d.kind == "cpu" and d.type == LOCAL_CPU else d.type)
               for d in instance.cluster.devices}
    return ProfiledCostModel([Path(p) for p in instance.profiles], models, devices,
                             fallback=fallback, match_keys=keys)
