"""The fork diff's public models: `ForkDiff` and its `DiffEntry` items."""

from __future__ import annotations

from pydantic import Field

from ._models import _PublicModel
from ._wire_diff import ForkDiffResponse

__all__ = ["DiffEntry", "ForkDiff"]


class DiffEntry(_PublicModel):
    """One path a fork changed.

    Attributes:
        path: The absolute path in the VM.
        size: Bytes now (added, modified), or before (deleted); a link's target length.
        mode: Permission bits now (before, for a deleted path), when the server says.
        sha256: Hex digest of the content now, for regular files whose content is known
            (None for deleted paths, links, and files the VM user cannot read).
    """

    path: str
    size: int
    mode: int | None = None
    sha256: str | None = None


class ForkDiff(_PublicModel):
    """What a VM changed relative to the VM it was forked from, as of the fork.

    ``modified`` means the content, type or permission bits changed: a file merely
    rewritten with the same bytes, or changed and changed back, is not in it.

    Attributes:
        path: The directory compared.
        added: Paths the parent did not have, by path.
        modified: Paths both have, changed, by path.
        deleted: Paths the parent had and the VM no longer has, by path.
        truncated: The server stopped at its bound: the lists are incomplete.
    """

    path: str
    added: list[DiffEntry] = Field(default_factory=list)
    modified: list[DiffEntry] = Field(default_factory=list)
    deleted: list[DiffEntry] = Field(default_factory=list)
    truncated: bool = False

    def __bool__(self) -> bool:
        return bool(self.added or self.modified or self.deleted)

    @classmethod
    def from_wire(cls, wire: ForkDiffResponse) -> ForkDiff:
        return cls.model_validate(wire.model_dump())
