"""Jobs, their instances, best plans and events in one SQLite file (WAL mode).

Every write is one short transaction, so a crash or restart loses nothing that a
response had already reported. Plans are stored as their SPEC JSON text; each
improving plan replaces the previous best of its job.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from planner.metrics import headroom

SCHEMA_VERSION = 1
ACTIVE = ("queued", "running")
TERMINAL = ("done", "failed", "cancelled", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    instance_name TEXT NOT NULL,
    n_requests INTEGER NOT NULL,
    options TEXT NOT NULL,
    objective_name TEXT,
    objective REAL,
    bound REAL,
    gap REAL,
    solver_status TEXT,
    best_at REAL,
    error TEXT,
    headroom TEXT
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE TABLE IF NOT EXISTS instances (job_id TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS plans (job_id TEXT PRIMARY KEY, plan TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
"""

_JOB_FIELDS = ("id", "status", "created_at", "started_at", "finished_at", "instance_name",
               "n_requests", "options", "objective_name", "objective", "bound", "gap",
               "solver_status", "best_at", "error", "headroom")


class StoreError(Exception):
    """The data folder cannot be used (one line: which file, what is wrong)."""


class Store:
    """Thread-safe access to ``<data>/planner.db``; one connection guarded by a lock."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "planner.db"
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            cols = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
            if "headroom" not in cols:  # a data folder from before the column
                self._db.execute("ALTER TABLE jobs ADD COLUMN headroom TEXT")
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable SQLite database ({exc})") from None
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: written by a newer planner (schema {row[0]})")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def journal_mode(self) -> str:
        with self._lock:
            return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    # --- writes ------------------------------------------------------------------

    def _event(self, job_id: str, kind: str, data: dict[str, Any], now: float) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id=?",
                               (job_id,)).fetchone()
        seq = int(row[0]) + 1
        self._db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                         (job_id, seq, now, kind, json.dumps(data)))
        return seq

    def create(self, job_id: str, instance_name: str, n_requests: int, options: dict[str, Any],
               objective_name: str, body: bytes) -> None:
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO jobs (id, status, created_at, instance_name, n_requests, options, "
                "objective_name) VALUES (?, 'queued', ?, ?, ?, ?, ?)",
                (job_id, now, instance_name, n_requests, json.dumps(options), objective_name))
            self._db.execute("INSERT INTO instances VALUES (?, ?)", (job_id, body))
            self._event(job_id, "queued", {"status": "queued"}, now)

    def start(self, job_id: str) -> None:
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("UPDATE jobs SET status='running', started_at=? WHERE id=?",
                             (now, job_id))
            self._event(job_id, "running", {"status": "running"}, now)

    def best(self, job_id: str, plan: dict[str, Any], final: bool = False) -> None:
        """Keep ``plan`` as the job's best so far; an event unless it is the final one."""
        s = plan["solver"]
        room = headroom(plan)
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            row = self._db.execute("SELECT started_at FROM jobs WHERE id=?",
                                   (job_id,)).fetchone()
            started = row[0] if row and row[0] is not None else now
            self._db.execute("INSERT OR REPLACE INTO plans VALUES (?, ?)",
                             (job_id, json.dumps(plan)))
            self._db.execute(
                "UPDATE jobs SET objective=?, bound=?, gap=?, solver_status=?, best_at=?, "
                "headroom=? WHERE id=?", (s.get("objective"), s.get("bound"), s.get("gap"),
                                          s.get("status"), now, room, job_id))
            if not final:
                self._event(job_id, "solution", {
                    "objective": s.get("objective"), "bound": s.get("bound"),
                    "gap": s.get("gap"), "headroom": room, "solver_status": s.get("status"),
                    "notes": s.get("notes", ""), "elapsed_s": round(now - started, 3),
                    "metrics": plan.get("metrics")}, now)

    def finish(self, job_id: str, status: str, error: str | None = None) -> None:
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("UPDATE jobs SET status=?, finished_at=?, error=? WHERE id=?",
                             (status, now, error, job_id))
            row = self._db.execute("SELECT objective, bound, gap, started_at, headroom "
                                   "FROM jobs WHERE id=?", (job_id,)).fetchone()
            data: dict[str, Any] = {"status": status}
            if row is not None:
                data.update(objective=row[0], bound=row[1], gap=row[2], headroom=row[4],
                            elapsed_s=round(now - (row[3] or now), 3))
            if error:
                data["error"] = error
            self._event(job_id, status, data, now)

    def recover(self) -> list[str]:
        """After a restart: running jobs become interrupted (their best plan kept);
        returns the queued ones, oldest first, to be run again."""
        with self._lock:
            running = [r[0] for r in self._db.execute(
                "SELECT id FROM jobs WHERE status='running'").fetchall()]
            queued = [r[0] for r in self._db.execute(
                "SELECT id FROM jobs WHERE status='queued' ORDER BY created_at").fetchall()]
        for job_id in running:
            self.finish(job_id, "interrupted", "the server stopped while this job ran; "
                        "its best plan so far is kept")
        return queued

    # --- reads -------------------------------------------------------------------

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_JOB_FIELDS)} FROM jobs WHERE id=?",
                                   (job_id,)).fetchone()
            has_plan = row is not None and self._db.execute(
                "SELECT 1 FROM plans WHERE job_id=?", (job_id,)).fetchone() is not None
        return _job_dict(row, has_plan) if row is not None else None

    def jobs(self, limit: int = 100, status: str | None = None) -> list[dict[str, Any]]:
        q = (f"SELECT {', '.join(_JOB_FIELDS)}, EXISTS(SELECT 1 FROM plans p "
             "WHERE p.job_id=jobs.id) FROM jobs")
        args: tuple[Any, ...] = ()
        if status is not None:
            q += " WHERE status=?"
            args = (status,)
        q += " ORDER BY created_at DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(q, (*args, limit)).fetchall()
        return [_job_dict(r[:-1], bool(r[-1])) for r in rows]

    def plan(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT plan FROM plans WHERE job_id=?",
                                   (job_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def instance(self, job_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM instances WHERE job_id=?",
                                   (job_id,)).fetchone()
        return bytes(row[0]) if row else None

    def events(self, job_id: str, after: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT seq, at, kind, data FROM events WHERE job_id=? "
                                    "AND seq>? ORDER BY seq", (job_id, after)).fetchall()
        return [{"seq": r[0], "at": r[1], "kind": r[2], "data": json.loads(r[3])} for r in rows]


def _job_dict(row: tuple[Any, ...], has_plan: bool) -> dict[str, Any]:
    d = dict(zip(_JOB_FIELDS, row, strict=True))
    d["options"] = json.loads(d["options"])
    end = d["finished_at"] if d["finished_at"] is not None else time.time()
    d["elapsed_s"] = round(end - d["started_at"], 3) if d["started_at"] is not None else None
    d["has_plan"] = has_plan
    return d
