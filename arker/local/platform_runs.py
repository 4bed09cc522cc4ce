"""``GET /v1/runs``: the organisation's run activity across its VMs, newest first.

The platform lists one row per run request with its measured costs; a local server
records runs (`arker.local.run_store`), not requests, so each row is one run: its
command, state, exit code and duration. What is not measured locally (queueing, CPU and
memory use, request bodies, sizes) is ``0`` or empty, never an estimate.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import REGION
from .store import iso_utc

__all__ = ["OrgRuns"]

_COLUMNS = "run_id, vm_id, session_id, command, state, created_at, exit_code, duration_ms"


def _iso(epoch_s: int) -> str:
    return iso_utc(datetime.fromtimestamp(max(0, min(epoch_s, 253402300799)), timezone.utc))


class OrgRuns:
    """Reads the ``runs`` table (a connection of its own; never writes).

    Args:
        path: The SQLite database file (the `Store`'s).
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout=5000")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def rows(
        self,
        org_id: str,
        *,
        since: int,
        until: int,
        vm_ids: list[str] | None,
        search: str | None,
        limit: int,
        offset: int,
    ) -> list[dict[str, Any]]:
        """The org's runs created in ``[since, until)`` (epoch seconds), newest first."""
        where = "org_id = ? AND created_at >= ? AND created_at < ?"
        args: list[object] = [org_id, _iso(since), _iso(until)]
        if vm_ids:
            where += f" AND vm_id IN ({','.join('?' * len(vm_ids))})"
            args += vm_ids
        if search:
            where += " AND instr(command, ?) > 0"
            args.append(search)
        try:
            with self._lock:
                found = self._db.execute(
                    f"SELECT {_COLUMNS} FROM runs WHERE {where}"
                    " ORDER BY created_at DESC, run_id DESC LIMIT ? OFFSET ?",
                    [*args, limit, offset],
                ).fetchall()
        except sqlite3.OperationalError:  # no run was ever recorded (no table yet)
            return []
        return [_row(r) for r in found]


def _row(r: tuple[Any, ...]) -> dict[str, Any]:
    run_id, vm_id, session_id, command, state, created_at, exit_code, duration_ms = r
    took = float(duration_ms or 0.0)
    return {
        "t_ms": int(datetime.fromisoformat(created_at).timestamp() * 1000),
        "request_id": run_id,
        "run_id": run_id,
        "vm_id": vm_id,
        "session_id": session_id,
        "region": REGION,
        "provider": "local",
        "status": 200,
        "total_ms": took,
        "queue_ms": 0.0,
        "executor_duration_ms": int(took),
        "executor_kind": "bwrap",
        "executor_cpu_ms": 0,
        "executor_mem_mb": 0,
        "vm_vcpus": 0,
        "vm_memory_mib": 0,
        "path": f"/v1/vms/{vm_id}/runs",
        "method": "POST",
        "command": command,
        "source_vm_id": "",
        "exit_code": exit_code,
        "endpoint": "run",
        "api_key_prefix": "",
        "body_bytes_in": 0,
        "body_bytes_out": 0,
        "body_in": "",
        "body_out": "",
        "state": state,
    }
