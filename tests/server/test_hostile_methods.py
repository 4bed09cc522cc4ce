"""Wrong HTTP methods against a real `arker serve`: a 405 envelope with ``Allow``."""

from __future__ import annotations

import pytest

from arker._ids import new_ulid
from arker.testing import ArkerServer
from tests.kit.raw_http import JSON, auth, raw, raw_error
from tests.kit.server import Api, assert_healthy

# Every answer must be an error envelope with the documented code and status, never a
# 5xx: no request of this module may reach the server's 500 handler.
pytestmark = pytest.mark.usefixtures("no_unhandled_errors")


# --- wrong methods ----------------------------------------------------------------------


def test_wrong_methods_are_405_envelope(api: Api, vm: str, arker_server: ArkerServer) -> None:
    allowed = {
        "/api/v1/health": {"GET"},
        "/api/v1/vms/list": {"GET"},
        "/api/v1/vms/fork": {"POST"},
        f"/api/v1/vms/{vm}/fork": {"POST"},
        f"/api/v1/vms/{vm}": {"DELETE", "GET", "PATCH"},  # GET/PATCH: the platform's API
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
            if method in ("DELETE", "GET", "PATCH") and route in (
                "/api/v1/vms/list",
                "/api/v1/vms/fork",
            ):
                # `DELETE/GET/PATCH /api/v1/vms/{vm_id}` with the id "list" or "fork"
                # (GET and PATCH are the platform's routes, in the platform's envelope).
                assert got[0] == 404 and b'"not_found"' in got[2], (method, route, got)
                continue
            # The wire's status table has no row for 405; the server answers the true
            # HTTP status with the generic `bad_request` code.
            assert raw_error(got) == (405, "bad_request"), (method, route, got)
            assert got[1].get("allow"), (method, route, got)
    assert_healthy(api, vm)
