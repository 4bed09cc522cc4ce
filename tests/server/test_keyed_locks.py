"""The per-upload lock tables hold only the keys in use (they used to grow forever)."""

from __future__ import annotations

import asyncio
import threading

from arker.local.keyed_locks import AsyncKeyedLocks, KeyedLocks


def test_keyed_lock_entries_are_freed_after_use() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    for key in ("a", "b", "a"):
        with locks.hold(key):
            assert len(locks) == 1
    assert len(locks) == 0


def test_keyed_lock_serialises_holders_of_one_key_and_frees_it_after_the_last() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    inside = 0
    most = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        for _ in range(200):
            with locks.hold("k"):
                with guard:
                    inside += 1
                    most = max(most, inside)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 1
    assert len(locks) == 0


def test_async_keyed_lock_waiters_keep_the_entry_until_the_last_leaves() -> None:
    async def main() -> list[str]:
        locks: AsyncKeyedLocks[str] = AsyncKeyedLocks()
        order: list[str] = []

        async def hold(name: str, release: asyncio.Event | None) -> None:
            async with locks.hold("k"):
                order.append(f"{name} in")
                if release is not None:
                    await release.wait()
                order.append(f"{name} out")

        release = asyncio.Event()
        first = asyncio.create_task(hold("first", release))
        await asyncio.sleep(0)
        second = asyncio.create_task(hold("second", None))
        await asyncio.sleep(0)
        assert len(locks) == 1  # one key: its holder and its waiter share the entry
        release.set()
        await asyncio.gather(first, second)
        assert len(locks) == 0
        try:
            async with locks.hold("k"):
                raise RuntimeError("the PUT failed")
        except RuntimeError:
            pass
        assert len(locks) == 0  # freed on the way out of a failure as well
        return order

    assert asyncio.run(main()) == [
        "first in",
        "first out",
        "second in",
        "second out",
    ]
