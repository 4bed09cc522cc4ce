"""Every timestamp the server's database keeps is ISO 8601 UTC text, and a database
written before that (uploads and idempotency records with epoch seconds) still works."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from arker.local.store import Store

# The layout of the two tables before their timestamps became text (user_version 0).
_OLD_TABLES = """
CREATE TABLE uploads (
    vm_id TEXT NOT NULL, upload_id TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,
    ranges TEXT NOT NULL DEFAULT '[]', committed INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, PRIMARY KEY (vm_id, upload_id)
);
CREATE TABLE idempotency (
    org_id TEXT NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL, body_sha256 TEXT NOT NULL,
    response TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (org_id, scope, key)
);
"""

DAY = 24 * 3600.0


def _ago(seconds: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(seconds=seconds)


def test_new_rows_carry_iso_utc_timestamps(tmp_path: Path) -> None:
    store = Store(tmp_path / "arker.db")
    try:
        upload = store.create_upload("vm", "u1", "/home/user/x", 3)
        stamp = datetime.fromisoformat(upload.created_at)
        assert stamp.utcoffset() == timedelta(0)
        assert abs((datetime.now(timezone.utc) - stamp).total_seconds()) < 3600
        store.put_idempotent("org", "run:vm", "k", "digest", "{}")
        assert store.expire_uploads(_ago(DAY)) == []
        store.expire_idempotent(_ago(DAY))
        assert store.get_idempotent("org", "run:vm", "k") == ("digest", "{}")
        assert store.expire_uploads(_ago(-60)) == [("vm", "u1")]  # a cutoff in the future
        store.expire_idempotent(_ago(-60))
        assert store.get_idempotent("org", "run:vm", "k") is None
    finally:
        store.close()


def test_a_database_with_epoch_timestamps_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "arker.db"
    old = sqlite3.connect(path)
    old.executescript(_OLD_TABLES)
    now = time.time()
    old.executemany(
        "INSERT INTO uploads (vm_id, upload_id, path, size, created_at) VALUES (?, ?, ?, ?, ?)",
        [
            ("vm", "fresh", "/home/user/a", 10, now - 3600),
            ("vm", "stale", "/home/user/b", 10, now - 2 * DAY),
        ],
    )
    old.executemany(
        "INSERT INTO idempotency VALUES (?, ?, ?, ?, ?, ?)",
        [
            ("org", "run:vm", "fresh", "d1", "{}", now - 3600),
            ("org", "run:vm", "stale", "d2", "{}", int(now - 2 * DAY)),
        ],
    )
    old.commit()
    old.close()

    store = Store(path)
    try:
        fresh = store.get_upload("vm", "fresh")
        assert fresh is not None
        age = datetime.now(timezone.utc) - datetime.fromisoformat(fresh.created_at)
        assert timedelta(minutes=59) < age < timedelta(minutes=61)
        # Expiry compares the migrated rows with new ones correctly: by time, not by type.
        store.create_upload("vm", "new", "/home/user/c", 10)
        assert store.expire_uploads(_ago(DAY)) == [("vm", "stale")]
        assert store.get_upload("vm", "fresh") is not None
        assert store.get_upload("vm", "new") is not None
        store.expire_idempotent(_ago(DAY))
        assert store.get_idempotent("org", "run:vm", "fresh") == ("d1", "{}")
        assert store.get_idempotent("org", "run:vm", "stale") is None
    finally:
        store.close()
    # Opening it again is a no-op: the migration ran once.
    store = Store(path)
    try:
        assert store.get_upload("vm", "fresh") == fresh
    finally:
        store.close()
