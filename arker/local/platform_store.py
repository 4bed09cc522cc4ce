"""What the platform's API needs beyond the `Store`: descriptions, org names, pages.

The ``vm_details`` table (a VM's description) lives in the server's SQLite database next
to the `Store`'s tables, through a connection of its own (WAL lets both write), like
`arker.local.run_store`. VM rows stay the `Store`'s; this module only reads them, and
renames one (the single ``UPDATE`` of ``vms.name`` the platform's ``PATCH`` needs).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from .store import _VM_COLUMNS, VmRow, _vm

__all__ = ["PlatformStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vm_details (
    vm_id TEXT PRIMARY KEY,
    description TEXT
)
"""


class PlatformStore:
    """Descriptions, org names and keyset pages of VMs.

    Args:
        path: The SQLite database file (the `Store`'s).
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def org_name(self, org_id: str) -> str:
        """The org's name (its id when the row is missing)."""
        with self._lock:
            row = self._db.execute("SELECT name FROM orgs WHERE id = ?", (org_id,)).fetchone()
        return str(row[0]) if row else org_id

    def description(self, vm_id: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT description FROM vm_details WHERE vm_id = ?", (vm_id,)
            ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def set_description(self, vm_id: str, description: str | None) -> None:
        with self._lock:
            if description is None:
                self._db.execute("DELETE FROM vm_details WHERE vm_id = ?", (vm_id,))
            else:
                self._db.execute(
                    "INSERT INTO vm_details (vm_id, description) VALUES (?, ?)"
                    " ON CONFLICT(vm_id) DO UPDATE SET description = excluded.description",
                    (vm_id, description),
                )

    def forget(self, vm_id: str) -> None:
        """Drop what this table holds on a deleted VM."""
        self.set_description(vm_id, None)

    def rename(self, vm_id: str, name: str) -> None:
        with self._lock:
            self._db.execute("UPDATE vms SET name = ? WHERE id = ?", (name, vm_id))

    def page(
        self, org_id: str, *, after: tuple[str, str] | None, limit: int, public: bool | None
    ) -> list[VmRow]:
        """Up to ``limit`` of the org's VMs, oldest first, after the key ``(created_at, id)``."""
        where = "org_id = ?"
        args: list[object] = [org_id]
        if after is not None:
            where += " AND (created_at > ? OR (created_at = ? AND id > ?))"
            args += [after[0], after[0], after[1]]
        if public is not None:
            where += " AND is_public = ?"
            args.append(1 if public else 0)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_VM_COLUMNS} FROM vms WHERE {where} ORDER BY created_at, id LIMIT ?",
                [*args, limit],
            ).fetchall()
        return [_vm(r) for r in rows]
