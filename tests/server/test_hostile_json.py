"""Malformed JSON, wrong types, missing and extra fields against a real `arker serve`.

Every refusal is a 400 ``bad_request`` envelope (never a 5xx, never a silent
coercion), and the server stays healthy after each batch (health check plus a run).
"""

from __future__ import annotations

from typing import Any

import pytest

from arker._constants import MAX_FILE_BYTES
from arker._ids import new_ulid
from tests.kit.raw_http import JSON
from tests.kit.server import Api, assert_healthy, chunk, error_of, expect

# Every answer must be an error envelope with the documented code and status, never a
# 5xx: no request of this module may reach the server's 500 handler.
pytestmark = pytest.mark.usefixtures("no_unhandled_errors")


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
        {"offset": 10**26},  # past SQLite integers: was a 500 OverflowError
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
