"""`planner serve` as a real subprocess on a free loopback port: jobs, events, plans that
pass the checker, cancel, restart, bad input. Solves are short (1-2 s, one worker)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from planner.checker import check_plan
from planner.io import load_instance, parse_instance, parse_schedule
from tests.conftest import ROOT

TERMINAL = {"done", "failed", "cancelled", "interrupted"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A `planner serve` subprocess and a small HTTP client for it."""

    def __init__(self, data: Path, log: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.token: str | None = None
        self._log = log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from planner.cli import main; main()", "serve",
             "--port", str(self.port), "--data", str(data), "--workers", "1", *extra],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=data.parent,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 90
        while True:
            try:
                self.request("GET", "/healthz")
                return
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("server did not start:\n" + log.read_text()) from None
                time.sleep(0.2)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        h = dict(headers or {})
        if self.token:
            h.setdefault("Authorization", f"Bearer {self.token}")
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw)
        except json.JSONDecodeError:
            return status, raw.decode()

    def submit(self, body: bytes, query: str = "") -> str:
        status, job = self.request("POST", "/v1/jobs" + query, body)
        assert status == 202, job
        return str(job["id"])

    def events(self, job_id: str,
               until: set[str] = TERMINAL) -> Iterator[tuple[str, dict[str, Any]]]:
        """Server-sent events of a job, parsed, until one of ``until``."""
        req = urllib.request.Request(f"{self.url}/v1/jobs/{job_id}/events")
        with urllib.request.urlopen(req, timeout=120) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            kind, data = "", ""
            for raw in resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and kind:
                    yield kind, json.loads(data)
                    if kind in until:
                        return
                    kind, data = "", ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)
        self._log.close()


def assert_valid_plan(plan: dict[str, Any], instance_data: dict[str, Any]) -> None:
    inst = parse_instance(instance_data, "instance", ROOT / "instances", "")
    assert check_plan(inst, parse_schedule(plan, "plan"), plan) == []


def instance_200() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "instances" / "mixed.json").read_text())
    data["name"] = "mixed200"
    data["requests"] = data["requests"][:200]
    return data


def test_jobs_events_cancel_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    log = tmp_path / "server.log"
    srv = Server(data_dir, log)
    try:
        tiny_raw = (ROOT / "instances" / "tiny.json").read_bytes()
        big = instance_200()
        mixed = json.loads((ROOT / "instances" / "mixed.json").read_text())
        j1 = srv.submit(tiny_raw, "?time_limit_s=1")
        # an envelope body with options; the query gives the solver's time limit
        j2 = srv.submit(json.dumps({"instance": big, "options": {"seed": 3}}).encode(),
                        "?time_limit_s=2")
        j3 = srv.submit(json.dumps(mixed).encode(), "?time_limit_s=120")

        for job_id, inst in ((j1, json.loads(tiny_raw)), (j2, big)):
            seen = list(srv.events(job_id))
            kinds = [k for k, _ in seen]
            assert kinds[0] == "queued" and "running" in kinds and kinds[-1] == "done", kinds
            sols = [d for k, d in seen if k == "solution"]
            assert sols, kinds  # at least the best baseline while CP-SAT searches
            status, job = srv.request("GET", f"/v1/jobs/{job_id}")
            assert status == 200 and job["status"] == "done"
            assert job["objective"] is not None and job["bound"] is not None
            assert job["gap"] is not None and job["elapsed_s"] > 0
            # the bound against the best baseline, as `planner solve` prints it
            assert job["headroom"].startswith("no plan can do better than "), job
            for d in sols:  # streamed plans carry it once they have a bound
                assert (d["headroom"] is None) == (not d["bound"]), d
            assert job["objective"] <= sols[0]["objective"] + 1e-9  # never worse
            status, plan = srv.request("GET", f"/v1/jobs/{job_id}/plan")
            assert status == 200 and plan["format"] == "planner.plan/1"
            assert_valid_plan(plan, inst)
            assert plan["solver"]["objective"] == pytest.approx(job["objective"])
        # the tiny instance was posted byte for byte: its plan names the file's sha256
        _, plan1 = srv.request("GET", f"/v1/jobs/{j1}/plan")
        assert plan1["instance"]["sha256"] == load_instance(ROOT / "instances" / "tiny.json").sha256

        # the third job: cancel once it has a plan; that plan is kept
        assert [k for k, _ in srv.events(j3, until={"solution"})][-1] == "solution"
        status, view = srv.request("DELETE", f"/v1/jobs/{j3}")
        assert status in (200, 202), view
        final = [k for k, _ in srv.events(j3)][-1]
        assert final == "cancelled"
        status, job3 = srv.request("GET", f"/v1/jobs/{j3}")
        assert job3["status"] == "cancelled" and job3["has_plan"]
        assert job3["elapsed_s"] < 60  # it stopped long before its 120 s limit
        _, plan3 = srv.request("GET", f"/v1/jobs/{j3}/plan")
        assert_valid_plan(plan3, mixed)
        status, page = srv.request("GET", f"/jobs/{j3}")
        assert status == 200 and "<svg" in page and "srv1-gpu0" in page
        assert "Baseline fcfs-lru" in page and "GPU memory" in page
    finally:
        srv.stop()

    srv = Server(data_dir, log)  # the same data folder: everything is still there
    try:
        status, listing = srv.request("GET", "/v1/jobs")
        got = {j["id"]: j for j in listing["jobs"]}
        assert {j1, j2, j3} <= set(got)
        assert [got[j]["status"] for j in (j1, j2, j3)] == ["done", "done", "cancelled"]
        for job_id, inst in ((j1, json.loads(tiny_raw)), (j2, big), (j3, mixed)):
            status, plan = srv.request("GET", f"/v1/jobs/{job_id}/plan")
            assert status == 200
            assert_valid_plan(plan, inst)
    finally:
        srv.stop()
    assert "Traceback" not in log.read_text()


def test_killed_server_marks_running_job_interrupted(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    log = tmp_path / "server.log"
    srv = Server(data_dir, log)
    mixed = (ROOT / "instances" / "mixed.json").read_bytes()
    try:
        job_id = srv.submit(mixed, "?time_limit_s=120")
        assert [k for k, _ in srv.events(job_id, until={"solution"})][-1] == "solution"
        workers = psutil.Process(srv.proc.pid).children(recursive=True)
        assert workers
    finally:
        srv.stop(signal.SIGKILL)  # no shutdown handler runs
    _gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive  # the worker processes end with their server
    srv = Server(data_dir, log)
    try:
        _, job = srv.request("GET", f"/v1/jobs/{job_id}")
        assert job["status"] == "interrupted" and job["has_plan"]
        _, plan = srv.request("GET", f"/v1/jobs/{job_id}/plan")
        assert_valid_plan(plan, json.loads(mixed))
    finally:
        srv.stop()


def test_bad_input_is_4xx_with_one_line_per_fault(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    srv = Server(tmp_path / "data", log, "--max-body", "20000")
    try:
        tiny = json.loads((ROOT / "instances" / "tiny.json").read_text())
        cases: list[tuple[bytes, str, int, str]] = [
            (b"{not json", "", 400, "malformed JSON"),
            (b"[" * 100000 + b"]" * 100000, "", 413, "over the limit"),
            (json.dumps({**tiny, "requests": [{**tiny["requests"][0], "arrival_s": "soon"}]})
             .encode(), "", 422, "requests[0].arrival_s: wrong type"),
            (json.dumps({**tiny, "requests": [{**tiny["requests"][0], "model": "gpt-9"}]})
             .encode(), "", 422, "unknown model 'gpt-9'"),
            (json.dumps({**tiny, "models": [{"id": "x", "reference": "no-such-model"}],
                         "requests": []}).encode(), "", 422, "no-such-model"),
            (json.dumps(tiny).encode(), "?time_limit_s=fast", 422, "time_limit_s"),
            (json.dumps(tiny).encode(), "?solver=magic", 422, "solver"),
            (json.dumps({"instance": tiny, "options": {"workers": 3}}).encode(), "", 422,
             "options.workers"),
            (json.dumps([1, 2]).encode(), "", 422, "wrong type, expected object"),
        ]
        for body, query, code, text in cases:
            status, answer = srv.request("POST", "/v1/jobs" + query, body)
            assert status == code, (text, answer)
            assert text in answer["detail"], answer
            assert all("\n" not in line for line in answer["errors"])
        # a huge body sent in chunks (no Content-Length) is refused as well
        req = urllib.request.Request(srv.url + "/v1/jobs", method="POST",
                                     data=iter([b" " * 8192] * 10))
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 413
        assert srv.request("GET", "/v1/jobs/nope")[0] == 404
        assert srv.request("DELETE", "/v1/jobs/nope")[0] == 404
        assert srv.request("GET", "/v1/jobs?limit=0")[0] == 422
        status, listing = srv.request("GET", "/v1/jobs")
        assert status == 200 and listing["jobs"] == []  # nothing bad was queued
        # what an instance asks of its cluster, answered at once (no job)
        status, summary = srv.request("POST", "/v1/instances/summary",
                                      json.dumps(tiny).encode())
        assert status == 200 and summary["requests"] == len(tiny["requests"])
        assert {"fits", "rooms", "work", "busy_share"} <= set(summary)
        assert summary["busy_share"] > 0
        for body, code, text in [
                (b"{not json", 400, "malformed JSON"),
                (json.dumps({**tiny, "requests": [{**tiny["requests"][0], "model": "gpt-9"}]})
                 .encode(), 422, "unknown model 'gpt-9'"),
                (json.dumps([1]).encode(), 422, "wrong type, expected object"),
                (b" " * 30000, 413, "over the limit")]:
            status, answer = srv.request("POST", "/v1/instances/summary", body)
            assert status == code and text in answer["detail"], (text, answer)
        status, spec = srv.request("GET", "/openapi.json")
        assert status == 200 and "/v1/jobs/{job_id}/events" in spec["paths"]
        assert "/v1/instances/summary" in spec["paths"]
        status, docs = srv.request("GET", "/docs")  # served offline: no CDN
        assert status == 200 and "/v1/jobs/{job_id}/plan" in docs
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", docs)
    finally:
        srv.stop()
    text = log.read_text()
    assert "Traceback" not in text and "malformed JSON" in text


def test_token_is_required_when_set(tmp_path: Path) -> None:
    srv = Server(tmp_path / "data", tmp_path / "server.log", "--token", "s3cret")
    try:
        status, answer = srv.request("GET", "/v1/jobs")
        assert status == 401 and "bearer token" in answer["detail"]
        assert srv.request("GET", "/v1/jobs", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert srv.request("GET", "/v1/jobs?token=s3cret")[0] == 200  # a browser's way
        srv.token = "s3cret"
        assert srv.request("GET", "/v1/jobs")[0] == 200
        assert srv.request("GET", "/docs")[0] == 200
    finally:
        srv.stop()


def test_shutdown_with_an_open_event_stream(tmp_path: Path) -> None:
    """SIGTERM while a client follows a running job: the stream ends, the server exits
    (it does not wait for the job), and the job is interrupted with its plan kept."""
    data_dir = tmp_path / "data"
    log = tmp_path / "server.log"
    srv = Server(data_dir, log)
    mixed = (ROOT / "instances" / "mixed.json").read_bytes()
    try:
        job_id = srv.submit(mixed, "?time_limit_s=120")
        stream = srv.events(job_id)
        kinds = []
        for kind, _ in stream:
            kinds.append(kind)
            if kind == "solution":
                srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(timeout=60)
        assert "solution" in kinds and "done" not in kinds
    finally:
        srv.stop()
    text = log.read_text()
    assert "Traceback" not in text and "leaked" not in text
    srv = Server(data_dir, log)
    try:
        _, job = srv.request("GET", f"/v1/jobs/{job_id}")
        assert job["status"] == "interrupted" and job["has_plan"]
    finally:
        srv.stop()


def test_serve_errors_are_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from planner.cli import cli

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "planner.db").write_text("not a database")
    res = CliRunner().invoke(cli, ["serve", "--data", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "not a usable SQLite database" in res.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = CliRunner().invoke(cli, ["serve", "--port", str(port), "--data",
                                       str(tmp_path / "data")])
    assert res.exit_code == 2 and "cannot listen on" in res.output
    assert "Traceback" not in res.output


def test_a_data_folder_from_before_the_headroom_column_still_opens(tmp_path: Path) -> None:
    """A jobs table without the column (written by an earlier planner) gets it; its jobs
    read back with no headroom, new plans fill it in."""
    import sqlite3

    from planner.server.store import Store

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = sqlite3.connect(data_dir / "planner.db")
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at REAL NOT NULL,
            started_at REAL, finished_at REAL, instance_name TEXT NOT NULL,
            n_requests INTEGER NOT NULL, options TEXT NOT NULL, objective_name TEXT,
            objective REAL, bound REAL, gap REAL, solver_status TEXT, best_at REAL, error TEXT);
        INSERT INTO jobs (id, status, created_at, instance_name, n_requests, options)
            VALUES ('old', 'done', 1.0, 'tiny', 3, '{}');
    """)
    db.commit()
    db.close()
    store = Store(data_dir)
    try:
        old = store.job("old")
        assert old is not None and old["headroom"] is None
        store.create("new", "tiny", 3, {}, "mean_response", b"{}")
        plan = {"solver": {"objective": 2.0, "bound": 1.5, "gap": 0.25, "status": "FEASIBLE",
                           "objective_name": "mean_response"},
                "baselines": {"fcfs-lru": {"objective": 3.0}}}
        store.best("new", plan)
        new = store.job("new")
        assert new is not None
        assert new["headroom"] == ("no plan can do better than 1.500 (0.500x the best "
                                   "baseline, fcfs-lru: 3.000)")
        assert store.events("new")[-1]["data"]["headroom"] == new["headroom"]
    finally:
        store.close()
