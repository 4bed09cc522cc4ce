"""The fork-diff and TTL extensions' wire models (``docs/wire-extensions.md``).

``GET /api/v1/vms/{vm_id}/diff?path=/home/user`` answers `ForkDiffResponse`: what the VM
changed under ``path`` relative to the VM it was forked from, as of the fork.
``POST /api/v1/vms/{vm_id}/touch`` with `TouchRequest` moves a VM's expiry.
"""

from __future__ import annotations

from pydantic import Field

from ._wire import MAX_TTL_S, Envelope, RequestModel, UtcDatetime, WireModel

__all__ = [
    "MAX_TTL_S",
    "DiffEntryWire",
    "ForkDiffResponse",
    "TouchRequest",
    "TouchResponse",
]


class DiffEntryWire(WireModel):
    """One changed path. For added and modified entries ``size`` and ``sha256`` describe
    the content now (``sha256`` only for regular files the VM user can read); for deleted
    ones the parent's size, and no digest."""

    path: str
    size: int = Field(ge=0)
    mode: int | None = None
    sha256: str | None = None


class ForkDiffResponse(Envelope):
    path: str
    added: list[DiffEntryWire] = Field(default_factory=list)
    modified: list[DiffEntryWire] = Field(default_factory=list)
    deleted: list[DiffEntryWire] = Field(default_factory=list)
    truncated: bool = False


class TouchRequest(RequestModel):
    """Expire the VM ``ttl`` seconds from now."""

    ttl: int = Field(ge=1, le=MAX_TTL_S)


class TouchResponse(Envelope):
    vm_id: str
    expires_at: UtcDatetime
