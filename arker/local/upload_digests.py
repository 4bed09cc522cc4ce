"""sha256 digests the server already knows, so it need not read 100 MiB back to hash it.

Both caches live in memory only and are bounded: a restart, or an entry pushed out,
just means the file is hashed when its digest is needed.
"""

from __future__ import annotations

import os
from typing import TypeVar

_V = TypeVar("_V")
_MAX_ENTRIES = 10_000


class StagedDigests:
    """sha256 of staged uploads that one write sent whole, keyed by (vm, upload id)."""

    def __init__(self) -> None:
        self._digests: dict[tuple[str, str], str] = {}

    def remember(self, vm_id: str, upload_id: str, hexdigest: str) -> None:
        """Record the digest of the upload's whole staged file."""
        _bounded_put(self._digests, (vm_id, upload_id), hexdigest)

    def forget(self, vm_id: str, upload_id: str) -> None:
        """Drop the digest: the staged file is being written again."""
        self._digests.pop((vm_id, upload_id), None)

    def take(self, vm_id: str, upload_id: str) -> str | None:
        """The recorded digest (None if unknown), forgotten as it is handed out."""
        return self._digests.pop((vm_id, upload_id), None)


class FileDigests:
    """sha256 of files committed into VMs, keyed by (vm, path), with the identity of the
    file each describes: lets a presigned read announce a digest without hashing."""

    def __init__(self) -> None:
        self._digests: dict[tuple[str, str], tuple[tuple[int, ...], str]] = {}

    def remember(self, vm_id: str, path: str, st: os.stat_result, hexdigest: str) -> None:
        """Record the digest of the file at ``path`` as it is now (``st``)."""
        _bounded_put(self._digests, (vm_id, path), (_identity(st), hexdigest))

    def lookup(self, vm_id: str, path: str, st: os.stat_result) -> str | None:
        """The digest of the file, if it is provably unchanged since it was recorded
        (same inode, size, mtime and ctime)."""
        known = self._digests.get((vm_id, path))
        if known is None or known[0] != _identity(st):
            return None
        return known[1]


def _bounded_put(table: dict[tuple[str, str], _V], key: tuple[str, str], value: _V) -> None:
    if key not in table and len(table) >= _MAX_ENTRIES:
        table.pop(next(iter(table)))  # the oldest entry
    table[key] = value


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
