"""The local server's job table in SQLite: jobs, their states and results survive a restart.

One file, one server: `open_store` takes an exclusive lock beside the database so that a second server on
the same file refuses to start instead of running the same queue twice. Every call is made under the
caller's lock (JobQueue's); the connection is shared between its threads.
"""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    input TEXT,
    prefix TEXT NOT NULL,
    execution_timeout REAL,
    submitted REAL NOT NULL,
    started REAL,
    finished REAL,
    output TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished);
"""


class StoreLocked(RuntimeError):
    """Another server holds this database."""


@dataclass
class Row:
    id: str
    status: str
    prefix: str
    execution_timeout: float | None
    submitted: float
    started: float | None
    finished: float | None
    output: dict[str, Any] | None
    error: str | None


_COLUMNS = "id, status, prefix, execution_timeout, submitted, started, finished, output, error"


def _row(values: tuple) -> Row:
    jid, status, prefix, timeout, submitted, started, finished, output, error = values
    return Row(jid, status, prefix, timeout, submitted, started, finished,
               None if output is None else json.loads(output), error)


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(f"{self.path}.lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise StoreLocked(f"another serve.py is using the job database {self.path}; give this one its own "
                              "--db (or stop the other)") from None
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash; WAL keeps it consistent
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()
        self._lock_file.close()

    # ------------------------------------------------------------ writes
    def add(self, job_id: str, job_input: Any, *, prefix: str, execution_timeout: float | None,
            submitted: float) -> None:
        self._db.execute(
            "INSERT INTO jobs (id, status, input, prefix, execution_timeout, submitted) VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, "IN_QUEUE", json.dumps(job_input), prefix, execution_timeout, submitted),
        )

    def start(self, job_id: str, started: float) -> None:
        self._db.execute("UPDATE jobs SET status = 'IN_PROGRESS', started = ? WHERE id = ?", (started, job_id))

    def finish(self, job_id: str, status: str, finished: float, *, output: dict[str, Any] | None = None,
               error: str | None = None) -> None:
        # The input (a picture can be megabytes) is dropped: a finished job no longer needs it.
        self._db.execute(
            "UPDATE jobs SET status = ?, finished = ?, output = ?, error = ?, input = NULL WHERE id = ?",
            (status, finished, None if output is None else json.dumps(output), error, job_id),
        )

    def expire(self, before: float) -> int:
        return self._db.execute("DELETE FROM jobs WHERE finished IS NOT NULL AND finished < ?", (before,)).rowcount

    # ------------------------------------------------------------ reads
    def get(self, job_id: str) -> Row | None:
        values = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if values is None else _row(values)

    def input_of(self, job_id: str) -> Any:
        values = self._db.execute("SELECT input FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if values is None or values[0] is None else json.loads(values[0])

    def with_status(self, status: str, limit: int | None = None) -> list[Row]:
        sql = f"SELECT {_COLUMNS} FROM jobs WHERE status = ? ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_row(v) for v in self._db.execute(sql, (status,))]

    def count(self, status: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,)).fetchone()[0]


def default_db_path() -> Path:
    return Path(os.environ.get("SERVE_DB", "serve-jobs.sqlite3"))
