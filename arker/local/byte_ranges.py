"""(ext) The ``Range`` header of a presigned read: which bytes of the file to send.

One byte range per RFC 9110 section 14: ``bytes=N-`` (from N to the end),
``bytes=N-M`` (N to M inclusive, M clipped to the last byte) and ``bytes=-S`` (the last
S bytes). A header this server does not take (malformed, another unit, several
ranges) is ignored, and the whole file is sent, as RFC 9110 allows. A range that starts
at or past the end of the file cannot be satisfied (``416``).

Each answer carries a strong ``ETag`` naming this version of the file (inode, size,
modification time); a ``Range`` sent with ``If-Range: <that ETag>`` is honoured only
while the file is still that version, otherwise the whole file is sent (``200``), so a
resumed download never joins two versions of a file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import ApiError

_ONE_RANGE = re.compile(r"bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*", re.IGNORECASE)


@dataclass(frozen=True)
class ByteSpan:
    """Bytes ``start`` to ``end`` inclusive of a ``size``-byte file."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def content_range(self) -> str:
        """The ``Content-Range`` value of a ``206`` answer."""
        return f"bytes {self.start}-{self.end}/{self.size}"


def entity_tag(st: os.stat_result) -> str:
    """The strong ``ETag`` of one version of a file."""
    return f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'


def requested_span(
    header: str | None, size: int, *, if_range: str | None = None, etag: str = ""
) -> ByteSpan | None:
    """The span ``header`` asks for; `None` means send the whole file (``200``).

    ``if_range`` is the request's ``If-Range``: unless it is ``etag`` (the file's
    current tag; a date or a weak tag never is), the range is ignored.

    Raises:
        ApiError: ``bad_request`` with status ``416`` and ``Content-Range: bytes */size``
            when the range starts at or past the end of the file.
    """
    if header is None or (if_range is not None and if_range.strip() != etag):
        return None
    match = _ONE_RANGE.fullmatch(header.strip())
    if match is None:
        return None  # malformed, another unit or several ranges: ignored
    first, last = match.group(1), match.group(2)
    if first:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None  # last before first: syntactically invalid, ignored
    elif last:
        suffix = int(last)
        if suffix == 0:
            raise _unsatisfiable(size)
        start, end = max(0, size - suffix), size - 1
    else:
        return None  # ``bytes=-``
    if start >= size:
        raise _unsatisfiable(size)
    return ByteSpan(start, end, size)


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(
        "bad_request",
        f"range not satisfiable: the file has {size} bytes",
        status=416,
        headers={"Content-Range": f"bytes */{size}"},
    )
