"""Lower bounds valid for the instance (any plan the SPEC allows), not only for the
CP-SAT model's restricted candidates. Derivation in ``docs/solver.md``; in short:

Per request ``j`` (model ``m``, arrival ``a_j``):
- ``p_jd``: its fastest run on device ``d`` (over the split pool of (m, d));
  ``p_j = min_d p_jd``. Preemption cannot make it faster: pieces add a
  hand-over or a recompute, and one configuration is the fastest at every
  context (checked at probe contexts, see ``fastest``).
- ``L_md``: the least load time of ``m`` on ``d`` (any split that fits).
  Engines start unloaded, so nothing of ``m`` runs on ``d`` before ``L_md``.
- release ``r_j = max(a_j, min_d L_md)``.

Pooled machine (queueing). Measure work in units of ``p_j`` (request ``j`` needs
``p_j``); device ``d`` advances ``j`` at rate ``p_j / p_jd <= S_d = max_j p_j / p_jd``
and only after ``min_m L_md``. Any plan therefore fits into one preemptive
machine of time-varying speed ``S(t) = sum of S_d over devices already able to
run`` with releases ``r_j`` and the *same* work profile over time, hence the same
completion times and the same mean busy times ``M_j`` (the time-average of
``j``'s processing, weighted by work). On that machine preemptive WSPT
(highest ``w_j / p_j`` first) minimises ``sum w_j M_j`` (Goemans 1996: an
exchange argument on the LP). In the real plan ``j`` runs at rate at most 1
(one device at a time, at most its fastest speed), so ``C_j >= M_j + p_j / 2``.
Hence ``sum w_j C_j >= sum w_j (M_j^WSPT + p_j / 2)``.

The per-request times and the pooled machine are in ``bound_requests.py``.

Interval-indexed LP (``bound_lp.py``): the same relaxation without pooling: each
device class keeps its own speed per request, a request runs on one device at a
time, releases per (request, device); its dual value is a bound.

Engines split over all GPUs of a host (``data.split_config``, offered for a model no
GPU of the host holds) are one more pseudo-device ``split:<host>`` occupying every
GPU of the host. Plans with slot engines (several requests side by side on one
engine) keep only the per-request bound. We report the largest of the pooled,
the per-model pooled, the LP and the per-request bound
``sum w_j (a_j + max(p_j, min_d(L_md + p_jd) - a_j))``.

Makespan: the machine's finishing time (work-conserving) or the latest
per-request bound. Tardiness: the LP above with ``T_j >= C_j - a_j - slo_j``,
``T_j >= 0`` and ``sum w_j T_j`` minimised (any plan's completions give a feasible
point), or the per-request bound where that is larger. SLO attainment: the pooled
machine with due times (``bound_slo.py``), or the per-request count where that is lower.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

from planner.baselines.sim import context_sizes
from planner.costmodel.base import CostModel
from planner.domain import Device, EngineConfig, Instance, Request
from planner.solver.bound_lp import TIME_LIMIT_S, LPJob, lp_bound
from planner.solver.bound_modes import mode_bound
from planner.solver.bound_requests import (  # (fluid_wspt, request_bounds: for callers too)
    SPLIT,
    PhaseRates,
    fluid_wspt,
    members,
    phase_rates,
    pooled_speed,
    request_bounds,
)
from planner.solver.bound_slo import slo_count_bound
from planner.solver.candidates import curves, solver_devices
from planner.solver.data import ProblemData, split_config

#: the LP's work goes in two phases where some option's prefill work is this much faster
#: (per unit share) than its decode work (``_two_phase_jobs``)
PHASED_GAIN = 1.05


_CACHE: list[tuple[Instance, CostModel, int, str, tuple[float, str]]] = []


def lower_bound(instance: Instance, cost: CostModel, data: ProblemData | None,
                objective: str, lp_time_s: float = TIME_LIMIT_S) -> tuple[float, str]:
    """(bound, the bound's name) for ``objective``; see the module docstring. The last
    few answers are kept (the pipeline asks more than once; the LP takes seconds)."""
    slots = max((e.slots for e in data.engines), default=1) if data is not None else 1
    return _cached(instance, cost, slots, objective, lp_time_s)


def _cached(instance: Instance, cost: CostModel, slots: int, objective: str,
            lp_time_s: float) -> tuple[float, str]:
    for inst, cm, k, obj, out in _CACHE:
        if inst is instance and cm is cost and k == slots and obj == objective:
            return out
    out = _lower_bound(instance, cost, slots, objective, lp_time_s)
    _CACHE.append((instance, cost, slots, objective, out))
    del _CACHE[:-4]
    return out


def _slot_configs(instance: Instance, cost: CostModel, slots: int, model: str, dev: str,
                  pool: dict[tuple[str, str], list[EngineConfig]]) -> list[EngineConfig]:
    """Every engine of ``model`` on ``dev`` (``split:<host>`` too) the bound considers:
    the split pool's configurations with 1 to ``slots`` slots."""
    if dev.startswith(SPLIT):
        one = split_config(instance, cost, model, dev[len(SPLIT):],
                           context_sizes(instance)[model])
        base = [one] if one is not None else []
    else:
        base = pool.get((model, dev), [])
    return [EngineConfig(c.model, c.device, c.n_gpu_layers, c.n_ctx, k, c.split)
            for c in base for k in range(1, slots + 1)]


def slot_rates(cost: CostModel, cfgs: list[EngineConfig]) -> tuple[float, float]:
    """``(s, b)`` over engines ``cfgs``: the least seconds one output token of a request
    takes (a one-sequence decode step at an empty cache, or a step of ``c <= n_parallel``
    sequences) and the least device seconds per token (such a step shared by its ``c``
    tokens). Steps are taken to grow with the cache depth and with a joining prompt (the
    fits' coefficients are non-negative), so that every step of a plan costs at least
    its depth-0, prompt-free step."""
    s = b = math.inf
    for cfg in cfgs:
        if cfg.n_parallel == 1:
            one = cost.decode_s_per_token(cfg, 0)
            s, b = min(s, one), min(b, one)
            continue
        for c in range(1, cfg.n_parallel + 1):
            step = cost.step_s(cfg, c, 0)
            s, b = min(s, step), min(b, step / c)
    return s, b


def _slot_times(instance: Instance, cost: CostModel, slots: int,
                pd: dict[str, dict[str, float]]) -> tuple[
        dict[str, dict[str, float]], dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Per request and device, on engines of up to ``slots`` slots: the least duration of
    its output tokens (``p'_jd``), the least device time they take (``w_jd``), and the
    least duration of the whole request (its prompt's step, or prefill, first)."""
    dur: dict[str, dict[str, float]] = {r.id: {} for r in instance.requests}
    work: dict[str, dict[str, float]] = {r.id: {} for r in instance.requests}
    whole: dict[str, dict[str, float]] = {r.id: {} for r in instance.requests}
    keys = sorted({(r.model, d) for r in instance.requests for d in pd[r.id]})
    pool = curves(instance, cost, solver_devices(instance, True))
    for m, d in keys:
        cfgs = _slot_configs(instance, cost, slots, m, d, pool)
        s, b = slot_rates(cost, cfgs)
        prompt: dict[int, float] = {}
        for r in instance.requests:
            if r.model != m or d not in pd[r.id]:
                continue
            if r.prompt_tokens not in prompt:
                prompt[r.prompt_tokens] = min(
                    (cost.prefill_s(c, r.prompt_tokens) if c.n_parallel == 1 else
                     cost.step_s(c, 0, 0, r.prompt_tokens) for c in cfgs), default=0.0)
            # never above the one-slot run (a smaller duration only weakens the bound)
            dur[r.id][d] = min(pd[r.id][d], r.output_tokens * s)
            work[r.id][d] = min(dur[r.id][d], r.output_tokens * b)
            whole[r.id][d] = min(pd[r.id][d], prompt[r.prompt_tokens] + dur[r.id][d])
    return dur, work, whole


def least_responses(reqs: tuple[Request, ...], whole: dict[str, dict[str, float]],
                    load: dict[tuple[str, str], float]) -> dict[str, float]:
    """Per request, the least response time: its fastest run (``whole``: per device), and
    its model's least first load there plus that run (engines start unloaded); inf for a
    request no device runs."""
    out: dict[str, float] = {}
    for r in reqs:
        first = min((load[(r.model, d)] + s for d, s in whole[r.id].items()),
                    default=math.inf)
        out[r.id] = max(min(whole[r.id].values(), default=math.inf), first - r.arrival_s)
    return out


def _lower_bound(instance: Instance, cost: CostModel, slots: int,
                 objective: str, lp_time_s: float = TIME_LIMIT_S) -> tuple[float, str]:
    p, pd, load = request_bounds(instance, cost)
    reqs = instance.requests
    devices = solver_devices(instance, True)
    work: dict[str, dict[str, float]] | None = None
    whole = pd  # per request and device: least duration of the whole request
    if slots > 1:  # the LP's durations: output tokens only (the prompt in `whole`)
        pd, work, whole = _slot_times(instance, cost, slots, pd)
        p = {r.id: min(pd[r.id].values()) if pd[r.id] else math.inf for r in reqs}
    min_resp = least_responses(reqs, whole, load)
    dec: tuple[dict[str, float], dict[str, dict[str, float]], dict[str, float]] | None = None
    rates = phase_rates(instance, cost, load) if slots == 1 else None
    if rates is not None:  # decode work alone after the first possible prefill: also a bound
        dec = decode_only(instance, load, pd, rates)
        for r in reqs:
            if r.id in dec[0]:
                min_resp[r.id] = max(min_resp[r.id], dec[2][r.id] + dec[0][r.id] - r.arrival_s)
    per_request = "per-request bound (fastest run; first load + run, engines start unloaded)"
    if slots > 1:
        per_request = ("per-request bound (fastest token steps on engines of up to "
                       f"{slots} slots; first load + tokens, engines start unloaded)")
    release = {r.id: max(r.arrival_s, min((load[(r.model, d)] for d in pd[r.id]),
                                          default=r.arrival_s)) for r in reqs}
    if objective == "slo_attainment":
        with_slo = [r for r in reqs if r.slo_s is not None]
        if not with_slo:
            return 1.0, per_request
        alone = [r.slo_s is not None and min_resp[r.id] <= r.slo_s + 1e-6 for r in with_slo]
        if work is not None:  # slot engines: no pooled machine (module docstring)
            return sum(alone) / len(with_slo), per_request
        # all requests on every device, and each model's after its own first loads
        machines = [(list(range(len(with_slo))),
                     pooled_speed(instance, devices, with_slo, p, pd, load))]
        for m in sorted({r.model for r in with_slo}):
            mine = [i for i, r in enumerate(with_slo) if r.model == m]
            machines.append((mine, pooled_speed(instance, devices,
                                                [with_slo[i] for i in mine], p, pd, load, m)))
        met = slo_count_bound(
            [p[r.id] for r in with_slo], [release[r.id] for r in with_slo],
            [r.arrival_s + (r.slo_s or 0.0) for r in with_slo], alone, machines, lp_time_s)
        if met < sum(alone):
            return met / len(with_slo), ("pooled-machine deadline bound (work due by each "
                                         "SLO fits the devices' pooled speed after each "
                                         "release; an LP, dual value)")
        return sum(alone) / len(with_slo), per_request
    if objective == "tardiness":
        simple = sum(r.weight * max(0.0, min_resp[r.id] - r.slo_s) for r in reqs
                     if r.slo_s is not None)
        if not any(r.slo_s is not None for r in reqs):
            return simple, per_request
        lp = lp_request_bound(instance, reqs, devices, p, pd, load, release, min_resp,
                              lp_time_s, work, tardiness=True, rates=rates)
        if lp > simple * (1 + 1e-9) + 1e-9:
            return lp, ("interval-indexed LP bound on tardiness (the mean-response LP's "
                        "completions, T_j >= C_j - a_j - slo_j, dual value)")
        return simple, per_request
    wsum = sum(r.weight for r in reqs)
    arr = sum(r.weight * r.arrival_s for r in reqs)
    simple = sum(r.weight * min_resp[r.id] for r in reqs) / wsum
    if work is not None:
        if objective == "makespan":
            return max(r.arrival_s + min_resp[r.id] for r in reqs), per_request
        lp = lp_request_bound(instance, reqs, devices, p, pd, load, release, min_resp,
                              lp_time_s, work)
        if (lp - arr) / wsum > simple:
            return ((lp - arr) / wsum, "interval-indexed LP bound for slot engines (a "
                    "request's tokens at its fastest step, a device's time at the best "
                    "batching, one device at a time, release after arrival and first load, "
                    "dual value)")
        return simple, per_request

    def pooled(group: list[Request], model: str | None) -> tuple[float, float]:
        """sum w (M^WSPT + p/2) and the finishing time, for ``group`` on the machine of
        the devices' pooled speed (for one model: its speeds and its load times); the
        larger of the phase-unit machine's and the decode-unit machine's."""
        capacity = pooled_speed(instance, devices, group, p, pd, load, model)
        wm, fin = fluid_wspt([(release[r.id], p[r.id], r.weight) for r in group], capacity)
        out = (wm + sum(r.weight * p[r.id] / 2 for r in group), fin)
        if dec is not None and all(r.id in dec[0] for r in group):
            pdec, pddec, ready = dec
            capacity = pooled_speed(instance, devices, group, pdec, pddec, load, model)
            wm, fin = fluid_wspt([(ready[r.id], pdec[r.id], r.weight) for r in group],
                                 capacity)
            out = max(out[0], wm + sum(r.weight * pdec[r.id] / 2 for r in group)), \
                max(out[1], fin)
        return out

    total, finish = pooled(list(reqs), None)
    models = sorted({r.model for r in reqs})
    per_model = sum(pooled([r for r in reqs if r.model == m], m)[0] for m in models)
    if objective == "makespan":
        per = max(r.arrival_s + min_resp[r.id] for r in reqs)
        if finish > per:
            return finish, "pooled-machine bound (all work on the devices' pooled speed)"
        return per, per_request
    lp = lp_request_bound(instance, reqs, devices, p, pd, load, release, min_resp, lp_time_s,
                          rates=rates)
    best = max(((total - arr) / wsum, "pooled-machine queueing bound (preemptive WSPT on "
                "the devices' pooled speed with release times, C_j >= M_j + p_j/2)"),
               ((per_model - arr) / wsum, "pooled-machine queueing bound per model (summed "
                "over models: each model's requests on the speed of the devices it fits, "
                "preemptive WSPT with release times, C_j >= M_j + p_j/2)"),
               ((lp - arr) / wsum, "interval-indexed LP bound (requests on unrelated devices, "
                "one device at a time, release after arrival and first load, dual value)"))
    return best if best[0] > simple else (simple, per_request)


def lp_request_bound(instance: Instance, reqs: tuple[Request, ...], devices: list[Device],
                     p: dict[str, float], pd: dict[str, dict[str, float]],
                     load: dict[tuple[str, str], float], release: dict[str, float],
                     min_resp: dict[str, float], time_limit_s: float = TIME_LIMIT_S,
                     work: dict[str, dict[str, float]] | None = None,
                     tardiness: bool = False, rates: PhaseRates | None = None) -> float:
    """``sum w_j C_j`` bound of :func:`planner.solver.bound_lp.lp_bound`: devices with the
    same run and load times (and device times ``work``, for slot engines) form one class.
    ``tardiness``: a bound on ``sum w_j max(0, C_j - a_j - slo_j)`` from the same LP."""
    models = sorted({r.model for r in reqs})
    classes: dict[tuple[tuple[float, ...], ...], list[str]] = {}
    for d in devices:
        key = (tuple(pd[r.id].get(d.id, math.inf) for r in reqs),
               tuple(load.get((m, d.id), math.inf) for m in models),
               tuple(work[r.id].get(d.id, math.inf) for r in reqs) if work else ())
        classes.setdefault(key, []).append(d.id)
    cls_of = {d: i for i, ids in enumerate(classes.values()) for d in ids}
    options = [ids[0] for ids in classes.values()]
    uses: list[dict[int, int]] = [{i: 1} for i in range(len(options))]
    for dev in sorted({k for r in reqs for k in pd[r.id] if k.startswith(SPLIT)}):
        options.append(dev)
        use: dict[int, int] = {}
        for g in members(instance, dev):
            use[cls_of[g]] = use.get(cls_of[g], 0) + 1
        uses.append(use)
    jobs = [LPJob(r.weight, p[r.id], r.arrival_s + min_resp[r.id],
                  tuple(pd[r.id].get(d, math.inf) for d in options),
                  tuple(max(r.arrival_s, load.get((r.model, d), math.inf)) for d in options),
                  tuple(work[r.id].get(d, math.inf) for d in options) if work else None,
                  r.arrival_s + r.slo_s if r.slo_s is not None else None)
            for r in reqs]
    phased = None
    if work is None and rates is not None:  # one request at a time per device: its
        # prefill and decode apart, where that changes a device's rate
        phased = _two_phase_jobs(reqs, options, pd, jobs, rates)
    if any(j.p == math.inf for j in jobs):
        return 0.0
    n_gpu = max(1, sum(1 for d in devices if d.kind == "gpu"))
    horizon = max(release.values()) + sum(p.values()) / n_gpu
    return lp_bound(jobs, [len(ids) for ids in classes.values()], uses, horizon, time_limit_s,
                    tardiness, phased)


def _two_phase_jobs(reqs: tuple[Request, ...], options: list[str],
                    pd: dict[str, dict[str, float]], jobs: list[LPJob], rates: PhaseRates
                    ) -> list[LPJob] | None:
    """``jobs`` with their work in two phases (``bound_phases.TwoPhases``): the prefill at
    each option's own prefill speed, the decode at its best decode rate, each phase at
    most its part of the request. None where no option does prefill work markedly
    faster, for its decode speed, than decode work (a GPU and its host's CPU: the one
    phase's rates, ``request_bounds``, are then as tight, and the LP half the size)."""
    cfgs, two = rates
    out = []
    matters = False
    for r, job in zip(reqs, jobs, strict=True):
        here = [d for d in options if d in pd[r.id] and (r.model, d) in cfgs]
        places = [two.place(cfgs[(r.model, d)], r.total_tokens) for d in here]
        if not here or any(not cs for cs in places):
            out.append(job)
            continue
        units, part, secs = two.seconds(r, places)
        matters = matters or any(a is not None and b is not None and a * PHASED_GAIN < b
                                 for a, b in secs)
        got = dict(zip(here, secs, strict=True))
        pre = tuple(_or_inf(got[d][0]) if d in got else math.inf for d in options)
        dec = tuple(_or_inf(got[d][1]) if d in got else math.inf for d in options)
        if all(x == math.inf for x in dec):
            out.append(job)
            continue
        out.append(replace(job, p=units, times=dec,
                           pre=None if all(x == math.inf for x in pre) else pre, part=part))
    return out if matters else None


def decode_only(instance: Instance, load: dict[tuple[str, str], float],
                pd: dict[str, dict[str, float]], rates: PhaseRates) -> tuple[
        dict[str, float], dict[str, dict[str, float]], dict[str, float]]:
    """Work counted in decode units alone (``bound_phases.TwoPhases``, its prefill left
    out of the work): (per request its least decode seconds at rate 1, seconds per share
    of it per device, and the earliest time any of its decode can start: after its model's
    first load on some device and its prompt's prefill there). Every bound built on these
    holds as the phase-unit ones do; it is tighter where devices are strong at different
    phases (one prefills, another decodes faster), looser where prefills weigh."""
    cfgs, two = rates
    p_dec: dict[str, float] = {}
    pd_dec: dict[str, dict[str, float]] = {}
    ready: dict[str, float] = {}
    for r in instance.requests:
        here = [d for d in pd[r.id] if (r.model, d) in cfgs]
        places = [two.place(cfgs[(r.model, d)], r.total_tokens) for d in here]
        keep = [(d, cs) for d, cs in zip(here, places, strict=True) if cs]
        if not keep:
            continue
        _, part, secs = two.seconds(r, [cs for _, cs in keep])
        row = {d: sd * (1.0 - part) for (d, _), (_, sd) in zip(keep, secs, strict=True)
               if sd is not None}
        if not row:
            continue
        pd_dec[r.id] = row
        p_dec[r.id] = min(row.values())
        ready[r.id] = min(max(r.arrival_s, load[(r.model, d)]) + (sp * part if sp else 0.0)
                          for (d, _), (sp, _) in zip(keep, secs, strict=True))
    return p_dec, pd_dec, ready


def _or_inf(x: float | None) -> float:
    return math.inf if x is None else x


def slot_plan_bound(instance: Instance, cost: CostModel, objective: str, slots: int,
                    lp_time_s: float = TIME_LIMIT_S) -> tuple[float, str]:
    """The bound for plans whose engines have up to ``slots`` slots, as ``lower_bound``
    gives it for such data (the one-slot bounds assume one request at a time per device)."""
    return _cached(instance, cost, max(2, slots), objective, lp_time_s)


SWAP_BOUND_NAME = ("swap-aware bound on one GPU (the interval-indexed LP with the GPU's "
                   "engines in memory groups that never fit together and, per window, which "
                   "groups run: a MIP, HiGHS's dual bound)")


def swap_bound(instance: Instance, cost: CostModel, objective: str,
               time_limit_s: float) -> float:
    """The weighted mean response bound of :func:`planner.solver.bound_modes.mode_bound`
    (an instance with one GPU, weighted mean response; 0.0 where it does not apply)."""
    if objective != "mean_response" or not instance.requests or \
            sum(1 for d in instance.cluster.devices if d.kind == "gpu") != 1:
        return 0.0
    started = time.perf_counter()
    _, pd, load = request_bounds(instance, cost)
    least = least_responses(instance.requests, pd, load)
    if any(math.isinf(v) for v in least.values()):
        return 0.0
    p_dec, _, ready = decode_only(instance, load, pd, phase_rates(instance, cost, load))
    for r in instance.requests:
        if r.id in p_dec:
            least[r.id] = max(least[r.id], ready[r.id] + p_dec[r.id] - r.arrival_s)
    done_by = {r.id: r.arrival_s + least[r.id] for r in instance.requests}
    value = mode_bound(instance, cost, pd, load, done_by,
                       time_limit_s - (time.perf_counter() - started))
    if value <= 0:
        return 0.0
    wsum = sum(r.weight for r in instance.requests)
    return (value - sum(r.weight * r.arrival_s for r in instance.requests)) / wsum


def gap_of(obj: float, bound: float, objective: str) -> float:
    if objective == "slo_attainment":  # maximised; bound is an upper bound
        return max(0.0, (bound - obj) / bound) if bound > 0 else 0.0
    return max(0.0, (obj - bound) / abs(obj)) if obj else 0.0


#: a plan within this relative gap of a bound valid for the instance is optimal (the rest
#: is floating point: the plan and the bound come from the same cost model)
OPTIMAL_GAP = 1e-6


def meets_bound(obj: float, bound: float, objective: str) -> bool:
    """Whether a plan of objective ``obj`` reaches ``bound`` (valid for the instance): no
    plan can do better, so a search for one is time lost."""
    return gap_of(obj, bound, objective) <= OPTIMAL_GAP
