"""One request sent verbatim to a real `arker serve` (no URL normalisation).

`requests` rewrites what these tests need to send as is: ``..`` and ``%2F`` in paths,
unknown methods, odd headers. `http.client` sends the bytes given.
"""

from __future__ import annotations

import http.client
import json

from arker.testing import ArkerServer

JSON = {"Content-Type": "application/json"}

RawResponse = tuple[int, dict[str, str], bytes]
"""``(status, headers with lower-case names, body)``."""


def raw(
    server: ArkerServer,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout: float = 30,
) -> RawResponse:
    """One request sent verbatim (no URL normalisation) with `http.client`."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        hdrs = {"Content-Length": str(len(body)), **(headers or {})}
        for name, value in hdrs.items():
            conn.putheader(name, value)
        conn.endheaders()
        if body:
            conn.send(body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw_error(status_headers_body: RawResponse) -> tuple[int, str]:
    """(status, code) of a raw error envelope; asserts the envelope's shape."""
    status, _, data = status_headers_body
    body = json.loads(data)
    assert body["ok"] is False and isinstance(body["error"]["message"], str), data
    return status, body["error"]["code"]


def auth(server: ArkerServer, key: str | None = None) -> dict[str, str]:
    """The ``Authorization`` header for ``key`` (default: the server's own key)."""
    return {"Authorization": f"Bearer {key or server.api_key}"}
