"""How fast a *piece* of a request may go on a device, when its phases scale differently.

The bounds measure a request's work in shares of a whole run and take a share ``x`` done
on device ``d`` to need at least ``x p_jd`` seconds there. That holds when every part of
a run is equally much slower on ``d`` than on the fastest device. It does not hold for a
host CPU against a GPU: llama.cpp's prefill (compute-bound) is 85 times slower on the
CPU for a 14B model in the analytic cost model, its decode (memory-bound) 5.5 times. A
request prefilled on the GPU and decoded on the CPU after a ``kv_restore`` (SPEC: how a
request migrates) spends less CPU time on its decode share than that share of its whole
CPU run.

So work is counted in *phase units*: a run's prefill and each of its decode tokens are
worth the least time any device's configurations take for them (``best``). Device ``d``
does at most ``rho_d = max_phase best / t_d`` units per second (``t_d``: its least time
for the phase over its configurations; at most 1), so a piece worth ``u`` units takes it
at least ``u / rho_d`` seconds. A whole request is worth at least ``kappa_f p_jf`` units,
``p_jf`` its run on the device ``f`` where it is fastest and ``kappa_f = min_phase
best / t_f`` (every phase of that run is worth at least ``kappa_f`` of its seconds).
Measured in shares of ``U_j = kappa_f p_jf``, the share ``x`` takes at least
``x U_j / rho_d`` on ``d``, and the request still goes at most one share per ``U_j /
max_d rho_d`` seconds: the bounds' rows hold with ``p_jd`` replaced by
``min(p_jd, U_j / rho_d)`` (:func:`scaled`). Where phases scale alike (GPUs of one
kind, or no two devices) nothing changes: ``rho_d = kappa_d``, ``kappa_f = 1``.

Phases are probed, as the fastest configuration is (``bound_requests._fastest``): prefills of
the shortest prompt and of the longest prompt plus output of the model's requests (every
prompt lies between; a recompute's prefill redoes work and is no progress), decode steps at
``PROBES`` depths between them, each over every candidate split of the device
(``candidates.curves``). Between two
devices whose step times are affine in the depth the ratio is monotone, so its extremes
lie at the probed ends; with several devices the least time may change hands between
probes, so this rests on the probes, as the fastest configuration does.
``tests/test_bound_phases.py`` splits random requests of the study's models over random
devices: every split costs at least one share.

Measured (analytic cost model): a 14B F16 request on an RTX 4090 and its host's CPU, its
prompt and first token on the GPU and the rest on the CPU, came to 0.78 of a share with
whole-run seconds, 1.0002 now.

One rate per device is loose where a device prefills relatively faster than it decodes (a
GPU split with layers on the CPU against the fastest split; an L4 against an RTX 4090): it
would then do all its work at its prefill rate. :class:`TwoPhases` keeps the phases apart
(the swap MIP always; the LP where that matters, ``bound._two_phase_jobs``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

from planner.costmodel.base import CostModel
from planner.domain import EngineConfig, Request

PROBES = 5


@dataclass(frozen=True)
class Phases:
    """A model's probed phases and the least time of each over every device's configs."""
    lengths: tuple[int, ...]  # prefill lengths
    depths: tuple[int, ...]  # decode depths
    best: tuple[float, ...]  # least seconds per phase (prefills, then decode steps)


def phase_times(cost: CostModel, cfgs: list[EngineConfig], lengths: tuple[int, ...],
                depths: tuple[int, ...]) -> list[float]:
    """The least seconds over ``cfgs`` of each phase: prefills, then decode steps."""
    return [min(cost.prefill_s(c, n) for c in cfgs) for n in lengths] + \
        [min(cost.decode_s_per_token(c, k) for c in cfgs) for k in depths]


def model_phases(cost: CostModel, reqs: list[Request],
                 cfgs_by_device: dict[str, list[EngineConfig]]) -> Phases:
    """The phases of ``reqs`` (one model's) with their least times over every device."""
    lo = min(r.prompt_tokens for r in reqs)
    hi = max(r.prompt_tokens + r.output_tokens for r in reqs)
    lengths = tuple(sorted({max(1, lo), max(1, hi)}))
    depths = tuple(sorted({lo + ((hi - lo) * i) // (PROBES - 1) for i in range(PROBES)}))
    best = [min(ts) for ts in zip(*(phase_times(cost, cs, lengths, depths)
                                    for cs in cfgs_by_device.values() if cs), strict=True)]
    return Phases(lengths, depths, tuple(best))


def rho_kappa(cost: CostModel, cfgs: list[EngineConfig], ph: Phases) -> tuple[float, float]:
    """(most, least) phase units per second of a device with configurations ``cfgs``,
    over the phases it spends time on (a phase that takes no time there, e.g. a cost
    model without prefill, neither speeds nor slows it)."""
    ratios = [b / t for b, t in zip(
        ph.best, phase_times(cost, cfgs, ph.lengths, ph.depths), strict=True) if t > 0]
    if not ratios:
        return 1.0, 1.0
    return min(1.0, max(ratios)), min(1.0, min(ratios))


def scaled(pd: dict[str, float], rho: dict[str, float], kappa: dict[str, float]
           ) -> tuple[float, dict[str, float]]:
    """(``U_j``, each device's seconds per share of ``U_j``: ``min(p_jd, U_j / rho_d)``)
    for one request with whole runs ``pd`` per device (module docstring)."""
    if not pd:
        return 0.0, {}
    f = min(pd, key=lambda d: pd[d])
    units = kappa.get(f, 1.0) * pd[f]
    return units, {d: min(v, units / rho[d]) if rho.get(d, 0.0) > 0 else v
                   for d, v in pd.items()}


class TwoPhases:
    """Work in units with the prefill and the decode apart (the swap MIP and the LP): a
    request's prefill is worth ``P_j``, its least prefill of the prompt over every place,
    and is done at each place's own prefill speed; its decode is worth ``D_j = max_o
    kappa_o dec_jo`` and is done at ``rho_o`` units per second (``rho_o``, ``kappa_o``: the
    most and least of the best decode step over the place's, at the model's probed depths;
    a recompute's prefill is no progress). A place that prefills almost as fast as the
    fastest but decodes at half its speed (a GPU split with half the layers on the CPU)
    then gets no discount on its decode, as it would with one rate for both phases."""

    def __init__(self, cost: CostModel, reqs: list[Request],
                 cfgs: Iterable[tuple[str, list[EngineConfig]]]) -> None:
        self.cost = cost
        self.lengths: dict[str, tuple[int, ...]] = {}  # probed prefill lengths
        self.decode: dict[str, Phases] = {}  # the decode steps alone
        self.ratios: dict[tuple[EngineConfig, ...], tuple[float, float]] = {}
        self.fast: dict[tuple[EngineConfig, ...], list[EngineConfig]] = {}
        # by identity (hashing a place's configurations for each of 180,000 requests took
        # half a minute): the lists of :meth:`place`, and what :meth:`_fastest` returns
        self._places: dict[int, tuple[list[EngineConfig], list[int],
                                      dict[int, list[EngineConfig]]]] = {}
        self._fast_of: dict[int, tuple[list[EngineConfig], list[EngineConfig]]] = {}
        self._rk_of: dict[int, tuple[list[EngineConfig], tuple[float, float]]] = {}
        self._canonical: set[int] = set()
        every: dict[str, list[EngineConfig]] = {}
        for m, cs in cfgs:
            every.setdefault(m, []).extend(cs)
        for m in sorted({r.model for r in reqs} & set(every)):
            ph = model_phases(cost, [r for r in reqs if r.model == m], {m: every[m]})
            self.lengths[m] = ph.lengths
            self.decode[m] = Phases((), ph.depths, ph.best[len(ph.lengths):])

    def place(self, cs: list[EngineConfig], total_tokens: int) -> list[EngineConfig]:
        """``cs`` (a place's configurations, a list kept by the caller) less those whose
        context cannot hold ``total_tokens``: the same list object for every request with
        the same configurations left, so that :meth:`seconds` finds its fastest by
        identity."""
        got = self._places.get(id(cs))
        if got is None or got[0] is not cs:
            got = self._places[id(cs)] = (cs, sorted({c.n_ctx for c in cs}), {})
        _, sizes, lists = got
        k = bisect.bisect_left(sizes, total_tokens)  # those of n_ctx >= sizes[k] hold it
        if k not in lists:
            lists[k] = [c for c in cs if total_tokens <= c.n_ctx]
            self._canonical.add(id(lists[k]))
        return lists[k]

    def _rho_kappa(self, model: str, cs: list[EngineConfig]) -> tuple[float, float]:
        hit = self._rk_of.get(id(cs))
        if hit is not None and hit[0] is cs:
            return hit[1]
        key = tuple(cs)
        if key not in self.ratios:
            self.ratios[key] = rho_kappa(self.cost, cs, self.decode[model])
        self._rk_of[id(cs)] = (cs, self.ratios[key])
        return self.ratios[key]

    def _fastest(self, model: str, cs: list[EngineConfig]) -> list[EngineConfig]:
        """Those of ``cs`` that are the fastest of them at a probed prefill length or decode
        depth (as ``bound_requests._fastest``; usually one)."""
        hit = self._fast_of.get(id(cs))
        if hit is not None and hit[0] is cs:
            return hit[1]
        key = tuple(cs)
        if key not in self.fast:
            cost = self.cost
            keep = {min(cs, key=partial(_prefill, cost, n)) for n in self.lengths[model]}
            keep |= {min(cs, key=partial(_step, cost, k)) for k in self.decode[model].depths}
            self.fast[key] = [c for c in cs if c in keep]
        if id(cs) in self._canonical:  # a list of place(): kept, so its id stays its own
            self._fast_of[id(cs)] = (cs, self.fast[key])
        return self.fast[key]

    def seconds(self, r: Request, places: list[list[EngineConfig]]
                ) -> tuple[float, float, list[tuple[float | None, float | None]]]:
        """(``U_j = P_j + D_j``, the prefill's part ``P_j / U_j``, and per place (its
        configurations) the seconds per unit share of prefill work and of decode work
        there; None where that phase has no work)."""
        cost = self.cost
        places = [self._fastest(r.model, cs) for cs in places]
        pre = [min(cost.prefill_s(c, r.prompt_tokens) for c in cs) for cs in places]
        dec = [min(cost.decode_s(c, r.prompt_tokens, r.output_tokens) for c in cs)
               for cs in places]
        rk = [self._rho_kappa(r.model, cs) for cs in places]
        p_units = min(pre)
        d_units = max(k * d for (_, k), d in zip(rk, dec, strict=True))
        total = p_units + d_units
        part = p_units / total if total > 0 else 0.0
        out = [(total * pr / p_units if p_units > 0 else None,
                total / rho if d_units > 0 and rho > 0 else None)
               for pr, (rho, _) in zip(pre, rk, strict=True)]
        return total, part, out


def _prefill(cost: CostModel, n: int, c: EngineConfig) -> float:
    return cost.prefill_s(c, n)


def _step(cost: CostModel, k: int, c: EngineConfig) -> float:
    return cost.decode_s_per_token(c, k)
