"""Chain merges made ahead of the fork that needs them, on a thread of their own.

A fork that makes a chain longer than `layers.FLATTEN_THRESHOLD` merges its frozen
layers into one (flatten.py). Done inside the fork, that merge made every 32nd fork of
a chain a latency spike (its cost is the chain's file count). Frozen layers never
change, so the merge can be made earlier: once a fork leaves a chain half as long as
the threshold, its frozen layers are merged here in the background; the fork that
crosses the threshold then stacks the merged layer in place of that prefix, a
metadata change at the same point (and under the same locks) as the inline merge it
replaces. When the merge is not ready yet (forks faster than merges), the fork merges
inline as before.

A merged layer is pinned (garbage collection keeps it) from before it is renamed into
place for as long as its prefix is still on disk; every VM whose chain starts with that
prefix may use it. Merges are lost with the process: the next start's collection
removes a merged layer nobody references.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from .background import BackgroundQueue

__all__ = ["MergeAhead"]

log = logging.getLogger("arker.local")

_Key = tuple[str, tuple[str, ...]]  # (base dir, frozen layer ids bottom first)


class MergeAhead:
    """Merged layers of chain prefixes, made in the background.

    Args:
        merge: Merges frozen layers (bottom first) over a base dir into a new layer
            and returns its id; the id is pinned (kept from garbage collection) before
            the layer appears under it.
        unpin: Releases a merged layer's pin (once unused, collection removes it).
        threshold: The chain length past which a fork must merge.
    """

    def __init__(
        self,
        merge: Callable[[list[str], Path], str],
        unpin: Callable[[str], None],
        threshold: int,
    ) -> None:
        self._merge = merge
        self._unpin = unpin
        self._threshold = threshold
        self._lock = threading.Lock()
        self._ready: dict[_Key, str] = {}
        self._pending: set[_Key] = set()
        self._queue = BackgroundQueue("arker-merge-ahead")

    def shorten(self, frozen: list[str], base_dir: Path) -> list[str] | None:
        """``frozen`` with a merged prefix in place of its layers, or None (none ready).

        Only a result no longer than the threshold is returned.
        """
        with self._lock:
            best: list[str] | None = None
            for (base, prefix), merged in self._ready.items():
                n = len(prefix)
                if base == str(base_dir) and tuple(frozen[:n]) == prefix:
                    candidate = [merged, *frozen[n:]]
                    if best is None or len(candidate) < len(best):
                        best = candidate
        if best is None or len(best) > self._threshold:
            return None
        return best

    def consider(self, frozen: list[str], base_dir: Path) -> None:
        """Queue the merge of ``frozen`` (all frozen now) when its chain is long enough.

        Nothing is queued for a chain shorter than half the threshold, or one that a
        ready or queued merge already covers (starts with its prefix): a chain then
        costs one merge every half threshold of forks.
        """
        if len(frozen) < self._threshold // 2:
            return
        key: _Key = (str(base_dir), tuple(frozen))
        with self._lock:
            for base, prefix in (*self._ready, *self._pending):
                if base == key[0] and key[1][: len(prefix)] == prefix:
                    return
            self._pending.add(key)
        self._queue.put(lambda: self._run(key))

    def drop_stale(self, on_disk: set[str]) -> None:
        """Forget (and unpin) the merges whose prefix is no longer wholly on disk."""
        with self._lock:
            stale = [k for k in self._ready if not on_disk.issuperset(k[1])]
            dropped = [self._ready.pop(k) for k in stale]
        for lid in dropped:
            self._unpin(lid)

    def close(self) -> None:
        """Finish the merge in progress and drop the queued ones."""
        with self._lock:
            self._pending.clear()
        self._queue.close()

    def _run(self, key: _Key) -> None:
        with self._lock:
            if key not in self._pending:  # closing
                return
        try:
            merged = self._merge(list(key[1]), Path(key[0]))
        except OSError as exc:  # a layer collected under it: nothing needs it any more
            log.info("merge ahead of a fork failed: %s", exc)
            return
        finally:
            with self._lock:
                self._pending.discard(key)
        with self._lock:
            self._ready[key] = merged
