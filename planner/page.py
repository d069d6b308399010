"""A plan as one self-contained HTML page: inline SVG, CSS and a few lines of JS.

The page shows, per device, a Gantt chart of the plan (compute lane: runs;
transfer lane: loads, unloads, KV saves and restores) and its memory over time
against the device's capacity; the plan's metrics beside the baselines'; the
baselines' schedules on the same time scale where they are given; and, for a
replay report, predicted against measured bars. Nothing is fetched from
elsewhere: the file opens offline.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from planner.domain import Instance
from planner.metrics import METRIC_LABELS, fmt_value, headroom

COLORS = {"load": "#4c72b0", "unload": "#8c8c8c", "run": "#55a868", "kv_save": "#c44e52",
          "kv_restore": "#dd8452"}
LEFT, WIDTH, ROW = 170, 1000, 16

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th:first-child,td:first-child{text-align:left}th.plan{background:#e8f3ea}
.muted{color:#666}.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
svg text{font:11px system-ui,sans-serif;fill:#333}rect.bar{stroke:none}
rect.bar.hl{stroke:#000;stroke-width:1.5}.err{color:#a00}
"""

JS = """
(function(){
  var bars=document.querySelectorAll('rect[data-req]');
  function mark(req,on){bars.forEach(function(b){
    if(b.getAttribute('data-req')===req){b.classList.toggle('hl',on);}});}
  bars.forEach(function(b){
    b.addEventListener('mouseenter',function(){mark(b.getAttribute('data-req'),true);});
    b.addEventListener('mouseleave',function(){mark(b.getAttribute('data-req'),false);});});
  document.body.setAttribute('data-ready','1');
})();
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _lane(kind: str) -> str:
    return "compute" if kind == "run" else "transfer"


class _Scale:
    def __init__(self, t_end: float) -> None:
        self.t_end = max(t_end, 1e-6)

    def x(self, t: float) -> float:
        return LEFT + WIDTH * t / self.t_end

    def axis(self, y: float) -> str:
        step = _nice_step(self.t_end / 8)
        out = [f'<line x1="{LEFT}" y1="{y}" x2="{LEFT + WIDTH}" y2="{y}" stroke="#999"/>']
        t = 0.0
        while t <= self.t_end + 1e-9:
            x = self.x(t)
            out.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}" stroke="#999"/>'
                       f'<text x="{x:.1f}" y="{y + 15}" text-anchor="middle">{t:g}</text>')
            t += step
        out.append(f'<text x="{LEFT + WIDTH}" y="{y + 28}" text-anchor="end">seconds</text>')
        return "".join(out)


def _nice_step(raw: float) -> float:
    mag = 10 ** math.floor(math.log10(max(raw, 1e-9)))
    for m in (1, 2, 5, 10):
        if m * mag >= raw:
            return float(m * mag)
    return float(10 * mag)


def _bar(scale: _Scale, a: dict[str, Any], y: float, h: float, start: float, end: float,
         opacity: float, models: dict[str, str], outline: bool = False) -> str:
    x0, x1 = scale.x(start), scale.x(end)
    req = a.get("request")
    tip = f"{a['kind']} {models.get(a['engine'], a['engine'])}"
    if req:
        tip += f" {req}"
        if a["kind"] == "run":
            tip += f" tokens {a.get('tokens_from', 0)}-{a.get('tokens_to', '')}"
            if a.get("recompute"):
                tip += " (recompute)"
    tip += f": {start:.3f}-{end:.3f} s"
    extra = f' data-req="{_e(req)}"' if req else ""
    stroke = ' stroke="#000" stroke-width="1"' if outline else ""
    return (f'<rect class="bar" x="{x0:.2f}" y="{y:.1f}" width="{max(x1 - x0, 0.8):.2f}" '
            f'height="{h}" fill="{COLORS.get(a["kind"], "#999")}" fill-opacity="{opacity}"'
            f'{extra}{stroke}><title>{_e(tip)}</title></rect>')


def _memory_steps(actions: list[dict[str, Any]], engines: dict[str, dict[str, Any]],
                  device: str, kind: str, host_devices: set[str]) -> list[tuple[float, int]]:
    """(time, bytes in use) steps on a GPU (``gpu``) or a host (``host``, its devices'
    engines and the KV states saved on it), from resident periods and saved states."""
    deltas: list[tuple[float, int]] = []
    open_at: dict[str, float] = {}
    saved: dict[str, list[float]] = defaultdict(list)
    for a in sorted(actions, key=lambda a: (a["start_s"], a["end_s"])):
        e = engines.get(a["engine"])
        if e is None:
            continue
        on = (e["device"] == device) if kind == "gpu" else (e["device"] in host_devices)
        size = int(e.get("gpu_bytes", 0) if kind == "gpu" else e.get("host_bytes", 0))
        if a["kind"] == "load" and on and size:
            deltas.append((a["start_s"], size))
            open_at[a["engine"]] = a["start_s"]
        elif a["kind"] == "unload" and on and size and a["engine"] in open_at:
            deltas.append((a["end_s"], -size))
            open_at.pop(a["engine"])
        elif kind == "host" and a["device"] in host_devices and a["kind"] == "kv_save":
            deltas.append((a["start_s"], int(a.get("bytes") or 0)))
            saved[a.get("request") or ""].append(float(a.get("bytes") or 0))
        elif kind == "host" and a["kind"] == "kv_restore" and saved.get(a.get("request") or ""):
            b = saved[a.get("request") or ""].pop(0)
            deltas.append((a["end_s"], -int(b)))
    steps, used = [(0.0, 0)], 0
    for t, d in sorted(deltas):
        used += d
        steps.append((t, used))
    return steps


def _memory_svg(scale: _Scale, steps: list[tuple[float, int]], capacity: int | None,
                y0: float, h: float, label: str) -> str:
    top = max([capacity or 0] + [b for _, b in steps]) or 1
    pts = []
    prev = 0
    for t, b in steps:
        pts.append(f"{scale.x(t):.1f},{y0 + h - h * prev / top:.1f}")
        pts.append(f"{scale.x(t):.1f},{y0 + h - h * b / top:.1f}")
        prev = b
    pts.append(f"{scale.x(scale.t_end):.1f},{y0 + h - h * prev / top:.1f}")
    peak = max(b for _, b in steps)
    out = [f'<text x="{LEFT - 6}" y="{y0 + h / 2 + 4}" text-anchor="end">{_e(label)}</text>',
           f'<rect x="{LEFT}" y="{y0}" width="{WIDTH}" height="{h}" fill="#fafafa" '
           f'stroke="#ddd"/>',
           f'<polyline fill="none" stroke="#6a3d9a" stroke-width="1.5" '
           f'points="{" ".join(pts)}"/>']
    if capacity:
        yc = y0 + h - h * capacity / top
        out.append(f'<line x1="{LEFT}" y1="{yc:.1f}" x2="{LEFT + WIDTH}" y2="{yc:.1f}" '
                   f'stroke="#a00" stroke-dasharray="4 3"/>'
                   f'<text x="{LEFT + WIDTH - 4}" y="{yc + 11:.1f}" text-anchor="end" '
                   f'fill="#a00">capacity {capacity / 2**30:.1f} GiB</text>')
    out.append(f'<text x="{LEFT + 4}" y="{y0 + 11}">peak {peak / 2**30:.2f} GiB</text>')
    return "".join(out)


def gantt_svg(actions: list[dict[str, Any]], engines: list[dict[str, Any]],
              instance: Instance | None, t_end: float, memory: bool = True,
              lanes: tuple[str, ...] = ("compute", "transfer")) -> str:
    """Per device: its lanes' bars and (``memory``) its memory over time."""
    eng = {e["id"]: e for e in engines}
    models = {e["id"]: e["model"] for e in engines}
    devices = sorted({a["device"] for a in actions} | {e["device"] for e in engines})
    kinds = {}
    hosts: dict[str, set[str]] = {}
    capacity: dict[str, int | None] = {}
    if instance is not None:
        for d in instance.cluster.devices:
            kinds[d.id] = d.kind
            hosts.setdefault(d.host, set()).add(d.id)
            capacity[d.id] = d.memory_bytes if d.kind == "gpu" else \
                instance.cluster.host(d.host).memory_bytes
    scale = _Scale(t_end)
    parts, y = [], 6.0
    for dev in devices:
        parts.append(f'<text x="4" y="{y + 12}" font-weight="bold">{_e(dev)}</text>')
        for lane in lanes:
            parts.append(f'<text x="{LEFT - 6}" y="{y + ROW - 4}" text-anchor="end">'
                         f'{lane}</text>')
            parts.append(f'<rect x="{LEFT}" y="{y}" width="{WIDTH}" height="{ROW}" '
                         f'fill="#f4f4f4"/>')
            for a in actions:
                if a["device"] == dev and _lane(a["kind"]) == lane:
                    parts.append(_bar(scale, a, y + 1, ROW - 2, a["start_s"], a["end_s"], 0.9,
                                      models))
            y += ROW + 3
        if memory:
            kind = kinds.get(dev, "gpu" if any(e["device"] == dev and e.get("gpu_bytes")
                                                for e in engines) else "cpu")
            if kind == "gpu":
                steps = _memory_steps(actions, eng, dev, "gpu", {dev})
                label = "GPU memory"
            else:
                steps = _memory_steps(actions, eng, dev, "host", hosts.get(dev, {dev}))
                label = "host memory"
            parts.append(_memory_svg(scale, steps, capacity.get(dev), y + 2, 44, label))
            y += 52
        y += 8
    parts.append(scale.axis(y))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{LEFT + WIDTH + 20}" '
            f'height="{y + 34}" role="img">{"".join(parts)}</svg>')


def replay_svg(report: dict[str, Any]) -> str:
    """Predicted (pale, upper) and measured (solid, lower) bars per device and lane."""
    actions = report["actions"]
    t_end = max([a["end_s"] for a in actions] +
                [a["measured_end_s"] for a in actions if a.get("measured_end_s") is not None]
                + [1e-6])
    models = {e["id"]: e.get("model", e["id"]) for e in report.get("engines", [])}
    scale = _Scale(t_end)
    parts, y = [], 6.0
    for dev in sorted({a["device"] for a in actions}):
        for lane in ("compute", "transfer"):
            acts = [a for a in actions if a["device"] == dev and _lane(a["kind"]) == lane]
            if not acts:
                continue
            for what in ("predicted", "measured"):
                parts.append(f'<text x="{LEFT - 6}" y="{y + ROW - 4}" text-anchor="end">'
                             f'{_e(dev)} {lane} {what}</text>'
                             f'<rect x="{LEFT}" y="{y}" width="{WIDTH}" height="{ROW}" '
                             f'fill="#f4f4f4"/>')
                for a in acts:
                    if what == "predicted":
                        parts.append(_bar(scale, a, y + 1, ROW - 2, a["start_s"], a["end_s"],
                                          0.4, models))
                    elif a.get("measured_start_s") is not None and \
                            a.get("measured_end_s") is not None:
                        parts.append(_bar(scale, a, y + 1, ROW - 2, a["measured_start_s"],
                                          a["measured_end_s"], 0.95, models,
                                          outline=a.get("status") == "failed"))
                y += ROW + 3
            y += 6
    parts.append(scale.axis(y))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{LEFT + WIDTH + 20}" '
            f'height="{y + 34}" role="img">{"".join(parts)}</svg>')


def _legend() -> str:
    return '<p class="legend">' + "".join(
        f'<span><i style="background:{c}"></i>{k}</span>' for k, c in COLORS.items()) + \
        '<span class="muted">hover a run: all parts of its request are outlined</span></p>'


def _metrics_table(plan: dict[str, Any]) -> str:
    name = plan["solver"]["name"]
    cols: list[tuple[str, dict[str, Any] | None, str]] = [(name, plan["metrics"], "")]
    for b, v in plan.get("baselines", {}).items():
        if b != name:
            cols.append((b, v.get("metrics"), v.get("error", "")))
    head = "".join(f'<th class="{"plan" if i == 0 else ""}">{_e(c)}</th>'
                   for i, (c, _, _) in enumerate(cols))
    rows = []
    for key, label in METRIC_LABELS:
        cells = "".join(f"<td>{fmt_value(m.get(key)) if m else '-'}</td>" for _, m, _ in cols)
        rows.append(f"<tr><td>{_e(label)}</td>{cells}</tr>")
    errors = "".join(f'<p class="err">{_e(c)}: {_e(err)}</p>' for c, m, err in cols
                     if m is None and err)
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>{errors}"


def render_plan_page(plan: dict[str, Any], instance: Instance | None = None,
                     baselines: dict[str, dict[str, Any]] | None = None,
                     report: dict[str, Any] | None = None, title: str | None = None,
                     status_line: str = "", refresh_s: int | None = None) -> str:
    """The page for a plan (SPEC section 2 JSON); ``baselines`` maps a baseline's name to
    ``{"engines": [...], "actions": [...]}`` to draw its schedule too."""
    s = plan["solver"]
    actions, engines = plan["actions"], plan["engines"]
    sched = [actions] + [b["actions"] for b in (baselines or {}).values()]
    t_end = max([a["end_s"] for acts in sched for a in acts] + [1e-6])
    name = plan["instance"]["name"]
    head = (f"<h1>{_e(title or f'Plan for {name}')}</h1>"
            f"<p>{_e(s['name'])} <b>{_e(s['status'])}</b>, objective "
            f"{_e(s.get('objective_name') or plan.get('objective_name') or '')} = "
            f"{fmt_value(s.get('objective'))}, bound {fmt_value(s.get('bound'))}, gap "
            f"{fmt_value(s.get('gap'))}, {fmt_value(s.get('wall_s'))} s; {len(engines)} engines, "
            f"{len(actions)} actions, {len(plan.get('requests', []))} requests"
            f"{_e(status_line)}</p>")
    if s.get("notes"):
        head += f'<p class="muted">{_e(s["notes"])}</p>'
    room = headroom(plan)
    if room:
        head += f"<p>{_e(room)}</p>"
    body = [head, "<h2>Plan against the baselines</h2>", _metrics_table(plan),
            "<h2>Schedule per device</h2>", _legend(),
            gantt_svg(actions, engines, instance, t_end)]
    for b, sch in (baselines or {}).items():
        body.append(f"<h2>Baseline {_e(b)} (same time scale)</h2>")
        body.append(gantt_svg(sch["actions"], sch["engines"], instance, t_end, memory=False,
                              lanes=("compute",)))
    if report is not None:
        body.append(replay_section(report))
    meta = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return _document(f"planner: {name}", meta, "".join(body))


def replay_section(report: dict[str, Any]) -> str:
    rows = []
    for kind, sm in report.get("summary", {}).items():
        if sm.get("n"):
            rows.append(f"<tr><td>{_e(kind)}</td><td>{sm['n']}</td>"
                        f"<td>{100 * sm['median']:.1f}%</td><td>{100 * sm['p90']:.1f}%</td></tr>")
    table = ("<table><tr><th>what</th><th>n</th><th>median |err|</th><th>p90 |err|</th></tr>"
             + "".join(rows) + "</table>") if rows else ""
    return (f"<h2>Replay: predicted against measured ({_e(report.get('status', ''))})</h2>"
            + table + _legend() + replay_svg(report))


def _document(title: str, meta: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}'
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>{body}"
            f"<script>{JS}</script></body></html>\n")


def render_report_page(report: dict[str, Any], plan: dict[str, Any] | None = None,
                       instance: Instance | None = None) -> str:
    """A replay report's page: the plan (when found) and predicted against measured."""
    if plan is not None:
        return render_plan_page(plan, instance, report=report)
    name = report["instance"]["name"]
    return _document(f"planner replay: {name}", "",
                     f"<h1>Replay of {_e(name)}</h1>" + replay_section(report))


def render_job_page(job: dict[str, Any], plan: dict[str, Any] | None,
                    context: JobContext | None) -> str:
    """The server's page for a job: its best plan so far (refreshing while it runs)."""
    running = job["status"] in ("queued", "running")
    status = f"; job {job['id']} {job['status']}" + \
        (f", {job['elapsed_s']:.1f} s" if job.get("elapsed_s") is not None else "")
    if plan is None:
        msg = _e(job.get("error") or "no plan yet")
        return _document(f"planner job {job['id']}",
                         '<meta http-equiv="refresh" content="2">' if running else "",
                         f"<h1>Job {_e(job['id'])}: {_e(job['instance_name'])}</h1>"
                         f"<p>{_e(job['status'])}: {msg}</p>")
    instance, baselines = context if context is not None else (None, {})
    others = {k: v for k, v in baselines.items() if k != plan["solver"]["name"]}
    return render_plan_page(plan, instance, others, status_line=status,
                            refresh_s=2 if running else None)


JobContext = tuple[Instance | None, dict[str, dict[str, Any]]]


def job_context(data: Any, cost_kind: str = "auto") -> JobContext:
    """A job's parsed instance and its baselines' schedules (re-simulated once), or none
    where the instance no longer reads (the page then shows the plan alone)."""
    try:
        from planner.service import prepare_data

        instance, cost = prepare_data(data, json.dumps(data).encode(), "instance", cost_kind)
        return instance, baseline_schedules(instance, cost)
    except Exception:  # the page still shows the plan, without the baselines' schedules
        return None, {}


def baseline_schedules(instance: Instance, cost: Any,
                       plan: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The baselines' schedules as JSON, but for the plan's own solver."""
    from planner.io import engine_to_json
    from planner.service import run_baselines

    out = {}
    for name, res in run_baselines(instance, cost).items():
        if res.schedule is not None and (plan is None or name != plan["solver"]["name"]):
            out[name] = {"engines": [engine_to_json(e) for e in res.schedule.engines],
                         "actions": [a.to_json() for a in res.schedule.actions]}
    return out


def write_page(path: Path, data: Any, out: Path, instance_path: Path | None) -> Path:
    """``planner show FILE --html OUT``: a plan's page, or a replay report's."""
    from planner.costmodel import cost_model_for
    from planner.errors import InputError
    from planner.io import write_atomic
    from planner.plan_files import plan_and_instance

    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt in ("planner.plan/1", "planner.plan/1.1"):
        instance, _ = plan_and_instance(path, instance_path)
        page = render_plan_page(data, instance,
                                baseline_schedules(instance, cost_model_for(instance), data))
    elif fmt == "planner.report/1":
        plan = None
        instance = None
        plan_path = Path(data.get("plan") or "")
        if data.get("plan") and plan_path.is_file():
            from planner.io import read_json

            plan, _ = read_json(plan_path)
            instance, _ = plan_and_instance(plan_path, instance_path)
        page = render_report_page(data, plan, instance)
    else:
        raise InputError([f"{path}: format: expected 'planner.plan/1' or 'planner.report/1'"])

    def write(tmp: Path) -> None:
        tmp.write_text(page)

    return write_atomic(out, write)
