"""SQLite (WAL) store: orgs, API keys, VMs, uploads and idempotency records.

One connection guarded by a lock: every statement is short, and a single writer keeps
the ordering rules of the start-up GC simple. WAL plus ``synchronous=NORMAL``: each
committed transaction survives ``kill -9`` of the server (the bytes are in the kernel's
page cache); only a power loss can roll back the last transactions, which is also the
durability the sandbox engine gives forks. ``FULL`` would fsync on every commit, and on
ext4 (data=ordered) that fsync first writes out every dirty byte on the filesystem: a
run or fork right after a VM wrote a lot of data would wait for all of it to reach the
disk.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .._wire import SORT_KEYS

SYSTEM_ORG = "system"
"""Owner of the public base image."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orgs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_sha256 TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vms (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    name TEXT,
    is_public INTEGER NOT NULL DEFAULT 0,
    base_image TEXT NOT NULL,
    region TEXT NOT NULL,
    created_at TEXT NOT NULL,
    parent TEXT
);
CREATE INDEX IF NOT EXISTS vms_org ON vms(org_id, created_at);
CREATE INDEX IF NOT EXISTS vms_name ON vms(name);
CREATE TABLE IF NOT EXISTS uploads (
    vm_id TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    ranges TEXT NOT NULL DEFAULT '[]',
    committed INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    PRIMARY KEY (vm_id, upload_id)
);
CREATE TABLE IF NOT EXISTS idempotency (
    org_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    body_sha256 TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (org_id, scope, key)
);
"""


_SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of the current layout. 0: uploads and idempotency records kept
their ``created_at`` as epoch seconds (REAL); from 1 every timestamp is ISO 8601 text."""


def hash_key(api_key: str) -> str:
    """The sha256 hex digest stored in place of an API key."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def utc_now_iso() -> str:
    """Current time as ISO 8601 UTC with microseconds (sorts as text): the one form of
    every timestamp in the database."""
    return iso_utc(datetime.now(timezone.utc))


def iso_utc(when: datetime) -> str:
    """``when`` (timezone-aware) as stored: ISO 8601 UTC with microseconds."""
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _epoch_to_iso(value: float) -> str:
    return iso_utc(datetime.fromtimestamp(value, timezone.utc))


@dataclass(frozen=True)
class VmRow:
    """One row of the ``vms`` table."""

    id: str
    org_id: str
    name: str | None
    is_public: bool
    base_image: str
    region: str
    created_at: str
    parent: str | None


@dataclass(frozen=True)
class UploadRow:
    """One row of the ``uploads`` table; ``ranges`` are merged ``[start, end)`` pairs."""

    vm_id: str
    upload_id: str
    path: str
    size: int
    ranges: list[tuple[int, int]]
    committed: bool
    created_at: str

    @property
    def received_bytes(self) -> int:
        """How many distinct bytes of the file have arrived."""
        return sum(end - start for start, end in self.ranges)

    @property
    def complete(self) -> bool:
        """True once every byte of ``[0, size)`` has arrived."""
        return self.received_bytes >= self.size


_VM_COLUMNS = "id, org_id, name, is_public, base_image, region, created_at, parent"


def _order_by(key: str) -> str:
    """The ORDER BY clause of a wire sort key (``-`` = descending). Equal values are
    ordered too (newest first, then by id), so pages by offset never overlap."""
    column = key.lstrip("-")
    direction = "DESC" if key.startswith("-") else "ASC"
    ties = f"id {direction}" if column == "created_at" else "created_at DESC, id DESC"
    return f"{column} {direction}, {ties}"


_SORTS: dict[str, str] = {key: _order_by(key) for key in SORT_KEYS}


class Store:
    """All persistent server state except the VM filesystems.

    Args:
        path: The SQLite database file (created if missing).
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.create_function("arker_epoch_to_iso", 1, _epoch_to_iso, deterministic=True)
        with self._tx() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if int(db.execute("PRAGMA user_version").fetchone()[0]) < _SCHEMA_VERSION:
                _migrate_to_iso_timestamps(db)
                db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
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

    # --- orgs and keys -----------------------------------------------------------------

    def ensure_org(self, name: str) -> str:
        """The id of the org called ``name``, creating it if needed."""
        with self._tx() as db:
            row = db.execute("SELECT id FROM orgs WHERE name = ?", (name,)).fetchone()
            if row:
                return str(row[0])
            org_id = name if name == SYSTEM_ORG else f"org_{secrets.token_hex(8)}"
            db.execute(
                "INSERT INTO orgs (id, name, created_at) VALUES (?, ?, ?)",
                (org_id, name, utc_now_iso()),
            )
            return org_id

    def org_id_named(self, name: str) -> str | None:
        """The id of the org called ``name``, or None (never creates one)."""
        with self._lock:
            row = self._db.execute("SELECT id FROM orgs WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def add_key(self, org_id: str, api_key: str) -> None:
        """Register ``api_key`` for ``org_id`` (idempotent; a key maps to one org)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO api_keys (key_sha256, org_id, created_at) VALUES (?, ?, ?)",
                (hash_key(api_key), org_id, utc_now_iso()),
            )

    def org_for_key(self, api_key: str) -> str | None:
        """The org an API key belongs to, or None for an unknown key."""
        with self._lock:
            row = self._db.execute(
                "SELECT org_id FROM api_keys WHERE key_sha256 = ?", (hash_key(api_key),)
            ).fetchone()
        return str(row[0]) if row else None

    # --- vms ---------------------------------------------------------------------------

    def insert_vm(self, vm: VmRow) -> None:
        """Add a VM row: the commit point of a fork."""
        with self._tx() as db:
            db.execute(
                f"INSERT OR REPLACE INTO vms ({_VM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    vm.id,
                    vm.org_id,
                    vm.name,
                    int(vm.is_public),
                    vm.base_image,
                    vm.region,
                    vm.created_at,
                    vm.parent,
                ),
            )

    def get_vm(self, vm_id: str) -> VmRow | None:
        """The VM with id ``vm_id`` regardless of owner, or None."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_VM_COLUMNS} FROM vms WHERE id = ?", (vm_id,)
            ).fetchone()
        return _vm(row) if row else None

    def find_own(self, org_id: str, name: str) -> VmRow | None:
        """Newest VM named ``name`` that ``org_id`` owns, public or not."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_VM_COLUMNS} FROM vms WHERE name = ? AND org_id = ?"
                " ORDER BY created_at DESC, id DESC LIMIT 1",
                (name, org_id),
            ).fetchone()
        return _vm(row) if row else None

    def find_public(self, name: str, publisher: str | None) -> VmRow | None:
        """Newest public VM named ``name`` of ``publisher``.

        With ``publisher`` None: of the name's earliest publisher, the org whose oldest
        public VM of that name is the oldest of all (so a later org never shadows it).
        """
        where = "name = ? AND is_public = 1"
        with self._lock:
            if publisher is None:
                first = self._db.execute(
                    f"SELECT org_id FROM vms WHERE {where} ORDER BY created_at, id LIMIT 1",
                    (name,),
                ).fetchone()
                if first is None:
                    return None
                publisher = str(first[0])
            row = self._db.execute(
                f"SELECT {_VM_COLUMNS} FROM vms WHERE {where} AND org_id = ?"
                " ORDER BY created_at DESC, id DESC LIMIT 1",
                (name, publisher),
            ).fetchone()
        return _vm(row) if row else None

    def names_of_org(self, org_id: str) -> set[str]:
        """Every VM name ``org_id`` uses."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT name FROM vms WHERE org_id = ? AND name IS NOT NULL", (org_id,)
            ).fetchall()
        return {str(r[0]) for r in rows}

    def delete_vm(self, vm_id: str) -> None:
        """Remove a VM row and its uploads: the commit point of a delete."""
        with self._tx() as db:
            db.execute("DELETE FROM vms WHERE id = ?", (vm_id,))
            db.execute("DELETE FROM uploads WHERE vm_id = ?", (vm_id,))

    def list_vms(
        self, org_id: str, *, limit: int, offset: int, q: str | None, sort: str
    ) -> tuple[list[VmRow], int]:
        """One page of ``org_id``'s VMs and the total count of matches."""
        where = "org_id = ?"
        args: list[object] = [org_id]
        if q:
            # instr() is a plain substring test: no LIKE wildcards to escape.
            where += " AND instr(COALESCE(name, ''), ?) > 0"
            args.append(q)
        with self._lock:
            total = int(
                self._db.execute(f"SELECT COUNT(*) FROM vms WHERE {where}", args).fetchone()[0]
            )
            rows = self._db.execute(
                f"SELECT {_VM_COLUMNS} FROM vms WHERE {where} ORDER BY {_SORTS[sort]}"
                " LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
        return [_vm(r) for r in rows], total

    def vm_ids(self) -> set[str]:
        """Ids of every VM the database knows (for the engine's GC)."""
        with self._lock:
            return {str(r[0]) for r in self._db.execute("SELECT id FROM vms")}

    # --- uploads -----------------------------------------------------------------------

    def get_upload(self, vm_id: str, upload_id: str) -> UploadRow | None:
        """The upload ``upload_id`` of ``vm_id``, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT vm_id, upload_id, path, size, ranges, committed, created_at"
                " FROM uploads WHERE vm_id = ? AND upload_id = ?",
                (vm_id, upload_id),
            ).fetchone()
        return _upload(row) if row else None

    def create_upload(self, vm_id: str, upload_id: str, path: str, size: int) -> UploadRow:
        """Insert an upload (a no-op when it exists) and return the stored row."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO uploads (vm_id, upload_id, path, size, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (vm_id, upload_id, path, size, utc_now_iso()),
            )
        row = self.get_upload(vm_id, upload_id)
        assert row is not None
        return row

    def set_upload_ranges(self, vm_id: str, upload_id: str, ranges: list[tuple[int, int]]) -> None:
        """Record which byte ranges have durably arrived."""
        with self._tx() as db:
            db.execute(
                "UPDATE uploads SET ranges = ? WHERE vm_id = ? AND upload_id = ?",
                (json.dumps(ranges), vm_id, upload_id),
            )

    def mark_committed(self, vm_id: str, upload_id: str) -> None:
        """Record that the upload's bytes are in place in the VM."""
        with self._tx() as db:
            db.execute(
                "UPDATE uploads SET committed = 1 WHERE vm_id = ? AND upload_id = ?",
                (vm_id, upload_id),
            )

    def expire_uploads(self, older_than: datetime) -> list[tuple[str, str]]:
        """Drop uploads created before ``older_than``; return the (vm_id, upload_id) of
        those never committed (they may have bytes staged in their VM)."""
        cutoff = iso_utc(older_than)
        with self._tx() as db:
            rows = db.execute(
                "SELECT vm_id, upload_id FROM uploads WHERE created_at < ? AND committed = 0",
                (cutoff,),
            ).fetchall()
            db.execute("DELETE FROM uploads WHERE created_at < ?", (cutoff,))
        return [(str(a), str(b)) for a, b in rows]

    # --- idempotency -------------------------------------------------------------------

    def get_idempotent(self, org_id: str, scope: str, key: str) -> tuple[str, str] | None:
        """(body_sha256, response JSON) stored for a key, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT body_sha256, response FROM idempotency"
                " WHERE org_id = ? AND scope = ? AND key = ?",
                (org_id, scope, key),
            ).fetchone()
        return (str(row[0]), str(row[1])) if row else None

    def put_idempotent(
        self, org_id: str, scope: str, key: str, body_sha256: str, response: str
    ) -> None:
        """Store the outcome of the first request made with a key."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO idempotency"
                " (org_id, scope, key, body_sha256, response, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (org_id, scope, key, body_sha256, response, utc_now_iso()),
            )

    def expire_idempotent(self, older_than: datetime) -> None:
        """Forget idempotency records created before ``older_than``."""
        with self._tx() as db:
            db.execute("DELETE FROM idempotency WHERE created_at < ?", (iso_utc(older_than),))


def _migrate_to_iso_timestamps(db: sqlite3.Connection) -> None:
    """Rewrite the epoch-seconds ``created_at`` of a version-0 database as ISO text.

    The columns keep the REAL type they were declared with; SQLite stores ISO text in
    them as text (it is no number), so they compare as text like every other timestamp.
    """
    for table in ("uploads", "idempotency"):
        db.execute(
            f"UPDATE {table} SET created_at = arker_epoch_to_iso(created_at)"
            " WHERE typeof(created_at) IN ('integer', 'real')"
        )


def _vm(row: tuple[object, ...]) -> VmRow:
    id_, org_id, name, is_public, base_image, region, created_at, parent = row
    return VmRow(
        id=str(id_),
        org_id=str(org_id),
        name=None if name is None else str(name),
        is_public=bool(is_public),
        base_image=str(base_image),
        region=str(region),
        created_at=str(created_at),
        parent=None if parent is None else str(parent),
    )


def _upload(row: tuple[object, ...]) -> UploadRow:
    vm_id, upload_id, path, size, ranges, committed, created_at = row
    return UploadRow(
        vm_id=str(vm_id),
        upload_id=str(upload_id),
        path=str(path),
        size=int(str(size)),
        ranges=[(int(a), int(b)) for a, b in json.loads(str(ranges))],
        committed=bool(committed),
        created_at=str(created_at),
    )
