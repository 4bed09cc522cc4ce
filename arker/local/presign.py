"""HMAC-SHA256 signed URLs (presigned reads and uploads) the server serves itself.

A signature binds one method, one VM, one target (a file path for GET, an upload id
for PUT) and an expiry. The secret lives in the data dir (mode 0600), so URLs stay
valid across restarts and a test holding the data dir can forge an expired one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlencode

from .._constants import PRESIGN_TTL_S
from .errors import ApiError
from .private_file import write_private

READ_ROUTE = "/api/v1/presigned/{vm_id}/read"
"""GET: raw bytes of the file named by the ``path`` query parameter."""

UPLOAD_ROUTE = "/api/v1/presigned/{vm_id}/upload/{upload_id}"
"""PUT: raw bytes of one upload."""


def signature(secret: bytes, method: str, vm_id: str, target: str, expires: int) -> str:
    """The hex HMAC of one presigned request; the exact message is part of the format."""
    message = f"{method.upper()}\n{vm_id}\n{target}\n{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def load_or_create_secret(path: Path) -> bytes:
    """Read the signing secret, creating a random 32-byte one (mode 0600) if missing."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    secret = secrets.token_bytes(32)
    write_private(path, secret)
    return secret


class Signer:
    """Mints and checks presigned URLs.

    Args:
        secret: HMAC key.
        ttl_s: Lifetime of a URL in seconds.
        clock: Source of the current Unix time (injectable for tests).
    """

    def __init__(
        self, secret: bytes, ttl_s: int = PRESIGN_TTL_S, clock: Callable[[], float] = time.time
    ) -> None:
        self._secret = secret
        self.ttl_s = ttl_s
        self._clock = clock

    def read_url(self, base_url: str, vm_id: str, path: str) -> str:
        """A GET URL for the file ``path`` of ``vm_id``."""
        expires = int(self._clock()) + self.ttl_s
        query = urlencode(
            {
                "path": path,
                "expires": expires,
                "signature": signature(self._secret, "GET", vm_id, path, expires),
            }
        )
        route = READ_ROUTE.format(vm_id=quote(vm_id, safe=""))
        return f"{base_url.rstrip('/')}{route}?{query}"

    def upload_url(self, base_url: str, vm_id: str, upload_id: str) -> str:
        """A PUT URL for the bytes of ``upload_id`` into ``vm_id``."""
        expires = int(self._clock()) + self.ttl_s
        sig = signature(self._secret, "PUT", vm_id, upload_id, expires)
        route = UPLOAD_ROUTE.format(
            vm_id=quote(vm_id, safe=""), upload_id=quote(upload_id, safe="")
        )
        return f"{base_url.rstrip('/')}{route}?{urlencode({'expires': expires, 'signature': sig})}"

    def verify(
        self, method: str, vm_id: str, target: str, expires: str | None, sig: str | None
    ) -> None:
        """Check a presigned request.

        Raises:
            ApiError: 403 ``forbidden`` when the signature is missing, altered or expired.
        """
        if not expires or not sig:
            raise ApiError("forbidden", "presigned URL is missing its signature")
        # Only the exact decimal form the server minted: `int()` would also take
        # " 123", "+123", "0123" or "1_23", i.e. altered URLs that still verify.
        # (A bound on the length also keeps `int()` away from its 4300-digit limit.)
        if not (expires.isascii() and expires.isdigit() and len(expires) <= 20) or (
            expires != str(int(expires))
        ):
            raise ApiError("forbidden", "presigned URL signature is invalid")
        expires_at = int(expires)
        expected = signature(self._secret, method, vm_id, target, expires_at)
        if not hmac.compare_digest(expected, sig):
            raise ApiError("forbidden", "presigned URL signature is invalid")
        if expires_at < self._clock():
            raise ApiError("forbidden", "presigned URL has expired")
