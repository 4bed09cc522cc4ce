"""Odd strings in commands, sessions, names and headers against a real `arker serve`.

NUL, bidi controls, over-long values: each is run, or refused with a 400 (a 413 past
the body limit), and the server stays healthy.
"""

from __future__ import annotations

import pytest

from tests.kit.server import Api, assert_healthy, expect

# Every answer must be an error envelope with the documented code and status, never a
# 5xx: no request of this module may reach the server's 500 handler.
pytestmark = pytest.mark.usefixtures("no_unhandled_errors")


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
