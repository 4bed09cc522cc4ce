"""Where an upload's bytes wait in its VM, and which of them have arrived.

An upload is staged in a hidden file of the VM's own filesystem
(``arker.local.sandbox.staging``) under `staging_name`; the byte ranges received are
recorded in the store as merged ``[start, end)`` pairs, so an upload survives a restart.
"""

from __future__ import annotations

import hashlib

from .engine_api import StagedFileLike


def staging_name(vm_id: str, upload_id: str) -> str:
    """The staged file's name in the VM. Client-minted ids are arbitrary text: hash them
    (with the VM, so a fork's inherited leftovers never collide with its own uploads)."""
    return hashlib.sha256(f"{vm_id}\0{upload_id}".encode()).hexdigest()[:40]


def merge_range(ranges: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """Add ``[start, end)`` to sorted disjoint ranges, merging overlaps and neighbours."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted([*ranges, (start, end)]):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def contiguous_prefix(ranges: list[tuple[int, int]]) -> int:
    """Length of the run of bytes held from offset 0."""
    return ranges[0][1] if ranges and ranges[0][0] == 0 else 0


def prefix_ranges(held: int) -> list[tuple[int, int]]:
    """The ranges of an upload holding its first ``held`` bytes."""
    return [(0, held)] if held else []


def prefix_sha256(staged: StagedFileLike, length: int) -> hashlib._Hash:
    """A sha256 fed with the first ``length`` bytes of a staged file."""
    digest = hashlib.sha256()
    for block in staged.read_blocks(length):
        digest.update(block)
    return digest
