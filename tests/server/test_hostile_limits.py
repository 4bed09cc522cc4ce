"""Bodies over the limit against a real `arker serve`: refused before being read.

A declared ``Content-Length`` past the limit is a 413 at once; a chunked body is cut
off once it passes the limit; a presigned PUT past its announced size likewise.
"""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

import pytest
import requests

from arker.testing import ArkerServer
from tests.kit.raw_http import raw, raw_error
from tests.kit.server import Api, assert_healthy

# Every answer must be an error envelope with the documented code and status, never a
# 5xx: no request of this module may reach the server's 500 handler.
pytestmark = pytest.mark.usefixtures("no_unhandled_errors")


BODY_LIMIT = 32 * 1024 * 1024  # ServerConfig.max_body_bytes default


# --- bodies over the limit --------------------------------------------------------------


def test_huge_content_length_is_refused_without_reading(
    api: Api, vm: str, arker_server: ArkerServer
) -> None:
    for route in (f"/api/v1/vms/{vm}/run", f"/api/v1/vms/{vm}/sync", "/api/v1/vms/fork"):
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", arker_server.port, timeout=10)
        try:
            conn.putrequest("POST", route)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Authorization", f"Bearer {arker_server.api_key}")
            conn.putheader("Content-Length", str(1 << 30))
            conn.endheaders()
            conn.send(b'{"command": "')
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        assert time.monotonic() - started < 5
        assert resp.status == 413, body
        assert json.loads(body)["error"]["code"] == "payload_too_large"
    # Also without auth: the size guard answers first, and never reads the body.
    got = raw(
        arker_server,
        "POST",
        f"/api/v1/vms/{vm}/run",
        {"Content-Length": str(BODY_LIMIT + 1)},
        b"{}",
        timeout=10,
    )
    assert raw_error(got) == (413, "payload_too_large")
    assert_healthy(api, vm)


def test_chunked_body_over_the_limit_is_cut_off(
    api: Api, vm: str, arker_server: ArkerServer
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", arker_server.port, timeout=30)
    block = b"[" + b"0," * (512 * 1024) + b"0]"  # ~1 MiB of valid-looking JSON
    sent = 0
    try:
        conn.putrequest("POST", f"/api/v1/vms/{vm}/run")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Authorization", f"Bearer {arker_server.api_key}")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        try:
            while sent < 4 * BODY_LIMIT:
                conn.send(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                sent += len(block)
        except OSError:
            pass  # the server stopped reading and closed: expected
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 413, body
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert sent < 4 * BODY_LIMIT  # cut off, not read to the end
    assert_healthy(api, vm)


def test_body_just_under_the_limit_is_parsed(api: Api, vm: str) -> None:
    big = "x" * (BODY_LIMIT - 1000)
    r = api.post(f"/api/v1/vms/{vm}/run", json={"command": "true", "pad": big})
    assert r.status_code == 200, r.text[:300]


def test_presigned_put_with_huge_declared_length(
    api: Api, vm: str, arker_server: ArkerServer
) -> None:
    upload = api.write(vm, {"path": "/home/user/up", "size": 3, "presigned": True})[0]
    parts = urlsplit(upload["presigned_url"])
    target = f"{parts.path}?{parts.query}"
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", arker_server.port, timeout=15)
    try:
        conn.putrequest("PUT", target)
        conn.putheader("Content-Length", str(1 << 30))
        conn.endheaders()
        conn.send(b"abc")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert time.monotonic() - started < 10
    assert resp.status == 413, body
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    # A chunked PUT past the announced size is refused as well.
    conn = http.client.HTTPConnection("127.0.0.1", arker_server.port, timeout=15)
    try:
        conn.putrequest("PUT", target)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        try:
            for _ in range(64):
                conn.send(b"100000\r\n" + b"z" * 0x100000 + b"\r\n")
        except OSError:
            pass
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 413, body
    # The URL still works for the right bytes.
    assert requests.put(upload["presigned_url"], data=b"abc", timeout=30).status_code == 200
    assert_healthy(api, vm)
