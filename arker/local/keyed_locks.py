"""Lock tables keyed by id, whose entries live only while someone holds or awaits them.

A plain ``dict`` of one lock per upload id grows by one lock for every upload ever
made. These tables count the holders and waiters of each key and drop its entry when
the last one leaves, so they hold only the keys in use right now.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Hashable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


@dataclass
class _AsyncSlot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class KeyedLocks(Generic[K]):
    """One `threading.Lock` per key, for blocking code on any thread."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._slots: dict[K, _Slot] = {}

    @contextmanager
    def hold(self, key: K) -> Iterator[None]:
        """Hold the lock of ``key`` for the ``with`` block."""
        with self._guard:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot()
            slot.users += 1
        try:
            with slot.lock:
                yield
        finally:
            with self._guard:
                slot.users -= 1
                if slot.users == 0:
                    del self._slots[key]

    def __len__(self) -> int:
        """Keys held or awaited right now."""
        with self._guard:
            return len(self._slots)


class AsyncKeyedLocks(Generic[K]):
    """One `asyncio.Lock` per key, for coroutines of one event loop (no thread guard:
    the table is only touched from the loop's thread)."""

    def __init__(self) -> None:
        self._slots: dict[K, _AsyncSlot] = {}

    @asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        """Hold the lock of ``key`` for the ``async with`` block."""
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _AsyncSlot()
        slot.users += 1
        try:
            async with slot.lock:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[key]

    def __len__(self) -> int:
        """Keys held or awaited right now."""
        return len(self._slots)
