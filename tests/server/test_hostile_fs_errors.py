"""Filesystem failures caused by the caller get their documented code, never a 500:
a name too long is 400, a file or directory in the way 409, a read-only place 403."""

from __future__ import annotations

import pytest

from tests.kit.server import Api, chunk, expect

pytestmark = pytest.mark.usefixtures("no_unhandled_errors")

LONG = "/home/user/" + "n" * 300


def _write_error(api: Api, vm: str, path: str) -> tuple[int, str]:
    r = api.sync(vm, {"op": "write", "writes": [chunk(path, b"data")]})
    if r.status_code != 200:
        body = r.json()
        return r.status_code, body["error"]["code"]
    result = r.json()["results"][0]
    assert result.get("error"), result
    code: str = result["error"]["code"]
    return {"bad_request": 400, "conflict": 409, "forbidden": 403}.get(code, 0), code


def test_a_name_too_long_is_bad_request_for_every_op(api: Api, vm: str) -> None:
    assert _write_error(api, vm, LONG) == (400, "bad_request")
    assert _write_error(api, vm, LONG + "/child") == (400, "bad_request")
    expect(api.sync(vm, {"op": "read", "path": LONG}), 400, "bad_request")
    expect(api.sync(vm, {"op": "delete", "paths": [LONG]}), 400, "bad_request")
    r = api.sync(vm, {"op": "manifest", "path": LONG})
    assert r.status_code in (200, 400), r.text


def test_deleting_through_a_file_or_a_directory_is_a_conflict(api: Api, vm: str) -> None:
    api.run(vm, "echo x > /home/user/f && mkdir -p /home/user/d")
    expect(api.sync(vm, {"op": "delete", "paths": ["/home/user/f/x"]}), 409, "conflict")
    expect(api.sync(vm, {"op": "delete", "paths": ["/home/user/d"]}), 409, "conflict")
    assert api.run(vm, "cat /home/user/f; test -d /home/user/d && echo dir")["stdout"] == (
        "x\ndir\n"
    )


def test_writing_where_a_file_or_directory_is_in_the_way_is_a_conflict(api: Api, vm: str) -> None:
    api.run(vm, "echo x > /home/user/f && mkdir -p /home/user/d")
    assert _write_error(api, vm, "/home/user/f/x") == (409, "conflict")
    assert _write_error(api, vm, "/home/user/d") == (409, "conflict")


def test_a_read_only_place_is_forbidden(api: Api, vm: str) -> None:
    api.run(vm, "mkdir /home/user/ro && echo k > /home/user/ro/keep && chmod 555 /home/user/ro")
    expect(api.sync(vm, {"op": "delete", "paths": ["/home/user/ro/keep"]}), 403, "forbidden")
    assert _write_error(api, vm, "/home/user/ro/new") == (403, "forbidden")
    assert _write_error(api, vm, "/home/user/ro/sub/new") == (403, "forbidden")
    assert api.run(vm, "cat /home/user/ro/keep")["stdout"] == "k\n"
