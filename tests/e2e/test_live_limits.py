"""Live runs' bounds and exactly-once start, against a real `arker serve` in raw HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from arker.testing import ArkerServer
from tests.kit.faultproxy import FaultPlan, FaultProxy
from tests.kit.server import Api

pytestmark = pytest.mark.e2e


@pytest.fixture
def api(arker_server: ArkerServer) -> Iterator[Api]:
    client = Api(arker_server, arker_server.api_key)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def vm(api: Api) -> Iterator[str]:
    vm_id = str(api.fork()["vm_id"])
    yield vm_id
    api.delete(f"/api/v1/vms/{vm_id}")


def start(api: Api, vm: str, command: str, **body: Any) -> requests.Response:
    body.setdefault("time_to_background", 0)
    return api.post(f"/api/v1/vms/{vm}/runs", json={"command": command, **body})


def test_runs_past_the_per_vm_bound_are_rate_limited(api: Api, vm: str) -> None:
    for i in range(16):
        r = start(api, vm, "sleep 600", session_id=f"s{i}")
        assert r.status_code == 202, r.text
    r = start(api, vm, "echo one too many", session_id="extra")
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limited"
    assert "per VM" in r.json()["error"]["message"]
    # Another VM is not held up by this one's runs.
    other = str(api.fork()["vm_id"])
    try:
        r = start(api, other, "echo fine", time_to_background=30)
        assert r.status_code == 200 and r.json()["stdout"] == "fine\n"
    finally:
        api.delete(f"/api/v1/vms/{other}")


def test_a_start_whose_answer_was_lost_is_retried_into_the_same_run(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    plan = FaultPlan(
        seed=7,
        rate=1.0,
        faults=("reset_after_send", "cut_after_headers"),
        max_faults=2,
        applies=lambda method, path: method == "POST" and path.endswith("/runs"),
    )
    body = {"command": "echo ran >> /home/user/ran", "time_to_background": 0}
    headers = {
        "Authorization": f"Bearer {arker_server.api_key}",
        "Idempotency-Key": f"start-{time.time_ns()}",
    }
    answers = []
    with FaultProxy(arker_server.base_url, plan) as proxy:
        for _ in range(4):  # the first two attempts lose their answer after the server acted
            try:
                r = requests.post(
                    f"{proxy.url}/api/v1/vms/{vm}/runs", json=body, headers=headers, timeout=30
                )
            except requests.RequestException:
                continue
            if r.status_code in (200, 202):
                answers.append(r.json()["run_id"])
    assert sum(plan.injected.values()) == 2
    assert len(answers) == 2 and len(set(answers)) == 1
    listed = api.get(f"/api/v1/vms/{vm}/runs").json()["runs"]
    assert [r["run_id"] for r in listed] == answers[:1]
    deadline = time.monotonic() + 30
    while api.get(f"/api/v1/vms/{vm}/runs/{answers[0]}").json()["state"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert api.run(vm, "cat /home/user/ran")["stdout"] == "ran\n"


def test_followers_past_the_per_run_bound_are_rate_limited(api: Api, vm: str) -> None:
    import threading

    r = start(api, vm, "sleep 600")
    run_id = r.json()["run_id"]
    path = f"/api/v1/vms/{vm}/runs/{run_id}/output"
    statuses: list[int] = []

    def follower() -> None:
        mine = api.fresh()
        try:
            while True:  # as a follower does: ask again until the run is over
                r = mine.get(path, params={"wait": 30})
                if r.status_code == 429:  # a probe below took the last place: again
                    time.sleep(0.05)
                    continue
                if r.status_code != 200 or r.json()["done"]:
                    statuses.append(r.status_code)
                    return
        finally:
            mine.close()

    threads = [threading.Thread(target=follower) for _ in range(32)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while True:
        extra = api.get(path, params={"wait": 0})
        if extra.status_code == 429:
            break
        assert extra.status_code == 200, extra.text
        assert time.monotonic() < deadline, f"the 33rd follower was never refused {statuses}"
        time.sleep(0.05)
    assert extra.json()["error"]["code"] == "rate_limited"
    # Cancelling the run answers every waiting follower at once.
    assert api.delete(path.removesuffix("/output")).json()["cancelled"] is True
    for t in threads:
        t.join(30)
    assert statuses == [200] * 32


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"command": "echo \u0000"}, 400, "bad_request"),
        ({"command": "x" * (200 * 1024)}, 413, "payload_too_large"),
        ({"command": "true", "session_id": ""}, 400, "bad_request"),
        ({"command": "true", "session_id": "s" * 300}, 400, "bad_request"),
        ({"command": "true", "time_to_background": 301}, 400, "bad_request"),
        ({"command": "true", "timeout": 0}, 400, "bad_request"),
        ({"command": "true", "session_id": True}, 400, "bad_request"),
        ({}, 400, "bad_request"),
    ],
    ids=["nul", "huge", "empty-session", "long-session", "ttb", "timeout", "bool-session", "none"],
)
def test_bad_start_requests_get_a_clear_error(
    api: Api, vm: str, body: dict[str, Any], status: int, code: str
) -> None:
    r = api.post(f"/api/v1/vms/{vm}/runs", json=body)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    assert api.get(f"/api/v1/vms/{vm}/runs").json()["runs"] == []


@pytest.mark.parametrize(
    "query",
    [{"stdout_offset": -1}, {"wait": 31}, {"limit": 0}, {"limit": 5 << 20}, {"wait": "x"}],
    ids=["negative-offset", "long-wait", "zero-limit", "big-limit", "bad-wait"],
)
def test_bad_output_queries_are_bad_requests(api: Api, vm: str, query: dict[str, Any]) -> None:
    run_id = start(api, vm, "echo x", time_to_background=30).json()["run_id"]
    r = api.get(f"/api/v1/vms/{vm}/runs/{run_id}/output", params=query)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "bad_request"), r.text


def test_unknown_runs_and_sessions_are_not_found(api: Api, vm: str) -> None:
    for path in (
        f"/api/v1/vms/{vm}/runs/01ZZZZZZZZZZZZZZZZZZZZZZZZ",
        f"/api/v1/vms/{vm}/runs/{'x' * 500}",
        f"/api/v1/vms/{vm}/runs/nope/output",
        f"/api/v1/vms/{vm}/sessions/nope",
        "/api/v1/vms/01ZZZZZZZZZZZZZZZZZZZZZZZZ_loc0/runs",
    ):
        r = api.get(path)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found"), path
    r = api.delete(f"/api/v1/vms/{vm}/runs/nope")
    assert r.status_code == 404
    r = api.post(f"/api/v1/vms/{vm}/sessions", json={"cwd": "/no/such/dir"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "bad_request"), r.text
    r = api.post(f"/api/v1/vms/{vm}/sessions", json={"env": {"1BAD": "x"}})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "bad_request"), r.text
