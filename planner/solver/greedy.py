"""A list schedule that starts the CP-SAT planner on overloaded instances: Smith's rule
with model loads.

When a device falls free, every waiting request is scored by its weight per second
of device time it would take there: its run on the engine already resident, or
its run plus the load (and any evictions) for a model that is not; a load counts
for every waiting request of that model (they share it: the ratio is their total
weight over their total time). The best goes first. This is WSPT (Smith's rule,
optimal on one machine without loads) with the set-up cost of a swap, so
requests batch per model where swaps are dear and the heavy short ones overtake.
It emits a plain plan through the baselines' simulator (one timeline per
device, never preempting), which the checker accepts like theirs.

With ``earliest_completion``, a device free at t leaves a request that another
device would finish sooner (from when that one falls free: the run on its resident
engine of the model, or the model's load and run there) to that device, as list
schedulers for unrelated machines do (earliest completion time): on heterogeneous
GPUs this keeps a 70B request off the slow GPU that happens to fall free first.
Which of the two plans is better depends on the workload; :func:`start_plan`
builds both and keeps the better.

With an eviction charge, a load that evicts an engine whose model has requests waiting
also pays for the reload it makes due (a multiple of that engine's load seconds, per
engine or per waiting request): without it, on a long bursty trace the rule swapped back
and forth (923 loads on 2,919 requests, about 13 % of every GPU's time). :func:`start_plan`
tries a range of charges after the plain rules and keeps a charged plan where it is
clearly better.

With ``cpus``, the hosts' CPUs serve beside the GPUs (:class:`_Offload`): the GPUs'
rule alone never sends a request to a CPU (4-5 times slower), yet on a saturated trace
the GPUs' backlog grows while the CPUs sit idle. A CPU that falls free takes the waiting
request whose completion it would bring forward most, against an estimate of when the
GPUs' queue would finish it, counting the wait it takes off the requests behind it.
:func:`start_plan` builds every rule both ways where the cluster has GPUs and host CPUs.
"""

from __future__ import annotations

import bisect
import heapq
import math
import time
from collections.abc import Callable

import numpy as np

from planner.baselines.sim import DeviceState, LoadOption, Resident, Simulator
from planner.costmodel.base import CostModel
from planner.domain import EngineConfig, Instance, Request, Schedule
from planner.metrics import compute_metrics, objective_key

Choice = tuple[float, Request, Resident | None]


#: the eviction charges :func:`start_plan` tries after the plain rules, as (weight, per
#: waiting request): which pays depends on how loaded the devices are and how many
#: requests wait behind a reload, and the plans move with the weight in no regular way, so
#: a geometric range of each kind, the most useful first (on a 2,919-request trace with
#: 923 loads under the plain rule, (32, per engine) and (2, per request) halve the loads
#: and the weighted mean response; on a light one-GPU workload every weight from 8 per
#: engine up gives the same plan)
EVICTION_CHARGES: tuple[tuple[float, bool], ...] = (
    (8.0, False), (2.0, True), (32.0, False), (8.0, True), (2.0, False), (1.0, True),
    (16.0, False), (4.0, True), (64.0, False), (0.5, True), (4.0, False))
#: a charged plan replaces the plain rules' only where it is better by this share, and
#: past a fifth of their time the charged runs go on only where one is: on an overloaded
#: trace of 18,015 requests the best charge gained 0.2 % (11,270.3 -> 11,250.7 s), and its
#: plan polished in a 60 s solve to 11,084.7 s against the plain plan's 10,961.8 s (a
#: local search's end is not ordered by its start's value where starts differ so little)
CHARGES_GAIN = 0.01


def start_plan(instance: Instance, cost: CostModel, objective: str,
               deadline: float = math.inf, variants_by: float | None = None,
               cpus: bool = True) -> Schedule:
    """The best (by ``objective``) of the list schedules: the plain and the filtered rule,
    then each again with each of :data:`EVICTION_CHARGES` while ``variants_by`` (default:
    ``deadline``) allows. RuntimeError when none can serve every request, or none is done
    by ``deadline`` (``time.perf_counter()``). The plain rule costs about a second per
    10,000 requests; the filtered one weighs every waiting request at each decision,
    minutes on an overloaded trace of thousands, and gives up once its pace shows it
    would not end in time. A rule is not run again where its last run would not fit in
    the time left. A charged plan is kept only where it beats the plain rules' by
    :data:`CHARGES_GAIN`, and the charged runs stop after a fifth of their time unless
    one does; they go rule by rule, the rules whose plain plans were best first.
    ``cpus``: each rule also with the hosts' CPUs beside the GPUs (:class:`_Offload`),
    where the cluster has both."""
    by = deadline if variants_by is None else min(deadline, variants_by)
    took: dict[tuple[bool, bool], float] = {}  # rule (filtered?, CPUs?) -> its last run's s
    best: tuple[tuple[float, ...], Schedule] | None = None
    plain: tuple[tuple[float, ...], Schedule] | None = None  # the plain rules' best
    since = 0.0  # when the charged runs began
    # (filtered?, CPUs?) of each rule, the plain one alone first (a second per 10,000
    # requests, so that there is a plan); where the cluster has GPUs and host CPUs, each
    # also with the CPUs beside the GPUs
    rules: list[tuple[bool, bool]] = [(False, False), (True, False)]
    if cpus and {d.kind for d in instance.cluster.devices} == {"gpu", "cpu"}:
        rules[1:1] = [(False, True), (True, True)]
    ranked: dict[tuple[bool, bool], tuple[float, ...]] = {}  # rule -> its plain plan's key

    def gained() -> bool:
        assert best is not None and plain is not None
        return best[0] < tuple((1.0 - CHARGES_GAIN) * k for k in plain[0])

    def run(rule: tuple[bool, bool], weight: float, per_request: bool, until: float
            ) -> tuple[float, ...] | None:
        nonlocal best
        began = time.perf_counter()
        if began + took.get(rule, 0.0) > until:
            return None
        try:
            plan = smith_with_loads(instance, cost, earliest_completion=rule[0],
                                    deadline=until, evict_weight=weight,
                                    per_request=per_request, cpus=rule[1])
        except RuntimeError:
            took[rule] = math.inf  # out of time, or nothing serves: not again
            return None
        took[rule] = time.perf_counter() - began
        key = objective_key(compute_metrics(instance, plan.actions), objective)
        if best is None or key < best[0]:
            best = (key, plan)
        return key

    for rule in rules:
        key = run(rule, 0.0, False, deadline)
        if key is not None:
            ranked[rule] = key
    # then the charges, rule by rule, the rules whose plain plans were best first (with
    # the hosts' CPUs on a saturated trace, without them where the CPUs do not pay), so
    # that the charges of the likeliest rule are tried within the time
    for rule in sorted(ranked, key=ranked.__getitem__):
        for weight, per_request in EVICTION_CHARGES:
            began = time.perf_counter()
            if best is not None:
                if plain is None:
                    plain, since = best, began
                if began - since > (by - since) / 5 and not gained():
                    return plain[1]
            run(rule, weight, per_request, by)
    if best is None:
        raise RuntimeError("no device can serve the waiting requests, or no time left")
    return best[1] if plain is None or gained() else plain[1]


def smith_with_loads(instance: Instance, cost: CostModel,
                     earliest_completion: bool = False,
                     deadline: float = math.inf, evict_weight: float = 0.0,
                     per_request: bool = False, cpus: bool = False) -> Schedule:
    """Smith's rule with model loads; RuntimeError when some request cannot be served or
    ``deadline`` passes. The plain rule keeps its sums per model and configuration
    (:func:`_smith_pooled`: a decision costs the models, not the backlog); the filtered
    one weighs each waiting request against the other devices (:func:`_smith_scan`).

    ``evict_weight``: a load that evicts an engine whose model has requests waiting is
    charged that many times the evicted engine's load seconds beside its own (the reload
    the eviction makes due, which delays the device and the backlog behind it); with
    ``per_request``, that many times for each of those waiting requests.

    ``cpus``: the hosts' CPUs serve beside the GPUs (:class:`_Offload`)."""
    if earliest_completion:
        return _smith_scan(instance, cost, True, deadline, evict_weight, per_request, cpus)
    return _smith_pooled(instance, cost, deadline, evict_weight, per_request, cpus)


def _simulator(instance: Instance, cost: CostModel, cpus: bool, order: list[Request]
               ) -> tuple[Simulator, _Offload | None]:
    """The rule's simulator, with the hosts' CPUs beside the GPUs where ``cpus`` asks
    and the cluster has both (and the offload rule for them; ``order``: the requests by
    arrival)."""
    gpus = [d for d in instance.cluster.devices if d.kind == "gpu"]
    hosts = [d for d in instance.cluster.devices if d.kind == "cpu"]
    if not (cpus and gpus and hosts):
        return Simulator(instance, cost), None
    sim = Simulator(instance, cost, devices=gpus + hosts)
    return sim, _Offload(sim, cost, order)


def _pick_device(sim: Simulator) -> DeviceState:
    """The device that falls free first (GPUs before host CPUs at a tie: a CPU decides
    after every GPU free at the same time has)."""
    return min(sim.devices.values(),
               key=lambda d: (d.free_at, d.device.kind == "cpu", d.device.id))


def _later(sim: Simulator, t: float, arrivals: list[float], gpus_only: bool) -> list[float]:
    """When something next happens after ``t`` that a waiting device waits for: another
    device falls free (with host CPUs serving beside the GPUs, a GPU: a CPU's actions never
    give anyone work, so everyone waits for the GPUs and arrivals only), or the next
    request arrives (``arrivals``: sorted)."""
    out = [d.free_at for d in sim.devices.values()
           if d.free_at > t and not (gpus_only and d.device.kind != "gpu")]
    k = bisect.bisect_right(arrivals, t)
    return out + arrivals[k:k + 1]


class _Offload:
    """Host CPUs beside the GPUs in a list schedule. A request run on a host CPU takes
    4-5 times its GPU time there (more with a long prompt), so the GPUs' rule never sends
    one; but where the GPUs are saturated the CPUs' extra throughput shortens every wait.
    When a CPU falls free, each waiting request is weighed by what sending it there would
    save: its own completion on the GPUs, estimated as the GPUs' backlog ahead of it
    (the requests of more weight per GPU second, and what the GPUs are busy with) shared
    by the GPUs plus its run, against its completion on the CPU (its model's CPU engine
    loaded if need be); plus the weight behind it times its GPU seconds shared by the GPUs
    (the wait it takes off them). The request of most saving per CPU second goes, if it
    saves anything. Loads and swaps are left out of the estimate, which only makes the
    GPUs look faster (the rule sends fewer). A CPU engine is loaded only where its host
    keeps room for the largest engine each of its GPUs may load. Requests are known by their
    arrival order (``order``); their times are kept in arrays, filled as they are first
    weighed, so that a decision over a backlog of thousands is a few array operations."""

    def __init__(self, sim: Simulator, cost: CostModel, order: list[Request]) -> None:
        self.sim, self.cost, self.order = sim, cost, order
        self.gpus = [d for d in sim.devices.values() if d.device.kind == "gpu"]
        n = len(order)
        self.weight = np.array([r.weight for r in order], dtype=float)
        self.gpu_s = np.full(n, np.nan)  # least run seconds on a GPU (inf: none fits)
        self.cpu_s: dict[str, np.ndarray] = {}  # CPU device -> run seconds there
        models = sorted({r.model for r in order})
        self.model_ids = {m: k for k, m in enumerate(models)}
        self.model = np.array([self.model_ids[r.model] for r in order], dtype=int)
        self.models = models
        self.reserve: dict[str, float] = {}  # host -> bytes its GPUs' engines may need
        for g in self.gpus:
            need = max((cost.host_bytes(c) for m in models
                        if (c := sim.fit_config(m, g.device.id)) is not None), default=0)
            self.reserve[g.device.host] = self.reserve.get(g.device.host, 0.0) + need

    def _fill(self, idx: np.ndarray, ds: DeviceState) -> np.ndarray:
        """GPU and ``ds`` run seconds of the requests ``idx`` (computed where missing);
        returns the latter."""
        cpu = self.cpu_s.setdefault(ds.device.id, np.full(len(self.order), np.nan))
        for i in idx[np.isnan(self.gpu_s[idx])]:
            r = self.order[i]
            best = math.inf
            for g in self.gpus:
                cfg = self.sim.fit_config(r.model, g.device.id)
                if cfg is not None:
                    best = min(best, self.cost.run_s(cfg, r.prompt_tokens, 0,
                                                     r.output_tokens))
            self.gpu_s[i] = best
        for i in idx[np.isnan(cpu[idx])]:
            r = self.order[i]
            cfg = self.sim.fit_config(r.model, ds.device.id)
            cpu[i] = math.inf if cfg is None else \
                self.cost.run_s(cfg, r.prompt_tokens, 0, r.output_tokens)
        return cpu[idx]

    def _load(self, model: str, ds: DeviceState, t: float) -> LoadOption | None:
        opt = self.sim.plan_load(model, ds.device.id, t)
        if opt is None:
            return None
        host = ds.device.host
        peak = self.sim.host_peak_from(host, t, {})
        if peak + self.cost.host_bytes(opt.cfg) + self.reserve.get(host, 0.0) > \
                self.sim.inst.cluster.host(host).memory_bytes:
            return None
        return opt

    def pick(self, ds: DeviceState, t: float, ready: list[int]
             ) -> tuple[float, int, Resident | None] | None:
        """(saving per CPU second, arrival order of the request, resident engine or None:
        load its model) for the CPU ``ds`` free at ``t`` over the ``ready`` requests (by
        arrival order); None where none saves anything there."""
        idx = np.array(ready, dtype=int)  # (the GPUs' order below breaks ties by it)
        if not len(idx):
            return None
        cpu = self._fill(idx, ds)
        p = self.gpu_s[idx]
        w = self.weight[idx]
        finite = np.isfinite(p)
        # the GPUs' order: most weight per GPU second first, then first to arrive
        q = np.lexsort((idx, -(w / np.maximum(1e-9, np.where(finite, p, 1.0)))))
        idx, cpu, p, w, finite = idx[q], cpu[q], p[q], w[q], finite[q]
        n = len(self.gpus)
        busy = math.fsum(max(0.0, g.free_at - t) for g in self.gpus)
        pf = np.where(finite, p, 0.0)
        ahead = busy + np.cumsum(pf) - pf  # GPU seconds before each, in that order
        wf = np.where(finite, w, 0.0)
        behind = wf.sum() - np.cumsum(wf)
        gpu_end = np.where(finite, t + ahead / n + pf, math.inf)
        relief = np.maximum(0.0, behind) * pf / n
        # when each could start here: now on a resident engine, else after its load
        start = np.full(len(idx), math.inf)
        here = {x.engine.model: x for x in ds.resident}
        for m in np.unique(self.model[idx]):
            name = self.models[m]
            if name in here:
                at = t
            else:
                opt = self._load(name, ds, t)
                at = math.inf if opt is None else opt.ready_at
            start[self.model[idx] == m] = at
        with np.errstate(invalid="ignore"):
            saving = np.where(finite, w * (gpu_end - start - cpu) + relief, math.inf)
            score = saving / np.maximum(1e-9, start - t + cpu)
        ok = np.isfinite(start) & np.isfinite(cpu) & (saving > 0.0)
        if not ok.any():
            return None
        k = int(np.argmax(np.where(ok, score, -math.inf)))
        return float(score[k]), int(idx[k]), here.get(self.order[idx[k]].model)


#: every float is an integer multiple of 2**-1074: sums kept as such integers are exact,
#: and ``n / _ULP`` rounds them once, as ``math.fsum`` does (so that the pooled rule's
#: sums equal the scan's bit for bit, whatever order requests came and went in: two
#: models with one identical request each tie exactly, and the first must win)
_ULP = 1 << 1074


def _exact(x: float) -> int:
    num, den = x.as_integer_ratio()
    return num * (_ULP // den)


class _Pool:
    """The ready requests of one model as one engine configuration runs them: a heap by
    weight per second (lazy: entries of requests already run stay until they surface)
    and the exact sums of their weights and run seconds."""

    __slots__ = ("heap", "runs", "seconds", "weight")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int]] = []  # (-weight per second, arrival order)
        self.weight = 0  # in units of 2**-1074, as the seconds
        self.seconds = 0
        self.runs: dict[int, float] = {}  # arrival order -> run seconds, while ready

    def add(self, i: int, r: Request, seconds: float) -> None:
        heapq.heappush(self.heap, (-(r.weight / max(1e-9, seconds)), i))
        self.runs[i] = seconds
        self.weight += _exact(r.weight)
        self.seconds += _exact(seconds)

    def remove(self, i: int, r: Request) -> None:
        self.seconds -= _exact(self.runs.pop(i))
        self.weight -= _exact(r.weight)

    def sums(self) -> tuple[float, float]:
        """The ready requests' weight and run seconds, each rounded once."""
        return self.weight / _ULP, self.seconds / _ULP

    def top(self) -> tuple[float, int]:
        """(weight per second, arrival order) of the best ready request (ties: the first
        to arrive, as a scan in arrival order keeps the first maximum)."""
        while self.heap[0][1] not in self.runs:
            heapq.heappop(self.heap)
        score, i = self.heap[0]
        return -score, i


def _smith_pooled(instance: Instance, cost: CostModel, deadline: float,
                  evict_weight: float = 0.0, per_request: bool = False,
                  cpus: bool = False) -> Schedule:
    """The plain rule with the same decisions as :func:`_smith_scan` without the filter,
    kept incrementally. Per model: its ready requests, the first of them (the scan's
    order of models, which breaks ties) and a :class:`_Pool` per engine configuration
    it was weighed on; a request that arrives joins its model's pools, one that runs
    leaves them. A decision then asks each model with ready requests for its pool's
    best request (resident engine) or sums (a load), as the scan computes them."""
    order = sorted(instance.requests, key=lambda r: (r.arrival_s, r.id))
    sim, off = _simulator(instance, cost, cpus, order)
    arrivals = sorted({r.arrival_s for r in order})
    ready: dict[str, dict[int, Request]] = {}  # model -> arrival order -> ready request
    firsts: dict[str, list[int]] = {}  # model -> heap of arrival orders (lazy)
    pools: dict[str, dict[EngineConfig, _Pool]] = {}

    def pool(model: str, cfg: EngineConfig) -> _Pool:
        p = pools.setdefault(model, {}).get(cfg)
        if p is None:
            p = pools[model][cfg] = _Pool()
            for i, r in ready[model].items():
                p.add(i, r, cost.run_s(cfg, r.prompt_tokens, 0, r.output_tokens))
        return p

    nxt, left = 0, len(order)
    started, checked = time.perf_counter(), 0
    while left:
        now = time.perf_counter()
        if now > deadline:
            raise RuntimeError("the start plan ran out of time")
        done = len(order) - left
        if off is not None and done >= checked + max(256, len(order) // 16):
            # at its pace so far it would not finish by the deadline (each of the host
            # CPUs' decisions weighs the backlog; without them the rule's pace is even, and
            # it runs first, so that there is a start plan): its time goes to the search
            checked = done
            if started + (now - started) * len(order) / done > deadline:
                raise RuntimeError("the start plan would run out of time")
        ds = _pick_device(sim)
        t = ds.free_at  # never falls: only the earliest device's free time moves, later
        if t == math.inf:
            raise RuntimeError("no device can serve the waiting requests")
        while nxt < len(order) and order[nxt].arrival_s <= t + 1e-9:
            r = order[nxt]
            ready.setdefault(r.model, {})[nxt] = r
            heapq.heappush(firsts.setdefault(r.model, []), nxt)
            for cfg, p in pools.get(r.model, {}).items():
                p.add(nxt, r, cost.run_s(cfg, r.prompt_tokens, 0, r.output_tokens))
            nxt += 1
        models = []
        for m, reqs in ready.items():
            if reqs:
                h = firsts[m]
                while h[0] not in reqs:
                    heapq.heappop(h)
                models.append((h[0], m))
        if not models:
            ds.free_at = arrivals[bisect.bisect_right(arrivals, t)]
            continue
        if off is not None and ds.device.kind == "cpu":
            pick = off.pick(ds, t, [i for m in ready.values() for i in m])
            if pick is None:  # wait for a GPU or an arrival
                ds.free_at = min(_later(sim, t, arrivals, True), default=math.inf)
                continue
            _score, i, res = pick
            req = order[i]
        else:
            choice = _pooled_choice(sim, ds, t, models, ready, pool, evict_weight,
                                    per_request, cost)
            if choice is None:  # nothing this device can take: wait for another to act
                later = _later(sim, t, arrivals, off is not None)
                if not later:
                    raise RuntimeError("no device can serve the waiting requests")
                ds.free_at = min(later)
                continue
            i, res = choice
            req = order[i]
        if res is None:
            opt = sim.plan_load(req.model, ds.device.id, t)
            assert opt is not None
            res = sim.apply_load(opt)
        sim.run(res, req, t)
        del ready[req.model][i]
        for p in pools.get(req.model, {}).values():
            p.remove(i, req)
        left -= 1
    return sim.schedule()


def _pooled_choice(sim: Simulator, ds: DeviceState, t: float, models: list[tuple[int, str]],
                   ready: dict[str, dict[int, Request]],
                   pool: Callable[[str, EngineConfig], _Pool], evict_weight: float,
                   per_request: bool, cost: CostModel) -> tuple[int, Resident | None] | None:
    """The plain rule's choice for the GPU ``ds`` free at ``t``: (arrival order of the
    request, its resident engine or None: load its model), None where it can take none."""
    models.sort()
    here = {x.engine.model: x for x in ds.resident}
    best: tuple[float, int, Resident | None] | None = None
    for _first, m in models:
        res = here.get(m)
        if res is not None:
            score, i = pool(m, res.engine.config).top()
        else:
            opt = sim.plan_load(m, ds.device.id, t)
            if opt is None:
                continue
            p = pool(m, opt.cfg)
            weight, seconds = p.sums()
            if evict_weight and opt.evict:
                seconds += evict_weight * _reloads(
                    cost, opt, lambda name: len(ready.get(name, ())), per_request)
            score = weight / max(1e-9, opt.ready_at - t + seconds)
            i = p.top()[1]
        if best is None or score > best[0]:
            best = (score, i, res)
    return None if best is None else (best[1], best[2])


def _smith_scan(instance: Instance, cost: CostModel, earliest_completion: bool,
                deadline: float, evict_weight: float = 0.0,
                per_request: bool = False, cpus: bool = False) -> Schedule:
    """Smith's rule with model loads weighing every waiting request at each decision
    (quadratic in the backlog; the filtered rule needs it, the plain one is
    :func:`_smith_pooled`)."""
    waiting = sorted(instance.requests, key=lambda r: (r.arrival_s, r.id))
    sim, off = _simulator(instance, cost, cpus, waiting[:])
    index = {r.id: i for i, r in enumerate(waiting)}
    arrivals = sorted({r.arrival_s for r in waiting})
    cold: dict[tuple[str, str], float] = {}
    runs: dict[tuple[str, EngineConfig], float] = {}  # (request, engine) -> run seconds
    started, n = time.perf_counter(), len(waiting)
    charge = (evict_weight, per_request)
    while waiting:
        now, done = time.perf_counter(), n - len(waiting)
        if now > deadline:
            raise RuntimeError("the start plan ran out of time")
        if done >= 256 and done % 256 == 0 and started + (now - started) * n / done > deadline:
            # at its pace so far it would not finish by the deadline (on an overloaded
            # trace it slows as the backlog grows): give its time back to the search
            raise RuntimeError("the start plan would run out of time")
        ds = _pick_device(sim)
        t = ds.free_at
        if t == math.inf:
            raise RuntimeError("no device can serve the waiting requests")
        ready = [r for r in waiting if r.arrival_s <= t + 1e-9]
        if not ready:
            ds.free_at = min(a for a in arrivals if a > t)
            continue
        best: Choice | None
        if off is not None and ds.device.kind == "cpu":
            pick = off.pick(ds, t, [index[r.id] for r in ready])
            if pick is None:  # wait for a GPU or an arrival
                ds.free_at = min(_later(sim, t, arrivals, True), default=math.inf)
                continue
            best = (pick[0], off.order[pick[1]], pick[2])
        else:
            best = _choose(sim, cost, ds, t, ready, earliest_completion, cold, runs, charge,
                           off is not None)
        if best is None:  # nothing this device should take: wait for another to act
            later = _later(sim, t, arrivals, off is not None)
            if later:
                ds.free_at = min(later)
                continue
            # nothing changes later: this device takes what it can after all
            best = _choose(sim, cost, ds, t, ready, False, cold, runs, charge,
                           off is not None) if earliest_completion else None
            if best is None:
                raise RuntimeError("no device can serve the waiting requests")
        _score, req, res = best
        if res is None:
            opt = sim.plan_load(req.model, ds.device.id, t)
            assert opt is not None
            res = sim.apply_load(opt)
        sim.run(res, req, t)
        waiting.remove(req)
    return sim.schedule()


def _choose(sim: Simulator, cost: CostModel, ds: DeviceState, t: float,
            ready: list[Request], earliest_completion: bool,
            cold: dict[tuple[str, str], float],
            memo: dict[tuple[str, EngineConfig], float],
            charge: tuple[float, bool] = (0.0, False),
            gpus_only: bool = False) -> Choice | None:
    """The best (score, request, resident engine or None: load its model) for ``ds``.
    ``memo``: run seconds per (request, engine configuration), filled as asked (each
    decision weighs every waiting request again). ``gpus_only``: the filter weighs the
    other GPUs only (host CPUs serving beside them take what :class:`_Offload` sends)."""
    here = {r.engine.model: r for r in ds.resident}
    # the other devices as this decision sees them: (state, free from, resident by model)
    others = [(o, max(o.free_at, t), {x.engine.model: x for x in reversed(o.resident)})
              for o in sim.devices.values() if o is not ds
              and not (gpus_only and o.device.kind == "cpu")] if earliest_completion else []
    best: Choice | None = None
    by_model: dict[str, list[Request]] = {}
    for r in ready:
        by_model.setdefault(r.model, []).append(r)
    for model, reqs in by_model.items():
        res = here.get(model)
        if res is not None:
            for r in reqs:
                k = (r.id, res.engine.config)
                if k not in memo:
                    memo[k] = sim.run_time(res, r)
                dur = memo[k]
                if earliest_completion and t + dur > _elsewhere(sim, cost, others, r, cold):
                    continue
                score = r.weight / max(1e-9, dur)
                if best is None or score > best[0]:
                    best = (score, r, res)
            continue
        opt = sim.plan_load(model, ds.device.id, t)
        if opt is None:
            continue
        runs = []
        for r in reqs:
            k = (r.id, opt.cfg)
            if k not in memo:
                memo[k] = cost.run_s(opt.cfg, r.prompt_tokens, 0, r.output_tokens)
            runs.append((r, memo[k]))
        if earliest_completion:
            runs = [(r, d) for r, d in runs
                    if opt.ready_at + d <= _elsewhere(sim, cost, others, r, cold)]
            if not runs:
                continue
        seconds = math.fsum(d for _, d in runs)
        if charge[0] and opt.evict:
            seconds += charge[0] * _reloads(
                cost, opt, lambda name: len(by_model.get(name, ())), charge[1])
        score = math.fsum(r.weight for r, _ in runs) / max(1e-9, opt.ready_at - t + seconds)
        if best is None or score > best[0]:
            first = max(runs, key=lambda x: x[0].weight / x[1])[0]
            best = (score, first, None)
    return best


def _reloads(cost: CostModel, opt: LoadOption, waiting: Callable[[str], int],
             per_request: bool) -> float:
    """Load seconds of the engines ``opt`` evicts whose models have requests waiting
    (``waiting``: model -> how many): the reloads the eviction makes due; with
    ``per_request``, each counted once per waiting request."""
    out = []
    for x in opt.evict:
        n = waiting(x.engine.model)
        if n:
            out.append(cost.load_s(x.engine.config) * (n if per_request else 1))
    return math.fsum(out)


def _elsewhere(sim: Simulator, cost: CostModel,
               others: list[tuple[DeviceState, float, dict[str, Resident]]], r: Request,
               cold: dict[tuple[str, str], float]) -> float:
    """Earliest completion of ``r`` on another device (``others``: each with when it falls
    free, not before now, and its resident engines by model), started when that one falls
    free: on its resident engine of the model, else after loading it (``cold``, filled as
    asked: (request, device) -> load and run seconds there, and (request, engine) -> run
    seconds on that resident engine)."""
    out = math.inf
    for other, free, resident in others:
        res = resident.get(r.model)
        if res is not None:
            key = (r.id, res.engine.id)
            if key not in cold:
                cold[key] = sim.run_time(res, r)
            out = min(out, free + cold[key])
            continue
        key = (r.id, other.device.id)
        if key not in cold:
            cfg = sim.fit_config(r.model, other.device.id)
            cold[key] = math.inf if cfg is None else \
                cost.load_s(cfg) + cost.run_s(cfg, r.prompt_tokens, 0, r.output_tokens)
        out = min(out, free + cold[key])
    return out
