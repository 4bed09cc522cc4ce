"""The records of live runs and named sessions (tables ``runs`` and ``sessions``).

They live in the server's SQLite database (`ServerConfig.db_path`) next to the
`Store`'s tables, through a connection of their own (WAL lets both write). Records
survive a restart; a run that was ``pending`` or ``running`` when the server stopped
is ``failed`` from the next start (`RunStore.fail_unfinished`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .store import utc_now_iso

__all__ = ["RunRow", "RunStore", "SessionRow"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    vm_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    command TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    completed_at TEXT,
    exit_code INTEGER,
    fail_reason TEXT,
    duration_ms REAL,
    cwd TEXT,
    timed_out INTEGER NOT NULL DEFAULT 0,
    stdout_size INTEGER NOT NULL DEFAULT 0,
    stderr_size INTEGER NOT NULL DEFAULT 0,
    stdout_truncated INTEGER NOT NULL DEFAULT 0,
    stderr_truncated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_vm ON runs(vm_id, run_id);
CREATE TABLE IF NOT EXISTS sessions (
    vm_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    org_id TEXT NOT NULL,
    cwd TEXT NOT NULL DEFAULT '',
    env TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (vm_id, session_id)
);
"""


@dataclass(frozen=True)
class RunRow:
    """One run's record (output sizes as last written; the live figures are in memory)."""

    run_id: str
    org_id: str
    vm_id: str
    session_id: str
    command: str
    state: str
    created_at: str
    started_at: str | None = None
    completed_at: str | None = None
    exit_code: int | None = None
    fail_reason: str | None = None
    duration_ms: float | None = None
    cwd: str | None = None
    timed_out: bool = False
    stdout_size: int = 0
    stderr_size: int = 0
    stdout_truncated: bool = False
    stderr_truncated: bool = False


_RUN_COLUMNS = [f.name for f in fields(RunRow)]
_BOOLS = {"timed_out", "stdout_truncated", "stderr_truncated"}


@dataclass(frozen=True)
class SessionRow:
    """A session made by ``POST …/sessions`` or named by a run on ``…/runs``."""

    vm_id: str
    session_id: str
    org_id: str
    cwd: str
    env: dict[str, str] | None
    created_at: str


class RunStore:
    """Runs and sessions in the server's database.

    Args:
        path: The SQLite database file (the `Store`'s).
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        with self._tx() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- runs ---------------------------------------------------------------------------

    def insert_run(self, row: RunRow) -> None:
        """Record a new run."""
        values = [getattr(row, c) for c in _RUN_COLUMNS]
        marks = ",".join("?" * len(values))
        with self._tx() as db:
            db.execute(f"INSERT INTO runs ({','.join(_RUN_COLUMNS)}) VALUES ({marks})", values)

    def update_run(self, run_id: str, **changes: Any) -> None:
        """Change some fields of a run's record."""
        unknown = set(changes) - set(_RUN_COLUMNS)
        if unknown:
            raise ValueError(f"unknown run fields: {sorted(unknown)}")
        sets = ",".join(f"{k} = ?" for k in changes)
        with self._tx() as db:
            db.execute(f"UPDATE runs SET {sets} WHERE run_id = ?", [*changes.values(), run_id])

    def get_run(self, vm_id: str, run_id: str) -> RunRow | None:
        """The run ``run_id`` of VM ``vm_id``, if recorded."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {','.join(_RUN_COLUMNS)} FROM runs WHERE run_id = ? AND vm_id = ?",
                (run_id, vm_id),
            ).fetchone()
        return None if row is None else _run(row)

    def list_runs(self, vm_id: str, *, limit: int, before: str | None) -> list[RunRow]:
        """Up to ``limit`` runs of the VM, newest first, older than run ``before``."""
        query = f"SELECT {','.join(_RUN_COLUMNS)} FROM runs WHERE vm_id = ?"
        args: list[Any] = [vm_id]
        if before is not None:
            query += " AND run_id < ?"
            args.append(before)
        query += " ORDER BY run_id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            return [_run(r) for r in self._db.execute(query, args).fetchall()]

    def fail_unfinished(self, reason: str) -> list[RunRow]:
        """Mark every ``pending``/``running`` run ``failed`` (at start); return them."""
        now = utc_now_iso()
        with self._tx() as db:
            rows = db.execute(
                f"SELECT {','.join(_RUN_COLUMNS)} FROM runs WHERE state IN ('pending', 'running')"
            ).fetchall()
            db.execute(
                "UPDATE runs SET state = 'failed', fail_reason = ?, completed_at = ? "
                "WHERE state IN ('pending', 'running')",
                (reason, now),
            )
        return [replace(_run(r), state="failed", fail_reason=reason) for r in rows]

    def vm_ids(self) -> set[str]:
        """The VMs that have runs or sessions recorded."""
        with self._lock:
            rows = self._db.execute(
                "SELECT vm_id FROM runs UNION SELECT vm_id FROM sessions"
            ).fetchall()
        return {r[0] for r in rows}

    def delete_runs_of_vm(self, vm_id: str) -> list[str]:
        """Forget the VM's runs (its output files are the caller's); return their ids."""
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT run_id FROM runs WHERE vm_id = ?", (vm_id,))]
            db.execute("DELETE FROM runs WHERE vm_id = ?", (vm_id,))
            db.execute("DELETE FROM sessions WHERE vm_id = ?", (vm_id,))
        return ids

    # --- sessions -----------------------------------------------------------------------

    def ensure_session(
        self,
        org_id: str,
        vm_id: str,
        session_id: str,
        cwd: str = "",
        env: dict[str, str] | None = None,
    ) -> tuple[SessionRow, bool]:
        """The session, created if unknown; the flag says whether it was created."""
        with self._tx() as db:
            found = self._session(db, vm_id, session_id)
            if found is not None:
                return found, False
            db.execute(
                "INSERT INTO sessions (vm_id, session_id, org_id, cwd, env, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    vm_id,
                    session_id,
                    org_id,
                    cwd,
                    None if env is None else json.dumps(env),
                    utc_now_iso(),
                ),
            )
            created = self._session(db, vm_id, session_id)
        assert created is not None
        return created, True

    def get_session(self, vm_id: str, session_id: str) -> SessionRow | None:
        """A recorded session of the VM."""
        with self._lock:
            return self._session(self._db, vm_id, session_id)

    def list_sessions(self, vm_id: str) -> list[SessionRow]:
        """The VM's recorded sessions, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT vm_id, session_id, org_id, cwd, env, created_at FROM sessions "
                "WHERE vm_id = ? ORDER BY created_at, session_id",
                (vm_id,),
            ).fetchall()
        return [_session(r) for r in rows]

    def delete_session(self, vm_id: str, session_id: str) -> bool:
        """Forget a session; False when it was not recorded."""
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM sessions WHERE vm_id = ? AND session_id = ?", (vm_id, session_id)
            )
            return cur.rowcount > 0

    @staticmethod
    def _session(db: sqlite3.Connection, vm_id: str, session_id: str) -> SessionRow | None:
        row = db.execute(
            "SELECT vm_id, session_id, org_id, cwd, env, created_at FROM sessions "
            "WHERE vm_id = ? AND session_id = ?",
            (vm_id, session_id),
        ).fetchone()
        return None if row is None else _session(row)


def _run(row: tuple[Any, ...]) -> RunRow:
    values: dict[str, Any] = {
        c: (bool(v) if c in _BOOLS else v) for c, v in zip(_RUN_COLUMNS, row, strict=True)
    }
    return RunRow(**values)


def _session(row: tuple[Any, ...]) -> SessionRow:
    vm_id, session_id, org_id, cwd, env, created_at = row
    return SessionRow(
        vm_id, session_id, org_id, cwd, None if env is None else json.loads(env), created_at
    )
