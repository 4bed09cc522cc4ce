"""Spare empty uppers made ahead of need on the btrfs storage, committed before use.

A VM's upper there is a subvolume. btrfs cannot log an ``fsync`` in a subvolume made
in the running transaction: it commits the whole transaction instead, and that commit
grows with the number of subvolumes (one per VM layer), so the first durable write in
a fresh fork cost a full commit (benchmarks/btrfs_fsync.py). Renaming a subvolume has
the same effect, so spares cannot wait under another name: they are made under their
final layer id, kept out of garbage collection by `UpperPool.reserved`, and handed out
only once the transaction that made them has been committed. Making a subvolume also
joins the running transaction, which waits while a commit is in progress: with spares
a fork makes none.

A daemon thread, started by the first request for a spare (a server that never
forks makes none), keeps up to ``size`` spares: when a fork takes one and fewer than
half are left, it makes the missing ones, commits (``BTRFS_IOC_START_SYNC``, which
does not flush file data), then hands them out. An empty pool (a burst of forks) is
not an error: the caller makes its upper itself, as without the pool. Spares left
when the server stops belong to no VM: the garbage collection at the next start
removes them.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable

__all__ = ["UpperPool"]

log = logging.getLogger("arker.local")

_RETRY_S = 1.0  # after a failure to make spares (e.g. ENOSPC) before trying again


class UpperPool:
    """Spare uppers, made and committed by a daemon thread.

    Args:
        make: Makes the empty upper of a layer id (raises ``FileExistsError`` when the
            id is taken, ``OSError`` otherwise).
        commit: Commits the filesystem's running transaction (and waits for it).
        size: The most spares kept.
    """

    def __init__(
        self, make: Callable[[str], None], commit: Callable[[], None], *, size: int = 8
    ) -> None:
        self._make = make
        self._commit = commit
        self._size = size
        self._cond = threading.Condition()
        self._ready: list[str] = []  # committed: safe to hand out
        self._reserved: set[str] = set()  # ready, or being made: not garbage
        self._stop = False
        self._thread: threading.Thread | None = None

    def take(self) -> str | None:
        """A committed spare's layer id (now the caller's), or None when none is ready.

        The first call starts the thread that makes them.
        """
        with self._cond:
            if self._thread is None and not self._stop:
                self._thread = threading.Thread(
                    target=self._main, name="arker-upper-pool", daemon=True
                )
                self._thread.start()
            if not self._ready:
                self._cond.notify()
                return None
            lid = self._ready.pop()
            self._reserved.discard(lid)
            if len(self._ready) <= self._size // 2:
                self._cond.notify()
            return lid

    def reserved(self) -> set[str]:
        """Layer ids of the spares (ready or being made): garbage collection keeps them."""
        with self._cond:
            return set(self._reserved)

    def ready(self) -> int:
        """How many spares can be handed out now."""
        with self._cond:
            return len(self._ready)

    def close(self) -> None:
        """Stop the thread (waits for a fill in progress)."""
        with self._cond:
            self._stop = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _main(self) -> None:
        while True:
            with self._cond:
                while not self._stop and len(self._ready) > self._size // 2:
                    self._cond.wait()
                if self._stop:
                    return
                missing = self._size - len(self._ready)
            try:
                self._fill(missing)
            except OSError as exc:
                log.warning("cannot make spare uppers: %s", exc)
                with self._cond:
                    self._cond.wait(_RETRY_S)

    def _fill(self, count: int) -> None:
        made: list[str] = []
        try:
            while len(made) < count:
                lid = secrets.token_hex(4)
                with self._cond:
                    if self._stop:
                        break
                    self._reserved.add(lid)  # before it exists: GC lists the disk first
                try:
                    self._make(lid)
                except FileExistsError:
                    with self._cond:
                        self._reserved.discard(lid)
                    continue
                except BaseException:
                    with self._cond:
                        self._reserved.discard(lid)  # half made: GC removes it
                    raise
                made.append(lid)
        finally:
            if made:
                self._publish(made)

    def _publish(self, made: list[str]) -> None:
        try:
            self._commit()
        except BaseException:
            with self._cond:
                self._reserved.difference_update(made)  # uncommitted: GC removes them
            raise
        with self._cond:
            self._ready.extend(made)
