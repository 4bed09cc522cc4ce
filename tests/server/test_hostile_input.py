"""Hostile input against a real `arker serve` (raw HTTP, loopback only).

Malformed JSON, wrong types, oversized bodies (refused before being read), path and URL
tricks, symbolic and hard links inside a VM, foreign and malformed VM ids, altered
presigned URLs, wrong methods and bad auth headers. Every answer must be the WIRE.md
envelope with the documented code and status, never a 5xx, and the server must stay
healthy after each batch (health check plus a real run).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from serverkit import Api, error_of

from arker._constants import ARKUNTU_ID, MAX_FILE_BYTES
from arker._ids import new_ulid
from arker.local.presign import signature
from arker.testing import ArkerServer

JSON = {"Content-Type": "application/json"}
BODY_LIMIT = 32 * 1024 * 1024  # ServerConfig.max_body_bytes default


# --- helpers ----------------------------------------------------------------------------


def expect(r: requests.Response, status: int, code: str, what: object = "") -> None:
    assert error_of(r) == (status, code), f"{what!r}: {r.status_code} {r.text[:300]}"


def assert_healthy(api: Api, vm: str) -> None:
    """Health answers and a normal run still works."""
    h = api.get("/api/v1/health")
    assert h.status_code == 200 and h.json()["ok"] is True, h.text
    out = api.run(vm, "echo alive")
    assert out["stdout"] == "alive\n" and out["exit_code"] == 0, out


def raw(
    server: ArkerServer,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
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


def raw_error(status_headers_body: tuple[int, dict[str, str], bytes]) -> tuple[int, str]:
    status, _, data = status_headers_body
    body = json.loads(data)
    assert body["ok"] is False and isinstance(body["error"]["message"], str), data
    return status, body["error"]["code"]


def auth(server: ArkerServer, key: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key or server.api_key}"}


def chunk(path: str, data: bytes, upload_id: str | None = None) -> dict[str, Any]:
    return {
        "path": path,
        "size": len(data),
        "upload_id": upload_id or new_ulid(),
        "start": 0,
        "end": len(data),
        "content": base64.b64encode(data).decode(),
    }


@pytest.fixture(scope="module", autouse=True)
def no_unhandled_errors(arker_server: ArkerServer) -> Iterator[None]:
    """No request of this module may reach the server's 500 handler."""
    log = arker_server.log_path
    start = log.stat().st_size if log.exists() else 0
    yield
    if log.exists():
        with open(log, "rb") as f:
            f.seek(start)
            new = f.read().decode(errors="replace")
        assert "unhandled error" not in new, new[-4000:]
        assert "Traceback" not in new, new[-4000:]


# --- malformed JSON ---------------------------------------------------------------------

MALFORMED: list[bytes] = [
    b"[]",
    b"[1, 2]",
    b'"x"',
    b"null",
    b"1",
    b"true",
    b"",
    b"{",
    b'{"command": ',
    b'{"command": "true"',
    b"\xff\xfe\x00{",
    b'{"command": "\xff\xfe"}',
    b'{"command": "true", "timeout": 1e999}',
    b'{"command": "true", "timeout": NaN}',
    b'{"command": "true", "timeout": Infinity}',
    b'{"command": "true", "timeout": 1' + b"0" * 5000 + b"}",
    b'{"command": "true", "session_id": 1' + b"0" * 5000 + b"}",
    b'{"command": "true", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b"[" * 200_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"command": "true"}garbage',
    b'{"command": "tr\\ud800ue"}',  # lone surrogate: valid JSON, not encodable
]


# Objects whose odd numbers sit in a field fork (all fields optional) does not have.
FINE_FOR_FORK = {
    b'{"command": "true", "timeout": 1e999}',
    b'{"command": "true", "timeout": NaN}',
    b'{"command": "true", "timeout": Infinity}',
}


def _routes(vm: str) -> list[str]:
    return [
        f"/api/v1/vms/{vm}/run",
        f"/api/v1/vms/{vm}/fork",
        "/api/v1/vms/fork",
        f"/api/v1/vms/{vm}/sync",
    ]


def test_malformed_and_non_object_json_is_400(api: Api, vm: str) -> None:
    for route in _routes(vm):
        for body in MALFORMED:
            r = api.post(route, data=body, headers=JSON)
            if route.endswith(f"{vm}/fork") and body in FINE_FOR_FORK:
                assert r.status_code == 200, r.text  # an ignored extra field
                continue
            expect(r, 400, "bad_request", (route, body[:40]))
    # Not JSON at all, or declared as something else.
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        r = api.post(f"/api/v1/vms/{vm}/run", data=b"command=true", headers={"Content-Type": ctype})
        expect(r, 400, "bad_request", ctype)
    assert_healthy(api, vm)


# --- wrong types, missing and extra fields ---------------------------------------------

# (route kind, base body, field, bad values). A field set to `...` is removed.
WRONG_TYPES: list[tuple[str, dict[str, Any], str, list[Any]]] = [
    ("run", {"command": "true"}, "command", [5, None, [], {}, True, 1.5, ...]),
    # (pydantic's lax mode takes `true` as session 1, `"5"` as timeout 5 and `"yes"` as
    # is_public: coercions of the shared `arker._wire` models, not refused here.)
    ("run", {"command": "true"}, "session_id", [None, [], {}, 1.5, "s" * 129]),
    ("run", {"command": "true"}, "timeout", ["x", 0, -1, 1.5, [], {}, "1e9x", -(10**400)]),
    ("fork", {"is_public": False}, "is_public", ["maybe", 2, -1, [], {}, None, 0.5]),
    ("fork", {"is_public": False}, "name", [5, [], {}, True, "n" * 257]),
    ("fork", {"is_public": False}, "region", [5, [], {}, True, "r" * 65]),
    ("fork_by_name", {"from": "arkuntu"}, "from", [5, [], {}, True, "f" * 257]),
    ("fork_by_name", {"from": "arkuntu"}, "is_public", ["maybe", 2, [], {}]),
    ("sync", {"op": "read", "path": "/home/user/x"}, "op", [5, None, "dance", "", [], ...]),
    ("sync", {"op": "read", "path": "/home/user/x"}, "path", [5, None, [], {}, True, ...]),
    ("sync", {"op": "manifest", "path": "/home/user"}, "path", [5, None, [], {}, ...]),
    (
        "sync",
        {"op": "delete", "paths": ["/home/user/x"]},
        "paths",
        ["/home/user/x", [], [5], [None], {}, None, ["/home/user/x"] * 1001, ...],
    ),
    (
        "sync",
        {"op": "write", "writes": [chunk("/home/user/x", b"x")]},
        "writes",
        ["x", [], {}, None, [5], ["x"], [None], [[]], [chunk("/home/user/x", b"x")] * 65, ...],
    ),
]

CHUNK_FIELD_WRONG_TYPES: dict[str, list[Any]] = {
    "path": [5, None, [], {}, ...],
    "size": ["x", -1, None, 1.5, [], ...],
    "upload_id": ["", "u" * 65, 5, None, [], ...],
    "start": [-1, "x", None, 1.5, [], ...],
    "end": [-1, "x", None, 1.5, [], ...],
    "content": [5, None, [], {}],
    "sha256": [5, [], {}],
    "mode": [-1, 0o10000, "x", 1.5, [], {}],
}

COMMIT_FIELD_WRONG_TYPES: dict[str, list[Any]] = {
    "path": [5, None, [], ...],
    "size": ["x", -1, None, ...],
    "upload_id": ["", "u" * 65, 5, None, ...],
    "sha256": [5, []],
    "mode": [-1, 0o10000, "x"],
}


def _with(base: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    out = dict(base)
    if value is ...:
        out.pop(field, None)
    else:
        out[field] = value
    return out


def _route_for(kind: str, vm: str) -> str:
    return {
        "run": f"/api/v1/vms/{vm}/run",
        "fork": f"/api/v1/vms/{vm}/fork",
        "fork_by_name": "/api/v1/vms/fork",
        "sync": f"/api/v1/vms/{vm}/sync",
    }[kind]


def test_wrong_types_and_missing_fields_are_400(api: Api, vm: str) -> None:
    for kind, base, field, values in WRONG_TYPES:
        for value in values:
            body = _with(base, field, value)
            r = api.post(_route_for(kind, vm), json=body)
            expect(r, 400, "bad_request", (kind, field, str(value)[:40]))
    sync = f"/api/v1/vms/{vm}/sync"
    good_chunk = chunk("/home/user/x", b"x")
    for field, values in CHUNK_FIELD_WRONG_TYPES.items():
        for value in values:
            entry = _with(good_chunk, field, value)
            r = api.post(sync, json={"op": "write", "writes": [entry]})
            expect(r, 400, "bad_request", ("chunk", field, str(value)[:40]))
    good_commit = {"path": "/home/user/x", "size": 1, "upload_id": new_ulid()}
    for field, values in COMMIT_FIELD_WRONG_TYPES.items():
        for value in values:
            entry = _with(good_commit, field, value)
            r = api.post(sync, json={"op": "write", "writes": [entry]})
            expect(r, 400, "bad_request", ("commit", field, str(value)[:40]))
    for value in [-1, "x", None, ...]:
        entry = _with({"path": "/home/user/x", "size": 1, "presigned": True}, "size", value)
        r = api.post(sync, json={"op": "write", "writes": [entry]})
        expect(r, 400, "bad_request", ("presign", "size", value))
    assert_healthy(api, vm)


def test_list_query_out_of_range_is_400(api: Api, vm: str) -> None:
    bad = [
        {"limit": 0},
        {"limit": 101},
        {"limit": "x"},
        {"limit": 10**30},
        {"limit": -(10**30)},
        {"offset": -1},
        {"offset": "x"},
        {"offset": "1e3"},
        {"sort": "bogus"},
        {"sort": "name; DROP TABLE vms"},
        {"q": "q" * 300},
    ]
    for params in bad:
        expect(api.get("/api/v1/vms/list", params=params), 400, "bad_request", params)
    # Odd but valid values are fine (SQL metacharacters are just text).
    for params in ({"q": "%"}, {"q": "_"}, {"q": "'; --"}, {"q": "\u0000"}, {"offset": 10**6}):
        r = api.get("/api/v1/vms/list", params=params)
        assert r.status_code == 200, (params, r.text)
        if params.get("q") in ("%", "_"):
            assert r.json()["total"] == 0, r.text
    assert_healthy(api, vm)


def test_extra_fields_are_ignored(api: Api, vm: str) -> None:
    extra = {"__proto__": {"x": 1}, "ok": False, "error": "x", "org_id": "someone"}
    out = api.run(vm, "echo hi", **extra)
    assert out["stdout"] == "hi\n"
    # A huge (but valid) timeout is clamped to the server's maximum, not an overflow.
    assert api.run(vm, "echo t", timeout=10**400)["stdout"] == "t\n"
    child = api.fork(vm, **extra)
    assert child["vm_id"] != vm
    r = api.sync(vm, {"op": "read", "path": "/home/user/none", **extra})
    expect(r, 404, "not_found")


def test_semantic_errors_per_write_entry(api: Api, vm: str) -> None:
    data = b"hello"
    results = api.write(
        vm,
        {**chunk("/etc/x", data)},
        {**chunk("/home/user/ok", data), "end": 6},  # past size
        {**chunk("/home/user/ok", data), "start": 4, "end": 2},
        {**chunk("/home/user/ok", data), "start": 10**30, "end": 10**30},
        {**chunk("/home/user/ok", data), "size": 10**30, "end": 10**30},
        {**chunk("/home/user/ok", data), "content": "!!! not base64 !!!"},
        {"path": "/home/user/big", "size": MAX_FILE_BYTES + 1, "presigned": True},
        {"path": "/home/user/big", "size": 10**30, "presigned": True},
        {"path": "/home/user/c", "size": 1, "upload_id": new_ulid()},  # unknown upload
        {"path": "/home/user/c", "size": 10**30, "upload_id": new_ulid()},
        {**chunk("/home/user/ok", data), "sha256": "0" * 64},
        chunk("/home/user/fine", data),
    )
    codes = [(r.get("error") or {}).get("code") for r in results]
    assert codes[:6] == [*["bad_request"] * 4, "payload_too_large", "bad_request"], results
    assert codes[6:10] == [
        "payload_too_large",
        "payload_too_large",
        "not_found",
        "payload_too_large",
    ]
    assert codes[10] in ("bad_request", "conflict"), results  # sha256 mismatch
    assert results[11] == {**results[11], "complete": True, "written": True}, results
    assert_healthy(api, vm)


# --- path tricks ------------------------------------------------------------------------

BAD_PATHS = [
    "/home/user/../../etc/passwd",
    "/home/user/a/../../../etc/shadow",
    "/home/user/..",
    "/home/user/x/..",
    "/home/user/\u0000x",
    "/home/user/x\u0000/../../etc/passwd",
    "/home/user/" + "a" * 10_000,
    "/home/user/" + "/".join(["d"] * 3000),
    "home/user/x",
    "/etc/passwd",
    "",
    "/",
    "//home/user/x",
    "/home/userx",
    "/home/user2/x",
    "\\home\\user\\x",
    "/home/user/\ud800",
    "/home/user/x/",
]


def test_bad_paths_are_400_everywhere(api: Api, vm: str, arker_server: ArkerServer) -> None:
    sync = f"/api/v1/vms/{vm}/sync"
    for path in BAD_PATHS:
        expect(api.post(sync, json={"op": "read", "path": path}), 400, "bad_request", path)
        expect(api.post(sync, json={"op": "delete", "paths": [path]}), 400, "bad_request", path)
        entries = [chunk(path, b"x"), {"path": path, "size": 1, "presigned": True}]
        if "\ud800" in path:  # not Unicode: the whole request is refused
            r = api.post(sync, json={"op": "write", "writes": entries})
            expect(r, 400, "bad_request", path)
            continue
        results = api.write(vm, *entries)
        assert [r["error"]["code"] for r in results] == ["bad_request"] * 2, (path, results)
        if path not in ("/home/user/x/",):
            r = api.post(sync, json={"op": "manifest", "path": path})
            expect(r, 400, "bad_request", path)
    # NUL also when sent as a raw JSON escape and via a JSON string built by hand.
    body = b'{"op": "read", "path": "/home/user/\\u0000/../../../etc/passwd"}'
    status = raw(arker_server, "POST", sync, {**JSON, **auth(arker_server)}, body)
    assert raw_error(status) == (400, "bad_request")
    assert_healthy(api, vm)


URL_TRICKS = [
    "nope",
    "..",
    "%2e%2e",
    "%2E%2E%2F%2E%2E%2Fetc",
    "%2F..%2F..%2Fetc%2Fpasswd",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "..%5C..%5Cetc",
    "%00",
    "a%00b",
    f"{ARKUNTU_ID}%00",
    f"{ARKUNTU_ID}%20",
    f"{ARKUNTU_ID}%2F..%2F{ARKUNTU_ID}",
    "x" * 10_000,
    "%C3%BC",
    "%FF%FE",
    "01KQBYKEV5WJ7YB010603T1DC",  # 25 chars
    "'%20OR%201=1--",
]


def test_malformed_and_encoded_vm_ids_are_404(api: Api, vm: str, arker_server: ArkerServer) -> None:
    headers = {**JSON, **auth(arker_server)}
    for trick in URL_TRICKS:
        for method, suffix, body in [
            ("POST", "/run", b'{"command": "true"}'),
            ("POST", "/sync", b'{"op": "read", "path": "/home/user/x"}'),
            ("POST", "/fork", b'{"is_public": false}'),
            ("DELETE", "", b""),
        ]:
            got = raw(arker_server, method, f"/api/v1/vms/{trick}{suffix}", headers, body)
            status, code = raw_error(got)
            # A `/` or `..` decoded from the id can make the route itself unknown, which
            # is a 404 as well, or a 405 when the remaining path names another route.
            assert (status, code) in ((404, "not_found"), (405, "bad_request")), (
                trick,
                method,
                got,
            )
    # Presigned routes with tricks in the vm id or upload id: still only 403.
    for trick in URL_TRICKS:
        got = raw(arker_server, "GET", f"/api/v1/presigned/{trick}/read?path=/home/user/x")
        assert raw_error(got) in ((403, "forbidden"), (404, "not_found")), (trick, got)
        got = raw(arker_server, "PUT", f"/api/v1/presigned/{vm}/upload/{trick}", body=b"x")
        assert raw_error(got) in ((403, "forbidden"), (404, "not_found")), (trick, got)
    assert_healthy(api, vm)


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


# --- auth headers -----------------------------------------------------------------------


def test_bad_auth_headers_are_401(api: Api, vm: str, arker_server: ArkerServer) -> None:
    key = arker_server.api_key
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer    "},
        {"Authorization": f"Basic {key}"},
        {"Authorization": f"Token {key}"},
        {"Authorization": key},
        {"Authorization": f"Bearer {key}x"},
        {"Authorization": f"Bearer {key[:-1]}"},
        {"Authorization": f"Bearer {key} {key}"},
        {"Authorization": f"Bearer\t{key}"},
        {"Authorization": "Bearer " + "k" * 8000},
        {"Authorization": "Bearer ' OR 1=1 --"},
        {"Authorization": "Bearer %00"},
        {"Authorization": "Bearer \u00ff\u00fe"},
        {"X-Api-Key": key},
    ]
    routes = [
        ("GET", "/api/v1/vms/list", b""),
        ("POST", f"/api/v1/vms/{ARKUNTU_ID}/fork", b'{"is_public": false}'),
        ("POST", "/api/v1/vms/fork", b'{"from": "arkuntu"}'),
        ("POST", f"/api/v1/vms/{vm}/run", b'{"command": "true"}'),
        ("POST", f"/api/v1/vms/{vm}/sync", b'{"op": "read", "path": "/home/user/x"}'),
        ("DELETE", f"/api/v1/vms/{vm}", b""),
    ]
    for headers in bad_headers:
        for method, route, body in routes:
            got = raw(arker_server, method, route, {**JSON, **headers}, body)
            assert raw_error(got) == (401, "unauthorized"), (headers, method, route, got)
    # Auth comes before body validation: a garbage body without a key is still 401.
    got = raw(arker_server, "POST", f"/api/v1/vms/{vm}/run", JSON, b"[garbage")
    assert raw_error(got) == (401, "unauthorized")
    assert_healthy(api, vm)


def test_another_orgs_key_sees_404(api: Api, other: Api, vm: str) -> None:
    theirs = other.fork(name="theirs")["vm_id"]
    public_theirs = other.fork(name="theirs-public", is_public=True)["vm_id"]
    for owner, stranger, target in ((api, other, vm), (other, api, theirs)):
        expect(stranger.post(f"/api/v1/vms/{target}/run", json={"command": "id"}), 404, "not_found")
        r = stranger.sync(target, {"op": "read", "path": "/home/user/.profile"})
        expect(r, 404, "not_found")
        expect(stranger.sync(target, {"op": "manifest", "path": "/home/user"}), 404, "not_found")
        expect(stranger.sync(target, {"op": "delete", "paths": ["/home/user/x"]}), 404, "not_found")
        r = stranger.sync(target, {"op": "write", "writes": [chunk("/home/user/pwn", b"x")]})
        expect(r, 404, "not_found")
        expect(stranger.post(f"/api/v1/vms/{target}/fork", json={}), 404, "not_found")
        expect(stranger.delete(f"/api/v1/vms/{target}"), 404, "not_found")
        listed = [i["vm_id"] for i in stranger.get("/api/v1/vms/list?limit=100").json()["items"]]
        assert target not in listed
        # The owner still has it, untouched.
        assert owner.run(target, "test -e /home/user/pwn; echo $?")["stdout"] == "1\n"
    # A public VM of another org can be forked, but not run, synced or deleted.
    assert api.fork(public_theirs)["vm_id"]
    expect(api.post(f"/api/v1/vms/{public_theirs}/run", json={"command": "id"}), 404, "not_found")
    expect(api.delete(f"/api/v1/vms/{public_theirs}"), 404, "not_found")
    r = api.sync(public_theirs, {"op": "read", "path": "/home/user/.profile"})
    expect(r, 404, "not_found")
    # Fork-by-name only sees the caller's own names (and public ones).
    r = api.post("/api/v1/vms/fork", json={"from": "theirs"})
    expect(r, 404, "not_found")
    assert_healthy(api, vm)


# --- wrong methods ----------------------------------------------------------------------


def test_wrong_methods_are_405_envelope(api: Api, vm: str, arker_server: ArkerServer) -> None:
    allowed = {
        "/api/v1/health": {"GET"},
        "/api/v1/vms/list": {"GET"},
        "/api/v1/vms/fork": {"POST"},
        f"/api/v1/vms/{vm}/fork": {"POST"},
        f"/api/v1/vms/{vm}": {"DELETE"},
        f"/api/v1/vms/{vm}/run": {"POST"},
        f"/api/v1/vms/{vm}/sync": {"POST"},
        f"/api/v1/presigned/{vm}/read": {"GET"},
        f"/api/v1/presigned/{vm}/upload/{new_ulid()}": {"PUT", "HEAD"},
    }
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "FOO"]
    for route, ok in allowed.items():
        for method in methods:
            if method in ok:
                continue
            got = raw(arker_server, method, route, {**JSON, **auth(arker_server)}, b"{}")
            if method == "DELETE" and route in ("/api/v1/vms/list", "/api/v1/vms/fork"):
                # `DELETE /api/v1/vms/{vm_id}` with the id "list" or "fork".
                assert raw_error(got) == (404, "not_found"), (method, route, got)
                continue
            # WIRE.md has no row for 405; the server answers the true HTTP status with
            # the generic `bad_request` code.
            assert raw_error(got) == (405, "bad_request"), (method, route, got)
            assert got[1].get("allow"), (method, route, got)
    assert_healthy(api, vm)


# --- presigned URLs ---------------------------------------------------------------------


def _with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    for k, v in changes.items():
        if v is None:
            query.pop(k, None)
        else:
            query[k] = v
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query)}"


def _flip(sig: str) -> str:
    return ("0" if sig[0] != "0" else "1") + sig[1:]


def test_altered_presigned_urls_are_403(api: Api, vm: str, arker_server: ArkerServer) -> None:
    path = "/home/user/big.bin"
    api.run(vm, f"head -c 5000000 /dev/zero > {path}")
    other_vm = api.fork(vm)["vm_id"]
    read_url = api.sync(vm, {"op": "read", "path": path}).json()["presigned_url"]
    assert requests.get(read_url, timeout=60).status_code == 200
    q = {k: v[0] for k, v in parse_qs(urlsplit(read_url).query).items()}
    secret = (Path(arker_server.data_dir) / "presign.key").read_bytes()
    past = int(time.time()) - 10
    future = int(q["expires"]) + 3600
    other_read_route = urlsplit(read_url).path.replace(vm, other_vm)
    base = arker_server.base_url
    bad_reads = [
        _with_query(read_url, signature=_flip(q["signature"])),
        _with_query(read_url, signature=q["signature"].upper()),
        _with_query(read_url, signature=""),
        _with_query(read_url, signature=None),
        _with_query(read_url, signature="z" * 10_000),
        _with_query(read_url, expires=None),
        _with_query(read_url, expires=str(future)),
        _with_query(read_url, expires="x"),
        _with_query(read_url, expires=str(10**30)),
        _with_query(read_url, expires="-1"),
        _with_query(read_url, expires=" " + q["expires"]),
        _with_query(read_url, path="/home/user/other"),
        _with_query(read_url, path="/etc/passwd"),
        _with_query(read_url, path=path + "/../../../etc/passwd"),
        _with_query(read_url, path=None),
        f"{base}{other_read_route}?{urlsplit(read_url).query}",  # vm swapped
        # Genuine signatures with the server's own secret, but expired.
        _with_query(
            read_url, expires=str(past), signature=signature(secret, "GET", vm, path, past)
        ),
        # The PUT signature of the same target is not a GET signature.
        _with_query(
            read_url,
            signature=signature(secret, "PUT", vm, path, int(q["expires"])),
        ),
    ]
    for url in bad_reads:
        r = requests.get(url, timeout=30)
        expect(r, 403, "forbidden", url[-120:])
    # Forged with the real secret for a path outside /home/user (defence in depth: the
    # server only ever signs checked paths, but the route checks them again).
    exp = int(q["expires"])
    for forged in ("/etc/passwd", "/home/user/../../etc/passwd", "/home/user/a\x00b", "x"):
        url = _with_query(
            read_url, path=forged, signature=signature(secret, "GET", vm, forged, exp)
        )
        expect(requests.get(url, timeout=30), 400, "bad_request", forged)
    # Method swapped: PUT and DELETE to a read URL.
    for method in ("PUT", "DELETE", "POST"):
        r = requests.request(method, read_url, data=b"x", timeout=30)
        expect(r, 405, "bad_request", method)

    upload = api.write(vm, {"path": "/home/user/up", "size": 3, "presigned": True})[0]
    put_url, upload_id = upload["presigned_url"], upload["upload_id"]
    uq = {k: v[0] for k, v in parse_qs(urlsplit(put_url).query).items()}
    upath = urlsplit(put_url).path
    bad_puts = [
        _with_query(put_url, signature=_flip(uq["signature"])),
        _with_query(put_url, signature=None),
        _with_query(put_url, expires=str(int(uq["expires"]) + 1)),
        _with_query(put_url, expires=None),
        f"{base}{upath.replace(vm, other_vm)}?{urlsplit(put_url).query}",  # vm swapped
        f"{base}{upath.replace(upload_id, new_ulid())}?{urlsplit(put_url).query}",
        _with_query(
            put_url,
            expires=str(past),
            signature=signature(secret, "PUT", vm, upload_id, past),
        ),
        # A GET signature over the upload id is not a PUT signature.
        _with_query(put_url, signature=signature(secret, "GET", vm, upload_id, int(uq["expires"]))),
    ]
    for url in bad_puts:
        expect(requests.put(url, data=b"abc", timeout=30), 403, "forbidden", url[-120:])
        assert requests.head(url, timeout=30).status_code == 403, url
    for method in ("GET", "POST", "DELETE"):
        expect(requests.request(method, put_url, timeout=30), 405, "bad_request", method)
    # The untouched URL still works, and the read URL of the other VM is not valid here.
    assert requests.put(put_url, data=b"abc", timeout=30).status_code == 200
    done = api.write(vm, {"path": "/home/user/up", "size": 3, "upload_id": upload_id})[0]
    assert done["complete"] and done["written"], done
    assert api.run(vm, "cat /home/user/up")["stdout"] == "abc"
    assert api.run(other_vm, "test -e /home/user/up; echo $?")["stdout"] == "1\n"
    assert_healthy(api, vm)


def test_presigned_url_of_a_deleted_vm_is_404(api: Api, vm: str) -> None:
    path = "/home/user/big.bin"
    api.run(vm, f"head -c 5000000 /dev/zero > {path}")
    read_url = api.sync(vm, {"op": "read", "path": path}).json()["presigned_url"]
    upload = api.write(vm, {"path": "/home/user/up", "size": 3, "presigned": True})[0]
    assert api.delete(f"/api/v1/vms/{vm}").status_code == 200
    expect(requests.get(read_url, timeout=30), 404, "not_found")
    expect(requests.put(upload["presigned_url"], data=b"abc", timeout=30), 404, "not_found")
    head = requests.head(upload["presigned_url"], timeout=30)
    assert head.status_code in (404, 200), head


# --- links inside the VM ----------------------------------------------------------------


def _fingerprint(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).digest(), st.st_mtime_ns, st.st_ino


@pytest.fixture
def host_marker(tmp_path: Path) -> Path:
    marker = tmp_path / "host-secret.txt"
    marker.write_bytes(b"HOST-ONLY-CONTENT-" + os.urandom(8).hex().encode())
    return marker


def test_links_in_the_vm_never_reach_host_files(
    api: Api, vm: str, arker_server: ArkerServer, host_marker: Path
) -> None:
    data_dir = Path(arker_server.data_dir)
    secret_file = data_dir / "presign.key"
    watched = [host_marker, Path("/etc/passwd"), Path("/etc/hostname"), secret_file]
    watched = [p for p in watched if p.exists()]
    before = {p: _fingerprint(p) for p in watched}
    host_dir_listing = sorted(os.listdir(data_dir))
    marker_tail = host_marker.read_bytes()
    marker_sha = hashlib.sha256(marker_tail).hexdigest()
    q = shlex.quote
    setup = "; ".join(
        [
            "cd /home/user",
            "ln -s /etc/passwd x",
            f"ln -s {q(str(host_marker))} m",
            f"ln -s {q(str(data_dir))} dd",
            f"ln -s {q(str(host_marker.parent))} md",
            "ln -s / d",
            "ln -s ../../.. up",
            "mkdir -p real && ln -s ../x real/x2",
            "ln /etc/passwd h 2>/dev/null || true",
            "echo mine > own && ln own hl",
            "ls -la",
        ]
    )
    listing = api.run(vm, setup)["stdout"]
    vm_passwd = api.run(vm, "cat /etc/passwd")["stdout"]
    host_passwd = Path("/etc/passwd").read_bytes()

    # Reads: only ever the VM's own bytes (or a refusal), never a host file.
    read_paths = [
        "/home/user/x",
        "/home/user/m",
        "/home/user/real/x2",
        "/home/user/d/etc/passwd",
        "/home/user/up/etc/passwd",
        f"/home/user/d{host_marker}",
        f"/home/user/dd/{secret_file.name}",
        f"/home/user/md/{host_marker.name}",
        "/home/user/h",
        "/home/user/hl",
    ]
    for path in read_paths:
        r = api.sync(vm, {"op": "read", "path": path})
        assert r.status_code in (200, 400, 403, 404), (path, r.text)
        assert r.status_code < 500
        assert marker_tail.decode() not in r.text, path
        assert base64.b64encode(secret_file.read_bytes()).decode() not in r.text, path
        if r.status_code == 200:
            body = r.json()
            if "content" in body:
                got = body["content"]
                if body["encoding"] == "base64":
                    got = base64.b64decode(got).decode(errors="replace")
                if path in ("/home/user/x", "/home/user/d/etc/passwd", "/home/user/h"):
                    assert got == vm_passwd or host_passwd == vm_passwd.encode(), path
        else:
            error_of(r)

    # Writes through the links: the host files keep their bytes and mtime.
    write_paths = [
        "/home/user/m",
        f"/home/user/d{host_marker}",
        f"/home/user/md/{host_marker.name}",
        f"/home/user/dd/{secret_file.name}",
        "/home/user/dd/evil-new-file",
        "/home/user/md/evil-new-file",
        "/home/user/hl",
    ]
    for path in write_paths:
        results = api.write(vm, chunk(path, b"PWNED"))
        assert len(results) == 1, results
        if results[0].get("error"):
            assert results[0]["error"]["code"] in ("bad_request", "forbidden", "not_found")
    # Presigned upload through a link as well.
    up = api.write(vm, {"path": "/home/user/md/evil-presigned", "size": 5, "presigned": True})[0]
    if "presigned_url" in up:
        assert requests.put(up["presigned_url"], data=b"PWNED", timeout=30).status_code < 500
        api.write(
            vm, {"path": "/home/user/md/evil-presigned", "size": 5, "upload_id": up["upload_id"]}
        )
    # The hard link's sibling keeps its bytes when the link is rewritten: writes replace.
    assert api.run(vm, "cat /home/user/own")["stdout"] == "mine\n"

    # Manifest and delete through the links stay inside the VM.
    for path in ("/home/user", "/home/user/md", "/home/user/dd", "/home/user/m"):
        r = api.sync(vm, {"op": "manifest", "path": path})
        assert r.status_code in (200, 400, 404), (path, r.text)
        # Only the VM's own files (e.g. what the writes above created inside the VM).
        assert marker_sha not in r.text, r.text
        if r.status_code == 200:
            for entry in r.json()["entries"]:
                assert entry["path"].startswith("/home/user/"), entry
    deletes = [
        "/home/user/m",
        f"/home/user/md/{host_marker.name}",
        f"/home/user/dd/{secret_file.name}",
        f"/home/user/d{host_marker}",
        "/home/user/d/etc/passwd",
        "/home/user/h",
    ]
    r = api.sync(vm, {"op": "delete", "paths": deletes})
    assert r.status_code == 200, r.text

    after = {p: _fingerprint(p) for p in watched}
    assert after == before, (listing, before, after)
    assert sorted(os.listdir(data_dir)) == host_dir_listing
    assert not (host_marker.parent / "evil-new-file").exists()
    assert not (host_marker.parent / "evil-presigned").exists()
    assert not (data_dir / "evil-new-file").exists()
    # The VM's own /etc/passwd was not changed by anything above either.
    assert api.run(vm, "cat /etc/passwd")["stdout"] == vm_passwd
    assert_healthy(api, vm)


# --- odd strings in commands, sessions, names and headers -----------------------------


def test_odd_strings_in_run_fork_and_headers(api: Api, vm: str) -> None:
    run = f"/api/v1/vms/{vm}/run"
    for command in ("echo a\u0000b", "\u0000", "echo " + "x" * 200_000, "echo \u202e\ufeff"):
        r = api.post(run, json={"command": command})
        if len(command) > 128 * 1024:
            expect(r, 413, "payload_too_large", "long command")
            continue
        assert r.status_code in (200, 400), (command[:20], r.text[:300])
        if r.status_code != 200:
            expect(r, 400, "bad_request", command[:20])
    for session in ("../../../../tmp/x", "/etc", "a\u0000b", "..", ".", "", " ", "\n", "s/../t"):
        r = api.post(run, json={"command": "pwd", "session_id": session})
        assert r.status_code in (200, 400), (session, r.text[:300])
        if r.status_code != 200:
            expect(r, 400, "bad_request", session)
    for name in ("a\u0000b", "'; DROP TABLE vms; --", "\u202e", ""):
        r = api.post(f"/api/v1/vms/{vm}/fork", json={"name": name})
        assert r.status_code in (200, 400), (name, r.text[:300])
    r = api.post("/api/v1/vms/fork", json={"from": "never\u0000named"})
    expect(r, 404, "not_found")
    for key in ("", "k" * 65, "a\tb", "é", "k" * 8000):
        r = api.post(run, json={"command": "true"}, headers={"Idempotency-Key": key})
        assert r.status_code in (200, 400), (key[:10], r.text[:300])
        if r.status_code != 200:
            expect(r, 400, "bad_request", key[:10])
    assert_healthy(api, vm)


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


def test_manifest_does_not_follow_a_symlinked_root(api: Api, vm: str) -> None:
    api.run(
        vm,
        "ln -s /etc /home/user/e && ln -s / /home/user/d && mkdir -p /home/user/real "
        "&& echo x > /home/user/real/f && ln -s /home/user/real /home/user/inside",
    )
    for root in ("/home/user/e", "/home/user/d", "/home/user/d/etc", "/home/user/inside"):
        r = api.sync(vm, {"op": "manifest", "path": root})
        assert r.status_code in (200, 400), r.text[:300]
        if r.status_code == 200:
            assert r.json()["entries"] == [], (root, r.text[:300])
    listed = api.sync(vm, {"op": "manifest", "path": "/home/user/real"}).json()["entries"]
    assert [e["path"] for e in listed] == ["/home/user/real/f"]


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("run", {"command": "true", "session_id": True}),
        ("run", {"command": "true", "timeout": "5"}),
        ("run", {"command": "true", "timeout": 1.5}),
        ("fork", {"is_public": "yes"}),
        ("fork", {"is_public": 1}),
        ("sync", {"op": "read", "path": 7}),
    ],
)
def test_no_type_coercion_in_request_bodies(
    api: Api, vm: str, route: str, body: dict[str, Any]
) -> None:
    """A wrong type is a 400, never silently reinterpreted (``true`` as session 1)."""
    r = api.post(f"/api/v1/vms/{vm}/{route}", json=body)
    assert error_of(r) == (400, "bad_request"), r.text[:300]
