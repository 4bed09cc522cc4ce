"""VMs with a time to live: the ``vms.expires_at`` column, and the reaper that deletes
the VMs whose time is up.

The column lives in the same SQLite database as the rest of the ``vms`` table (its own
connection, like `run_store`); a database from before it gets it added at start-up.
Expiry and extension race safely because each is one statement: the reaper deletes a
row only ``WHERE expires_at <= now`` (the row is the VM's commit point, as for a
``DELETE``), and ``touch`` moves ``expires_at`` only while the row exists. Whichever
runs first wins: a touched VM is never reaped, a reaped VM answers ``touch`` with 404.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .store import iso_utc

__all__ = ["Expiry", "TtlReaper"]

log = logging.getLogger("arker.local")


class Expiry:
    """Reads and writes of ``vms.expires_at`` (ISO 8601 UTC text, NULL: no TTL).

    Args:
        path: The server's SQLite database (the ``vms`` table must exist).
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout=5000")
        with self._lock:
            columns = {str(r[1]) for r in self._db.execute("PRAGMA table_info(vms)")}
            if "expires_at" not in columns:
                self._db.execute("ALTER TABLE vms ADD COLUMN expires_at TEXT")
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS vms_expiry ON vms(expires_at) "
                "WHERE expires_at IS NOT NULL"
            )

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def set(self, vm_id: str, ttl: float, *, now: datetime | None = None) -> datetime | None:
        """Expire ``vm_id`` ``ttl`` seconds from ``now``; None when the VM is gone."""
        when = (now or datetime.now(timezone.utc)) + timedelta(seconds=ttl)
        with self._lock:
            cur = self._db.execute(
                "UPDATE vms SET expires_at = ? WHERE id = ?", (iso_utc(when), vm_id)
            )
        return when if cur.rowcount == 1 else None

    def of(self, vm_ids: Iterable[str]) -> dict[str, datetime]:
        """The expiry of each of ``vm_ids`` that has one."""
        ids = list(vm_ids)
        out: dict[str, datetime] = {}
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT id, expires_at FROM vms WHERE id IN ({marks}) "
                    "AND expires_at IS NOT NULL",
                    chunk,
                )
                out.update({str(i): datetime.fromisoformat(str(e)) for i, e in rows})
        return out

    def due(self, now: datetime, limit: int = 100) -> list[str]:
        """Ids of VMs whose time is up (oldest expiry first)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM vms WHERE expires_at IS NOT NULL AND expires_at <= ? "
                "ORDER BY expires_at LIMIT ?",
                (iso_utc(now), limit),
            )
            return [str(r[0]) for r in rows]

    def claim(self, vm_id: str, now: datetime) -> bool:
        """Delete the row of ``vm_id`` if its time is still up at ``now`` (the commit
        point of the VM's deletion); False when a touch moved it, or it is gone."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM vms WHERE id = ? AND expires_at IS NOT NULL AND expires_at <= ?",
                (vm_id, iso_utc(now)),
            )
        return cur.rowcount == 1


class TtlReaper:
    """A daemon thread deleting expired VMs every ``interval_s`` seconds.

    Args:
        expiry: The expiry column.
        drop: Tears down a VM whose row was claimed (its engine state).
        interval_s: Seconds between sweeps.
    """

    def __init__(
        self, expiry: Expiry, drop: Callable[[str], None], interval_s: float = 1.0
    ) -> None:
        self._expiry = expiry
        self._drop = drop
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="arker-ttl-reaper", daemon=True)

    def start(self) -> None:
        """Start sweeping (the first sweep right away: VMs that expired while stopped)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sweeping and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def sweep(self) -> list[str]:
        """Delete every VM whose time is up now; return their ids."""
        reaped: list[str] = []
        while not self._stop.is_set():
            now = datetime.now(timezone.utc)
            due = self._expiry.due(now)
            for vm_id in due:
                if self._expiry.claim(vm_id, now):
                    reaped.append(vm_id)
                    try:
                        self._drop(vm_id)
                    except Exception as exc:  # the row is gone: start-up GC finishes it
                        log.warning("teardown of expired vm %s failed: %s", vm_id, exc)
            if len(due) < 100:
                return reaped
        return reaped

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:
                log.exception("ttl reaper sweep failed")
            self._stop.wait(self._interval)
