"""The TTL column and the reaper: expiry and extension race safely in SQLite."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

from arker.local.store import Store, VmRow, utc_now_iso
from arker.local.vm_expiry import Expiry, TtlReaper


def _store_with(tmp_path: Path, *ids: str) -> Store:
    store = Store(tmp_path / "arker.db")
    org = store.ensure_org("o")
    for vm_id in ids:
        store.insert_vm(VmRow(vm_id, org, None, False, "b", "r", utc_now_iso(), None))
    return store


def test_a_touch_before_the_claim_keeps_the_vm(tmp_path: Path) -> None:
    store = _store_with(tmp_path, "a")
    expiry = Expiry(tmp_path / "arker.db")
    now = datetime.now(timezone.utc)
    expiry.set("a", 1, now=now - timedelta(seconds=10))
    assert expiry.due(now) == ["a"]
    assert expiry.set("a", 3600, now=now) is not None  # the touch lands between due and claim
    assert not expiry.claim("a", now)
    assert store.get_vm("a") is not None


def test_a_claim_before_the_touch_makes_the_touch_miss(tmp_path: Path) -> None:
    store = _store_with(tmp_path, "a")
    expiry = Expiry(tmp_path / "arker.db")
    now = datetime.now(timezone.utc)
    expiry.set("a", 1, now=now - timedelta(seconds=10))
    assert expiry.claim("a", now)
    assert expiry.set("a", 3600) is None
    assert store.get_vm("a") is None


def test_vms_without_a_ttl_are_never_due(tmp_path: Path) -> None:
    _store_with(tmp_path, "a")
    expiry = Expiry(tmp_path / "arker.db")
    far = datetime.now(timezone.utc) + timedelta(days=3650)
    assert expiry.due(far) == [] and not expiry.claim("a", far)


def test_the_column_is_added_to_an_older_database(tmp_path: Path) -> None:
    store = _store_with(tmp_path, "a")
    Expiry(tmp_path / "arker.db").close()
    again = Expiry(tmp_path / "arker.db")  # a second start finds the column there
    assert again.set("a", 5) is not None
    assert store.get_vm("a") is not None


def test_touches_racing_the_reaper_never_lose_a_touched_vm(tmp_path: Path) -> None:
    ids = [f"vm{i}" for i in range(200)]
    store = _store_with(tmp_path, *ids)
    expiry = Expiry(tmp_path / "arker.db")
    past = datetime.now(timezone.utc) - timedelta(seconds=5)
    for vm_id in ids:
        expiry.set(vm_id, 1, now=past)
    dropped: list[str] = []
    reaper = TtlReaper(Expiry(tmp_path / "arker.db"), dropped.append)
    touched: list[str] = []

    def toucher() -> None:
        for vm_id in ids:
            if expiry.set(vm_id, 3600) is not None:
                touched.append(vm_id)

    t = threading.Thread(target=toucher)
    t.start()
    reaper.sweep()
    t.join()
    reaper.sweep()
    assert set(touched).isdisjoint(dropped)
    assert set(touched) | set(dropped) == set(ids)
    assert {vm_id for vm_id in ids if store.get_vm(vm_id)} == set(touched)
