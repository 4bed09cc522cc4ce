"""VM ids and client-minted ULIDs."""

from __future__ import annotations

import re
import secrets
import time

from ._constants import SOURCE_ALIASES

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VM_ID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}(_[A-Za-z0-9]+)?$")


def new_ulid() -> str:
    """A 26-character Crockford base32 ULID: 48 bits of milliseconds, 80 random bits."""
    value = ((int(time.time() * 1000) & ((1 << 48) - 1)) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def looks_like_vm_id(value: str) -> bool:
    """True for ``<ULID>`` or ``<ULID>_<alphanumeric region suffix>``."""
    return bool(_VM_ID_RE.match(value.upper() if "_" not in value else _upper_head(value)))


def _upper_head(value: str) -> str:
    head, _, tail = value.partition("_")
    return f"{head.upper()}_{tail}"


def resolve_source(source: str) -> str:
    """Map a public image alias such as ``"arkuntu"`` to its id; other values pass through."""
    return SOURCE_ALIASES.get(source, source)
