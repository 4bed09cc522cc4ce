"""The Arker wire protocol (v1) as pydantic models: one definition for client and server.

Every request the SDK sends is built from one of these models, and every response it
receives is validated into one. `arker serve` uses the very same classes for its
routes, so the protocol has exactly one definition in this code base.

Rules that keep old clients working against newer servers (the extensions this code
base adds are listed in ``docs/wire-extensions.md``):

* responses ignore unknown fields (``extra="ignore"``);
* enum-like strings (``encoding``, error ``code``) are plain ``str``: an unknown value
  must reach the caller, never fail validation;
* extension fields are optional with defaults, so a server that never sends them
  still validates.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag

__all__ = [
    "SORT_KEYS",
    "ChunkEntry",
    "CommitEntry",
    "DeleteResponse",
    "Envelope",
    "ErrorBody",
    "ErrorEnvelope",
    "ForkRequest",
    "ForkResponse",
    "HealthResponse",
    "ListVmsResponse",
    "ManifestEntry",
    "PresignEntry",
    "RunRequest",
    "RunResponse",
    "SyncDeleteRequest",
    "SyncDeleteResponse",
    "SyncManifestRequest",
    "SyncManifestResponse",
    "SyncReadRequest",
    "SyncReadResponse",
    "SyncRequest",
    "SyncWriteRequest",
    "SyncWriteResponse",
    "VmSummaryWire",
    "WriteEntry",
    "WriteResult",
    "decode_content",
    "encode_content",
]

SortOrder = Literal["created_at", "-created_at", "region", "-region"]
"""Sort keys accepted by the list route: a field, descending with a leading ``-``."""

SORT_KEYS: tuple[SortOrder, ...] = get_args(SortOrder)
"""The same keys as a tuple, for checks at run time."""


def _assume_utc(value: datetime) -> datetime:
    """Wire timestamps are UTC; a server that omits the offset still means UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


UtcDatetime = Annotated[datetime, AfterValidator(_assume_utc)]
"""A timestamp that is always timezone-aware after validation."""


class WireModel(BaseModel):
    """Base of every wire model: unknown fields are ignored, never an error."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# --- file content codec ---------------------------------------------------------------


def encode_content(data: bytes) -> tuple[str, str]:
    """``(text, encoding)`` for bytes in a JSON field: the text itself when the bytes are
    valid UTF-8 (``"utf-8"``), else standard base64 (``"base64"``)."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def decode_content(text: str, encoding: str | None) -> bytes:
    """The bytes ``encode_content`` made ``(text, encoding)`` from.

    ``"base64"`` is strict standard base64; any other encoding (``"utf-8"``, absent, or
    one a newer peer invented) is taken as text, so an unknown value never loses data.

    Raises:
        ValueError: ``encoding`` is ``"base64"`` and ``text`` is not valid base64.
    """
    if encoding == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"invalid base64 ({exc})") from None
    return text.encode("utf-8", "surrogatepass")


# --- envelope ---------------------------------------------------------------------------


class ErrorBody(WireModel):
    """The ``error`` object of a failure envelope (or of one write result)."""

    code: str
    message: str = ""


class RequestModel(WireModel):
    """Base of request bodies: types are strict (``true`` is not a session id, ``"5"``
    is not a timeout), so a server answers wrong types with 400 instead of guessing,
    and the SDK refuses them before sending. Unknown fields are still ignored, so a
    newer client's extensions never break an older server."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, strict=True)


class Envelope(WireModel):
    """Fields every response may carry. Success responses subclass it."""

    ok: bool = True


class ErrorEnvelope(Envelope):
    """``{"ok": false, "error": {...}}``."""

    ok: bool = False
    error: ErrorBody


# --- list -------------------------------------------------------------------------------


class VmSummaryWire(WireModel):
    """One VM as the list route (and, as an extension, fork) describes it."""

    vm_id: str
    name: str | None = None
    base_image: str
    region: str
    created_at: UtcDatetime
    # (ext) when the server deletes the VM (it was forked with a TTL); absent: never.
    expires_at: UtcDatetime | None = None


class ListVmsResponse(Envelope):
    items: list[VmSummaryWire] = Field(default_factory=list)
    total: int = 0


# --- fork -------------------------------------------------------------------------------


MAX_TTL_S = 366 * 24 * 3600
"""The longest TTL a VM may be given (one year and a day), in seconds."""


class ForkRequest(RequestModel):
    """Body of both fork routes. ``from_`` is set only on the by-name route."""

    is_public: bool = False
    name: str | None = Field(default=None, max_length=256)
    region: str | None = Field(default=None, max_length=64)
    from_: str | None = Field(default=None, alias="from", max_length=256)
    # (ext) by-name route: pin the org whose public VM ``from`` names (platform fields).
    source_org_id: str | None = Field(default=None, max_length=128)
    source_org_name: str | None = Field(default=None, max_length=256)
    # (ext) delete the new VM this many seconds from now (docs/wire-extensions.md).
    ttl: int | None = Field(default=None, ge=1, le=MAX_TTL_S)


class ForkResponse(Envelope):
    vm_id: str = Field(min_length=1)
    # (ext) the new VM's summary fields; absent on servers that don't send them.
    name: str | None = None
    base_image: str | None = None
    region: str | None = None
    created_at: UtcDatetime | None = None
    expires_at: UtcDatetime | None = None


# --- delete -----------------------------------------------------------------------------


class DeleteResponse(Envelope):
    pass


# --- run --------------------------------------------------------------------------------


class RunRequest(RequestModel):
    command: str
    session_id: Annotated[str, Field(max_length=128)] | int = 0
    timeout: Annotated[int, Field(ge=1)] | None = None


class RunResponse(Envelope):
    stdout: str = ""
    stdout_encoding: str = "utf-8"
    stderr: str = ""
    stderr_encoding: str = "utf-8"
    exit_code: int
    duration_ms: float = 0.0
    session_id: str = ""
    cwd: str = ""
    # (ext)
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False


# --- sync -------------------------------------------------------------------------------


class SyncReadRequest(RequestModel):
    op: Literal["read"] = "read"
    path: str


class SyncReadResponse(Envelope):
    """Either inline ``content`` (+ ``encoding``) or a ``presigned_url`` to GET."""

    content: str | None = None
    encoding: str | None = None
    presigned_url: str | None = None
    size: int | None = None
    expires_in: int | None = None
    sha256: str | None = None  # (ext)


FileMode = Annotated[int, Field(ge=0, le=0o7777)]
"""Permission bits of a file (``0o644``); the server ignores setuid/setgid bits."""


class ChunkEntry(RequestModel):
    """Bytes ``[start, end)`` of a ``size``-byte file, inline as base64."""

    path: str
    size: int = Field(ge=0)
    upload_id: str = Field(min_length=1, max_length=64)
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    content: str
    sha256: str | None = None  # (ext) of the whole file
    mode: FileMode | None = None  # (ext) applied when the file is complete


class PresignEntry(RequestModel):
    """Ask for a presigned PUT URL for a ``size``-byte file."""

    path: str
    size: int = Field(ge=0)
    presigned: Literal[True] = True


class CommitEntry(RequestModel):
    """Place the bytes uploaded under ``upload_id`` at ``path``."""

    path: str
    size: int = Field(ge=0)
    upload_id: str = Field(min_length=1, max_length=64)
    sha256: str | None = None  # (ext)
    mode: FileMode | None = None  # (ext)


def _write_entry_kind(value: Any) -> str:
    """Tell the three entry kinds apart by the fields they carry (they share no tag)."""
    if isinstance(value, dict):
        if value.get("presigned"):
            return "presign"
        return "chunk" if "content" in value else "commit"
    if isinstance(value, PresignEntry):
        return "presign"
    return "chunk" if isinstance(value, ChunkEntry) else "commit"


WriteEntry = Annotated[
    Union[
        Annotated[ChunkEntry, Tag("chunk")],
        Annotated[PresignEntry, Tag("presign")],
        Annotated[CommitEntry, Tag("commit")],
    ],
    Discriminator(_write_entry_kind),
]


class SyncWriteRequest(RequestModel):
    op: Literal["write"] = "write"
    writes: list[WriteEntry] = Field(min_length=1, max_length=64)


class SyncManifestRequest(RequestModel):
    """(ext) List every regular file under ``path`` with its size, mode and sha256."""

    op: Literal["manifest"] = "manifest"
    path: str


class SyncDeleteRequest(RequestModel):
    """(ext) Delete files; a path that is already absent is not an error."""

    op: Literal["delete"] = "delete"
    paths: list[str] = Field(min_length=1, max_length=1000)


SyncRequest = Annotated[
    Union[SyncReadRequest, SyncWriteRequest, SyncManifestRequest, SyncDeleteRequest],
    Field(discriminator="op"),
]
"""Body of ``POST /api/v1/vms/{id}/sync``: dispatched on ``op``."""


class WriteResult(WireModel):
    """One result per write entry, in order; ``error`` concerns that entry alone."""

    complete: bool | None = None
    written: bool | None = None
    received_bytes: int | None = None  # (ext)
    presigned_url: str | None = None
    upload_id: str | None = None
    expires_in: int | None = None  # (ext)
    error: ErrorBody | None = None


class SyncWriteResponse(Envelope):
    results: list[WriteResult] = Field(default_factory=list)


class ManifestEntry(WireModel):
    """One regular file of a manifest. Symbolic links and special files are omitted."""

    path: str  # absolute, inside the VM
    size: int
    mode: int  # permission bits
    sha256: str


class SyncManifestResponse(Envelope):
    entries: list[ManifestEntry] = Field(default_factory=list)
    truncated: bool = False  # the server's entry cap was reached


class SyncDeleteResponse(Envelope):
    deleted: list[str] = Field(default_factory=list)


# --- health -----------------------------------------------------------------------------


class HealthResponse(Envelope):
    version: str = ""
    backend: str = ""
