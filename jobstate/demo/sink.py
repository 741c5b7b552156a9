"""The demo's outside world, kept apart from jobstate's own records.

A sqlite file under the demo's temp dir plays every external system: an outbox that
records each side effect *every time it is executed* (no de-duplication, so a repeated
effect shows up as an extra row) and a fake ETL service. Worker processes write to it;
the demo reads it back to count what really happened.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from typing import Any

from ..status import NOT_DONE

_conns: dict[tuple[str, int], sqlite3.Connection] = {}
_lock = threading.Lock()

SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (id INTEGER PRIMARY KEY, kind TEXT NOT NULL,
    key TEXT NOT NULL, payload TEXT, pid INTEGER, at REAL);
CREATE INDEX IF NOT EXISTS effects_key ON effects (kind, key);
CREATE TABLE IF NOT EXISTS etl_runs (run_id TEXT PRIMARY KEY, request TEXT NOT NULL,
    started REAL NOT NULL, ready REAL NOT NULL, rows INTEGER NOT NULL, polls INTEGER DEFAULT 0);
"""


def connect(path: str) -> sqlite3.Connection:
    """One connection per process and file, kept like a warm container's DB pool."""
    key = (path, os.getpid())
    with _lock:
        conn = _conns.get(key)
        if conn is None:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA synchronous=NORMAL")
            _conns[key] = conn
        return conn


def create(path: str) -> None:
    conn = connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)


class Outbox:
    """Side effects as rows: `send` executes one, `find` is its reconcile."""

    def __init__(self, path: str) -> None:
        self.path = path

    def send(self, kind: str, key: str, payload: Any = None) -> dict[str, Any]:
        cur = connect(self.path).execute(
            "INSERT INTO effects (kind, key, payload, pid, at) VALUES (?, ?, ?, ?, ?)",
            (kind, key, json.dumps(payload), os.getpid(), time.time()))
        return {"id": cur.lastrowid}

    def find(self, kind: str, key: str, payload: Any = None) -> Any:
        """The reconcile of `send`: did it happen? Same arguments, NOT_DONE if not."""
        row = connect(self.path).execute(
            "SELECT id FROM effects WHERE kind = ? AND key = ? ORDER BY id LIMIT 1",
            (kind, key)).fetchone()
        return {"id": row[0]} if row else NOT_DONE

    def sent(self, kind: str) -> list[tuple[str, Any]]:
        """(key, payload) of every row of this kind, oldest first."""
        rows = connect(self.path).execute(
            "SELECT key, payload FROM effects WHERE kind = ? ORDER BY id", (kind,)).fetchall()
        return [(str(k), json.loads(p) if p else None) for k, p in rows]

    def count(self, kinds: tuple[str, ...]) -> tuple[int, int]:
        """(rows, distinct keys) of these kinds: rows > distinct means a repeated effect."""
        marks = ",".join("?" * len(kinds))
        row = connect(self.path).execute(
            f"SELECT COUNT(*), COUNT(DISTINCT kind || '/' || key) FROM effects "
            f"WHERE kind IN ({marks})", kinds).fetchone()
        return int(row[0]), int(row[1])


class FakeEtl:
    """An external ETL service: start a run, poll it by its id, it finishes later."""

    def __init__(self, path: str) -> None:
        self.path = path

    def start(self, request: str, seconds: float, rows: int) -> str:
        run_id = f"etl-{uuid.uuid4().hex[:12]}"
        now = time.time()
        connect(self.path).execute(
            "INSERT INTO etl_runs (run_id, request, started, ready, rows) VALUES (?,?,?,?,?)",
            (run_id, request, now, now + seconds, rows))
        return run_id

    def find(self, request: str, seconds: float, rows: int) -> Any:
        """The reconcile of `start`: the run this request started, if any."""
        row = connect(self.path).execute(
            "SELECT run_id FROM etl_runs WHERE request = ? ORDER BY started LIMIT 1",
            (request,)).fetchone()
        return row[0] if row else NOT_DONE

    def status(self, run_id: str) -> dict[str, Any]:
        conn = connect(self.path)
        conn.execute("UPDATE etl_runs SET polls = polls + 1 WHERE run_id = ?", (run_id,))
        row = conn.execute("SELECT started, ready, rows FROM etl_runs WHERE run_id = ?",
                           (run_id,)).fetchone()
        if row is None:
            return {"state": "UNKNOWN", "percent": 0}
        started, ready, rows = row
        pct = min(100.0, 100.0 * (time.time() - started) / max(ready - started, 1e-6))
        if time.time() >= ready:
            return {"state": "SUCCEEDED", "percent": 100.0, "rows": rows}
        return {"state": "RUNNING", "percent": round(pct, 1)}

    def runs(self, request: str) -> tuple[int, int]:
        """(runs started for this request, polls made)."""
        row = connect(self.path).execute(
            "SELECT COUNT(*), COALESCE(SUM(polls), 0) FROM etl_runs WHERE request = ?",
            (request,)).fetchone()
        return int(row[0]), int(row[1])
