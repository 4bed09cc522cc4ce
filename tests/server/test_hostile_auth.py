"""Bad auth headers and another org's key against a real `arker serve`.

Anything but ``Authorization: Bearer <known key>`` is a 401, answered before the body
is read; another org's VMs answer 404 as if absent.
"""

from __future__ import annotations

import pytest

from arker._constants import ARKUNTU_ID
from arker.testing import ArkerServer
from tests.kit.raw_http import JSON, raw, raw_error
from tests.kit.server import Api, assert_healthy, chunk, expect

# Every answer must be an error envelope with the documented code and status, never a
# 5xx: no request of this module may reach the server's 500 handler.
pytestmark = pytest.mark.usefixtures("no_unhandled_errors")


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
