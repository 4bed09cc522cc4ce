"""Spare uppers on the btrfs storage: forks take subvolumes committed ahead of them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from arker.local.sandbox.upper_pool import UpperPool

from .test_sandbox_btrfs import BASE_VM, BUDGET, open_btrfs, out


def wait_for(cond: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_spare_is_handed_out_only_after_the_commit_that_made_it() -> None:
    events: list[str] = []
    committed = threading.Event()
    release = threading.Event()

    def make(lid: str) -> None:
        events.append(f"make {lid}")

    def commit() -> None:
        release.wait(10)
        events.append("commit")
        committed.set()

    pool = UpperPool(make, commit, size=2)
    try:
        assert pool.take() is None  # starts the thread
        wait_for(lambda: len(events) == 2)
        assert pool.take() is None  # made, not committed yet
        assert len(pool.reserved()) == 2  # but not garbage either
        release.set()
        wait_for(pool.ready)
        lid = pool.take()
        assert lid is not None and events.index("commit") > events.index(f"make {lid}")
        assert lid not in pool.reserved()  # the caller's now
    finally:
        release.set()
        pool.close()


def test_a_spare_is_reserved_before_it_is_made_so_gc_cannot_take_it() -> None:
    seen: list[bool] = []
    pools: list[UpperPool] = []
    started = threading.Event()

    def make(lid: str) -> None:
        started.wait(10)
        seen.append(lid in pools[0].reserved())

    pool = UpperPool(make, lambda: None, size=1)
    pool.take()
    pools.append(pool)
    started.set()
    wait_for(lambda: seen)
    pool.close()
    assert seen == [True]


def test_no_spare_is_made_before_one_is_asked_for() -> None:
    made: list[str] = []
    pool = UpperPool(made.append, lambda: None, size=2)
    time.sleep(0.2)
    pool.close()
    assert made == [] and pool.reserved() == set()


def test_a_failed_commit_gives_up_the_spares_and_the_pool_tries_again() -> None:
    calls: list[str] = []

    def commit() -> None:
        calls.append("commit")
        if len(calls) == 1:
            raise OSError("no space")

    pool = UpperPool(lambda lid: None, commit, size=1)
    try:
        pool.take()
        wait_for(pool.ready)
        assert len(calls) == 2 and len(pool.reserved()) == 1
    finally:
        pool.close()


def test_forks_on_btrfs_get_uppers_made_in_an_already_committed_transaction(
    sandbox_data_dir: Path,
) -> None:
    eng = open_btrfs(sandbox_data_dir, BUDGET)
    try:
        pool = eng._store.pool
        assert pool is not None
        # made on the first request (the base VM's upper): none on a server that never forks
        wait_for(lambda: pool.ready() > 2)
        spares = pool.reserved()
        eng.fork(BASE_VM, "a")
        out(eng, "a", "echo x > f")
        eng.fork("a", "b")  # both get a new upper
        uppers = {eng._vms[v].meta.upper for v in ("a", "b")}
        assert uppers <= spares  # handed out only once committed (tests above)
        # garbage collection leaves the remaining spares alone
        eng.gc({"a", "b"})
        left = pool.reserved()
        assert left and all((eng._store.layers_dir / lid / "root").is_dir() for lid in left)
        assert out(eng, "b", "cat f") == "x\n"
    finally:
        eng.close()
