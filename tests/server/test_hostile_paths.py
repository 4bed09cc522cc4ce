"""Path tricks in file paths and VM ids against a real `arker serve`.

``..``, NUL, over-long, relative and encoded paths are a 400 on every sync op; odd or
encoded VM ids in a URL are a 404 (or a 405 when the decoded path names another
route), and presigned routes with them a 403.
"""

from __future__ import annotations

import pytest

from arker._constants import ARKUNTU_ID
from arker.testing import ArkerServer
from tests.kit.raw_http import JSON, auth, raw, raw_error
from tests.kit.server import Api, assert_healthy, chunk, expect

# Every answer must be an error envelope with the documented code and status, never a
# 5xx: no request of this module may reach the server's 500 handler.
pytestmark = pytest.mark.usefixtures("no_unhandled_errors")


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
