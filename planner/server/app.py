"""The HTTP API of ``planner serve`` (FastAPI): jobs, plans, events, plan pages.

Bad input is answered with a 4xx status and ``{"detail": "...", "errors": [...]}``,
one line per fault in ``errors`` (the lines the CLI prints), and is logged as one
line without a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planner.server.jobs import JobManager
from planner.server.store import TERMINAL, Store

log = logging.getLogger("planner.server")

class JobOptions(BaseModel):
    """Solver options of a job (query parameters, or ``options`` in an envelope body)."""

    model_config = ConfigDict(extra="forbid")

    solver: Literal["cp-sat", "fcfs-lru", "grouped", "static"] = "cp-sat"
    objective: Literal["mean_response", "makespan", "slo_attainment", "tardiness"] | None = None
    time_limit_s: float = Field(10.0, gt=0, le=3600)
    search_workers: int = Field(1, ge=1, le=16)
    seed: int = 0
    preemption: bool = True
    cost_model: Literal["auto", "analytic", "profiled"] = "auto"


@dataclass
class ServerConfig:
    data_dir: Path
    workers: int = 1
    token: str | None = None
    max_body_bytes: int = 8 * 2**20
    cancel_grace_s: float = 10.0


class ApiError(Exception):
    def __init__(self, status: int, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.status, self.lines = status, lines


def _error(status: int, lines: list[str]) -> JSONResponse:
    return JSONResponse({"detail": " / ".join(lines), "errors": lines}, status_code=status)


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc) or "(body)"


def _job_view(job: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "status", "instance_name", "n_requests", "options", "objective_name",
            "objective", "bound", "gap", "headroom", "solver_status", "elapsed_s", "created_at",
            "started_at", "finished_at", "has_plan", "error")
    out = {k: job[k] for k in keys}
    out["links"] = {"self": f"/v1/jobs/{job['id']}", "plan": f"/v1/jobs/{job['id']}/plan",
                    "events": f"/v1/jobs/{job['id']}/events", "page": f"/jobs/{job['id']}"}
    return out


def _json_body(body: bytes) -> Any:
    """The parsed body; ApiError(400) when it is no JSON."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, [f"body: malformed JSON ({exc})"]) from None
    except RecursionError:
        raise ApiError(400, ["body: JSON nested too deeply"]) from None


def validate_instance(body: bytes,
                      opts: JobOptions) -> tuple[str, int, str, bytes, dict[str, Any]]:
    """Parse and check an instance as ``planner validate`` would; raises ApiError(422)."""
    from planner.errors import PlannerError
    from planner.service import prepare_data

    data = _json_body(body)
    if isinstance(data, dict) and "instance" in data and "cluster" not in data:
        extra = set(data) - {"instance", "options"}
        if extra:
            raise ApiError(422, [f"body.{k}: unknown field (expected instance, options)"
                                 for k in sorted(extra)])
        try:
            merged = {**opts.model_dump(exclude_unset=True), **(data.get("options") or {})}
            opts = JobOptions.model_validate(merged)
        except ValidationError as exc:
            raise ApiError(422, [f"options.{_loc(e['loc'])}: {e['msg']}"
                                 for e in exc.errors()]) from None
        except TypeError:
            raise ApiError(422, ["options: wrong type, expected object"]) from None
        body = json.dumps(data["instance"], indent=1).encode()
        data = data["instance"]
    try:
        instance, _ = prepare_data(data, body, "instance", opts.cost_model)
    except PlannerError as exc:  # the lines `planner validate` prints
        raise ApiError(422, [line for m in exc.lines for line in m.splitlines()]) from None
    return (instance.name, len(instance.requests), opts.objective or instance.objective, body,
            opts.model_dump())


def summarize_instance(body: bytes, cost_model: str) -> dict[str, Any]:
    """``planner instance show --json`` of an instance given as a body; ApiError on faults."""
    from planner.costmodel import cost_model_for
    from planner.errors import PlannerError
    from planner.service import parse_data
    from planner.summary import summarize

    data = _json_body(body)
    try:
        instance = parse_data(data, body, "instance")
        return summarize(instance, cost_model_for(instance, cost_model)).to_json()
    except PlannerError as exc:
        raise ApiError(422, [line for m in exc.lines for line in m.splitlines()]) from None


def create_app(config: ServerConfig) -> FastAPI:
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        store = Store(config.data_dir)
        state["store"] = store
        state["jobs"] = JobManager(store, config.workers, config.cancel_grace_s)
        log.info("planner serve: %d worker(s), data in %s (journal %s)", config.workers,
                 store.path, store.journal_mode())
        try:
            yield
        finally:
            await run_in_threadpool(state["jobs"].close)
            store.close()

    app = FastAPI(title="planner", lifespan=lifespan, version="1", docs_url=None,
                  redoc_url=None,
                  description="Submit an instance (SPEC section 1) as a job; follow the "
                  "solver's improving plans as server-sent events; fetch the plan (SPEC "
                  "section 2) or its page. Options go in query parameters, or in an "
                  "envelope body `{\"instance\": {...}, \"options\": {...}}`.")
    #: set when the server begins to shut down: event streams end so it need not wait
    app.state.closing = threading.Event()

    def store() -> Store:
        return state["store"]

    def jobs() -> JobManager:
        return state["jobs"]

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Response:
        if config.token is not None:
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else \
                request.query_params.get("token", "")
            if not hmac.compare_digest(given.encode(), config.token.encode()):
                return _error(401, ["a bearer token is required (Authorization: Bearer "
                                    "TOKEN, or ?token=TOKEN in a browser)"])
        response: Response = await call_next(request)
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        lines = [f"{_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]
        log.info("%s %s: 422 %s", request.method, request.url.path, " / ".join(lines))
        return _error(422, lines)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        log.info("%s %s: %d %s", request.method, request.url.path, exc.status,
                 " / ".join(exc.lines[:5]))
        return _error(exc.status, exc.lines)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, [str(exc.detail)])

    def get_job(job_id: str) -> dict[str, Any]:
        job = store().job(job_id)
        if job is None:
            raise ApiError(404, [f"no job {job_id!r}"])
        return job

    async def read_body(request: Request) -> bytes:
        """The request's body, refused (413) past ``max_body_bytes``."""
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > config.max_body_bytes:
            raise ApiError(413, [f"body: {int(size)} bytes, over the limit of "
                                 f"{config.max_body_bytes} bytes"])
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > config.max_body_bytes:
                raise ApiError(413, [f"body: over the limit of {config.max_body_bytes} bytes"])
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/v1/instances/summary", summary="What an instance asks of its cluster, as "
              "`planner instance show --json` prints it",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"type": "object", "description":
                                       "an instance (SPEC section 1)"}}}}})
    async def instance_summary(request: Request,
                               cost_model: Literal["auto", "analytic"] | None = None
                               ) -> dict[str, Any]:
        """Each model's fit, speed and load time per device, whether each GPU holds its
        models at once, each model's work at its fastest device and the busy share; no
        job, answered at once (a model that fits nowhere is listed, not refused)."""
        raw = await read_body(request)
        return await run_in_threadpool(summarize_instance, raw, cost_model or "auto")

    @app.post("/v1/jobs", status_code=202, summary="Submit an instance as a job",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"type": "object", "description":
                                       "an instance (SPEC section 1), or {instance, options}"}}}}})
    async def submit(request: Request,
                     solver: Literal["cp-sat", "fcfs-lru", "grouped", "static"] | None = None,
                     objective: Literal["mean_response", "makespan", "slo_attainment",
                                        "tardiness"] | None = None,
                     time_limit_s: float | None = Query(None, gt=0, le=3600),
                     search_workers: int | None = Query(None, ge=1, le=16),
                     seed: int | None = None, preemption: bool | None = None,
                     cost_model: Literal["auto", "analytic", "profiled"] | None = None,
                     ) -> JSONResponse:
        """Returns at once with the job's id; the solve runs in a worker process."""
        raw = await read_body(request)
        given = {k: v for k, v in dict(solver=solver, objective=objective,
                                       time_limit_s=time_limit_s,
                                       search_workers=search_workers, seed=seed,
                                       preemption=preemption,
                                       cost_model=cost_model).items() if v is not None}
        opts = JobOptions.model_validate(given)
        name, n_req, objective_name, body, options = await run_in_threadpool(
            validate_instance, raw, opts)
        job_id = uuid.uuid4().hex[:12]
        await run_in_threadpool(store().create, job_id, name, n_req, options,
                                objective_name, body)
        jobs().submit(job_id)
        return JSONResponse(_job_view(get_job(job_id)), status_code=202,
                            headers={"Location": f"/v1/jobs/{job_id}"})

    @app.get("/v1/jobs", summary="List jobs, newest first")
    async def list_jobs(limit: int = Query(100, ge=1, le=10000),
                        status: Literal["queued", "running", "done", "failed", "cancelled",
                                        "interrupted"] | None = None) -> dict[str, Any]:
        rows = await run_in_threadpool(store().jobs, limit, status)
        return {"jobs": [_job_view(j) for j in rows], "queued": jobs().queued(),
                "running": jobs().busy()}

    @app.get("/v1/jobs/{job_id}", summary="A job's status, best objective, bound, gap, elapsed")
    async def job_status(job_id: str) -> dict[str, Any]:
        return _job_view(await run_in_threadpool(get_job, job_id))

    @app.get("/v1/jobs/{job_id}/plan", summary="The job's best plan so far (SPEC section 2)")
    async def job_plan(job_id: str) -> JSONResponse:
        job = await run_in_threadpool(get_job, job_id)
        plan = await run_in_threadpool(store().plan, job_id)
        if plan is None:
            raise ApiError(404, [f"job {job_id} has no plan yet (status {job['status']})"])
        return JSONResponse(plan)

    @app.get("/v1/jobs/{job_id}/instance", summary="The job's instance as submitted")
    async def job_instance(job_id: str) -> Response:
        await run_in_threadpool(get_job, job_id)
        body = await run_in_threadpool(store().instance, job_id)
        return Response(body, media_type="application/json")

    @app.delete("/v1/jobs/{job_id}", summary="Cancel a job; its best plan so far is kept")
    async def cancel(job_id: str) -> JSONResponse:
        job = await run_in_threadpool(get_job, job_id)
        if job["status"] in ("done", "failed", "interrupted"):
            raise ApiError(409, [f"job {job_id} has already ended ({job['status']})"])
        status = await run_in_threadpool(jobs().cancel, job_id)
        view = _job_view(await run_in_threadpool(get_job, job_id))
        view["cancel"] = "stopping" if status == "running" else status
        return JSONResponse(view, status_code=202 if status == "running" else 200)

    @app.get("/v1/jobs/{job_id}/events", summary="Server-sent events: each improving "
             "solution, then the end", response_class=StreamingResponse)
    async def events(job_id: str, request: Request) -> StreamingResponse:
        await run_in_threadpool(get_job, job_id)
        last = request.headers.get("last-event-id", "0")
        after = int(last) if last.isdigit() else 0

        async def stream() -> AsyncIterator[bytes]:
            seq, version, quiet = after, -1, time.monotonic()
            while True:
                v = jobs().waiters.version(job_id)
                if v != version:
                    version = v
                    for ev in await run_in_threadpool(store().events, job_id, seq):
                        seq = ev["seq"]
                        data = {**ev["data"], "job": job_id, "at": ev["at"]}
                        yield (f"id: {seq}\nevent: {ev['kind']}\n"
                               f"data: {json.dumps(data)}\n\n").encode()
                        quiet = time.monotonic()
                        if ev["kind"] in TERMINAL:
                            return
                if app.state.closing.is_set() or await request.is_disconnected():
                    return
                if time.monotonic() - quiet > 15:
                    yield b": keep-alive\n\n"
                    quiet = time.monotonic()
                await asyncio.sleep(0.1)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, summary="The job's plan page")
    async def page(job_id: str) -> HTMLResponse:
        job = await run_in_threadpool(get_job, job_id)
        html = await run_in_threadpool(_render_job_page, store(), job)
        return HTMLResponse(html)

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    async def docs() -> HTMLResponse:
        from planner.server.apidocs import render

        return HTMLResponse(render(app.openapi()))

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return RedirectResponse("/docs")

    @app.get("/healthz", summary="Liveness: worker pool and queue")
    async def health() -> dict[str, Any]:
        return {"ok": True, "workers": config.workers, "queued": jobs().queued(),
                "running": jobs().busy()}

    return app


def _render_job_page(store: Store, job: dict[str, Any]) -> str:
    from planner.page import render_job_page

    plan = store.plan(job["id"])
    return render_job_page(job, plan, _job_context(store, job["id"]) if plan else None)


_contexts: OrderedDict[tuple[str, str], Any] = OrderedDict()
_contexts_lock = threading.Lock()


def _job_context(store: Store, job_id: str) -> Any:
    """A job's instance and baseline schedules for its page, computed once (a job's
    instance never changes; a running job's page refreshes every 2 s)."""
    from planner.page import job_context

    key = (str(store.path), job_id)
    with _contexts_lock:
        if key in _contexts:
            _contexts.move_to_end(key)
            return _contexts[key]
    body = store.instance(job_id)
    job = store.job(job_id)
    ctx = job_context(json.loads(body) if body else None,
                      job["options"].get("cost_model", "auto") if job else "auto")
    with _contexts_lock:
        _contexts[key] = ctx
        while len(_contexts) > 32:
            _contexts.popitem(last=False)
    return ctx
