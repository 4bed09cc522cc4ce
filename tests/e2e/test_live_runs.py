"""Live runs against a real `arker serve`, in raw HTTP: start, poll, follow, cancel.

The SDK side is built separately; these tests speak the wire (`arker._wire_live`).
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from arker.testing import ArkerServer
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


def start(api: Api, vm: str, command: str, **body: Any) -> dict[str, Any]:
    body.setdefault("time_to_background", 0)
    r = api.post(f"/api/v1/vms/{vm}/runs", json={"command": command, **body})
    assert r.status_code in (200, 202), r.text
    out: dict[str, Any] = r.json()
    return out


def get_run(api: Api, vm: str, run_id: str) -> dict[str, Any]:
    r = api.get(f"/api/v1/vms/{vm}/runs/{run_id}")
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def wait_state(api: Api, vm: str, run_id: str, *states: str, within: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        run = get_run(api, vm, run_id)
        if run["state"] in states:
            return run
        assert time.monotonic() < deadline, f"run stayed {run['state']}"
        time.sleep(0.05)


def output(api: Api, vm: str, run_id: str, out: int = 0, err: int = 0, **q: Any) -> dict[str, Any]:
    params = {"stdout_offset": out, "stderr_offset": err, **q}
    r = api.get(f"/api/v1/vms/{vm}/runs/{run_id}/output", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def follow(api: Api, vm: str, run_id: str, *, limit: int | None = None) -> tuple[bytes, bytes]:
    """Follow a run's output to its end, as the SDK does."""
    got = {"stdout": bytearray(), "stderr": bytearray()}
    q: dict[str, Any] = {"wait": 10}
    if limit is not None:
        q["limit"] = limit
    while True:
        ans = output(api, vm, run_id, len(got["stdout"]), len(got["stderr"]), **q)
        for name in got:
            s = ans[name]
            assert s["offset"] == len(got[name])
            got[name] += base64.b64decode(s["data"])
            assert s["next_offset"] == len(got[name])
        if ans["done"]:
            return bytes(got["stdout"]), bytes(got["stderr"])


def test_start_answers_202_at_once_and_the_run_completes(api: Api, vm: str) -> None:
    started = start(api, vm, "sleep 1; echo out; echo err >&2; exit 3")
    assert started["state"] in ("pending", "running") and started["run_id"]
    run = wait_state(api, vm, started["run_id"], "completed")
    assert run["exit_code"] == 3
    assert run["stdout"] == "out\n" and run["stderr"] == "err\n"
    assert run["started_at"] and run["completed_at"]
    assert run["session_id"] == "0"


def test_a_quick_run_within_time_to_background_answers_200_with_its_output(
    api: Api, vm: str
) -> None:
    r = api.post(f"/api/v1/vms/{vm}/runs", json={"command": "echo hi", "time_to_background": 30})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "completed" and body["stdout"] == "hi\n" and body["exit_code"] == 0


def test_output_grows_in_get_run_while_the_command_runs(api: Api, vm: str) -> None:
    started = start(api, vm, "echo one; sleep 600")
    run_id = started["run_id"]
    deadline = time.monotonic() + 30
    while get_run(api, vm, run_id)["stdout"] != "one\n":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert get_run(api, vm, run_id)["state"] == "running"
    r = api.delete(f"/api/v1/vms/{vm}/runs/{run_id}")
    assert r.status_code == 200 and r.json()["cancelled"] is True
    run = get_run(api, vm, run_id)
    assert run["state"] == "cancelled" and run["exit_code"] is None


def test_output_long_poll_reconnects_without_gap_or_duplicate(api: Api, vm: str) -> None:
    cmd = "i=0; while [ $i -lt 200 ]; do echo line$i; i=$((i+1)); sleep 0.01; done"
    run_id = start(api, vm, cmd)["run_id"]
    # A follower that reads at most 7 bytes per answer reconnects many times.
    stdout, stderr = follow(api, vm, run_id, limit=7)
    assert stdout == b"".join(b"line%d\n" % i for i in range(200))
    assert stderr == b""


def test_output_long_poll_waits_for_news_then_answers(api: Api, vm: str) -> None:
    run_id = start(api, vm, "echo a; sleep 1.5; echo b; sleep 600")["run_id"]
    first = output(api, vm, run_id, wait=10)
    data = base64.b64decode(first["stdout"]["data"])
    if data == b"":  # not started yet: the answer came on the start itself
        first = output(api, vm, run_id, wait=10)
        data = base64.b64decode(first["stdout"]["data"])
    assert data == b"a\n" and first["done"] is False
    nxt = output(api, vm, run_id, out=first["stdout"]["next_offset"], wait=20)
    assert base64.b64decode(nxt["stdout"]["data"]) == b"b\n"
    api.delete(f"/api/v1/vms/{vm}/runs/{run_id}")


def test_output_offset_past_the_stream_is_bad_request(api: Api, vm: str) -> None:
    run_id = start(api, vm, "echo x", time_to_background=30)["run_id"]
    r = api.get(f"/api/v1/vms/{vm}/runs/{run_id}/output", params={"stdout_offset": 3})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"


def test_cancel_kills_a_setsid_daemon(api: Api, vm: str) -> None:
    cmd = (
        "setsid sh -c 'while :; do echo beat >> /home/user/beat; sleep 0.05; done' "
        "</dev/null >/dev/null 2>&1 & echo started; sleep 600"
    )
    run_id = start(api, vm, cmd)["run_id"]
    deadline = time.monotonic() + 30
    while "started" not in get_run(api, vm, run_id)["stdout"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert api.delete(f"/api/v1/vms/{vm}/runs/{run_id}").json()["cancelled"] is True
    size = api.run(vm, "wc -c < /home/user/beat", session_id="probe")["stdout"]
    time.sleep(0.5)
    assert api.run(vm, "wc -c < /home/user/beat", session_id="probe")["stdout"] == size


def test_deleting_the_vm_ends_its_runs(api: Api) -> None:
    vm = str(api.fork()["vm_id"])
    run_id = start(api, vm, "echo up; sleep 600")["run_id"]
    deadline = time.monotonic() + 30
    while get_run(api, vm, run_id)["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = api.delete(f"/api/v1/vms/{vm}")
    assert r.status_code == 200, r.text
    # The VM is gone for its org: its runs answer 404 like the VM.
    assert api.get(f"/api/v1/vms/{vm}/runs/{run_id}").status_code == 404


def test_runs_of_one_session_queue_and_other_sessions_run_at_once(api: Api, vm: str) -> None:
    first = start(api, vm, "sleep 2; echo first", session_id="tab")["run_id"]
    second = start(api, vm, "echo second", session_id="tab")["run_id"]
    other = start(api, vm, "echo other", session_id="tab2", time_to_background=30)
    assert other["state"] == "completed", "a busy session held up another session"
    assert get_run(api, vm, second)["state"] == "pending"
    run = wait_state(api, vm, second, "completed")
    assert run["stdout"] == "second\n"
    assert get_run(api, vm, first)["state"] == "completed"


def test_sessions_keep_cwd_across_the_0_1_0_route_and_runs(api: Api, vm: str) -> None:
    api.run(vm, "mkdir -p /home/user/w && cd /home/user/w", session_id="shared")
    ans = start(api, vm, "pwd", session_id="shared", time_to_background=30)
    assert ans["stdout"] == "/home/user/w\n"
    r = api.post(f"/api/v1/vms/{vm}/sessions", json={"cwd": "/tmp", "env": {"GREETING": "hey"}})
    assert r.status_code == 200, r.text
    sid = r.json()["session_id"]
    ans = start(api, vm, 'pwd; echo "$GREETING"', session_id=sid, time_to_background=30)
    assert ans["stdout"] == "/tmp\nhey\n"
    listed = api.get(f"/api/v1/vms/{vm}/sessions").json()["sessions"]
    assert {s["session_id"] for s in listed} >= {sid, "shared"}
    assert api.delete(f"/api/v1/vms/{vm}/sessions/{sid}").json()["deleted"] is True
    assert api.get(f"/api/v1/vms/{vm}/sessions/{sid}").status_code == 404


def test_a_dev_server_in_one_session_answers_runs_in_another(api: Api, vm: str) -> None:
    port = 18000 + int(time.time() * 1000) % 2000
    server = start(
        api, vm, f"cd /tmp && exec python3 -m http.server {port} --bind 127.0.0.1", session_id="srv"
    )["run_id"]
    try:
        cmd = (
            f'for i in $(seq 100); do python3 -c "import urllib.request as u; '
            f"print(u.urlopen('http://127.0.0.1:{port}/').status)\" 2>/dev/null && break; "
            "sleep 0.1; done"
        )
        assert api.run(vm, cmd, session_id="client")["stdout"].strip() == "200"
    finally:
        api.delete(f"/api/v1/vms/{vm}/runs/{server}")


def test_same_idempotency_key_starts_one_run(api: Api, vm: str) -> None:
    headers = {"Idempotency-Key": f"live-{time.time_ns()}"}
    body = {"command": "echo once >> /home/user/count; sleep 1", "time_to_background": 0}
    ids = set()
    for _ in range(3):
        r = api.post(f"/api/v1/vms/{vm}/runs", json=body, headers=headers)
        assert r.status_code in (200, 202), r.text
        ids.add(r.json()["run_id"])
    assert len(ids) == 1
    wait_state(api, vm, ids.pop(), "completed")
    assert api.run(vm, "cat /home/user/count")["stdout"] == "once\n"


def test_another_orgs_runs_are_not_found(api: Api, vm: str, arker_server: ArkerServer) -> None:
    run_id = start(api, vm, "echo mine", time_to_background=30)["run_id"]
    other = Api(arker_server, arker_server.create_key(f"org-{time.time_ns()}"))
    try:
        for method, path in (
            ("GET", f"/api/v1/vms/{vm}/runs/{run_id}"),
            ("GET", f"/api/v1/vms/{vm}/runs/{run_id}/output"),
            ("DELETE", f"/api/v1/vms/{vm}/runs/{run_id}"),
            ("GET", f"/api/v1/vms/{vm}/runs"),
        ):
            assert other.request(method, path).status_code == 404, (method, path)
        r = other.post(f"/api/v1/vms/{vm}/runs", json={"command": "echo x"})
        assert r.status_code == 404
    finally:
        other.close()


def test_sixteen_followers_of_one_run_all_get_every_byte(api: Api, vm: str) -> None:
    cmd = "i=0; while [ $i -lt 100 ]; do echo tick$i; i=$((i+1)); sleep 0.02; done"
    run_id = start(api, vm, cmd)["run_id"]
    results: list[bytes] = []
    errors: list[BaseException] = []

    def one() -> None:
        mine = api.fresh()
        try:
            results.append(follow(mine, vm, run_id)[0])
        except BaseException as exc:
            errors.append(exc)
        finally:
            mine.close()

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]
    expected = b"".join(b"tick%d\n" % i for i in range(100))
    assert results == [expected] * 16


def test_list_runs_pages_newest_first(api: Api, vm: str) -> None:
    ids = [start(api, vm, f"echo {i}", time_to_background=30)["run_id"] for i in range(3)]
    page = api.get(f"/api/v1/vms/{vm}/runs", params={"limit": 2}).json()
    assert [r["run_id"] for r in page["runs"]] == ids[::-1][:2]
    rest = api.get(f"/api/v1/vms/{vm}/runs", params={"limit": 2, "cursor": page["next_cursor"]})
    assert [r["run_id"] for r in rest.json()["runs"]] == [ids[0]]
    assert rest.json()["next_cursor"] is None


def test_a_run_past_its_timeout_is_killed(api: Api, vm: str) -> None:
    ans = start(api, vm, "echo begin; sleep 600", timeout=1, time_to_background=60)
    assert ans["state"] == "completed" and ans["exit_code"] == 124
    assert ans["stdout"] == "begin\n"


def test_a_pending_run_cancelled_never_runs(api: Api, vm: str) -> None:
    first = start(api, vm, "sleep 600", session_id="q")["run_id"]
    queued = start(api, vm, "echo ran > /home/user/queued", session_id="q")["run_id"]
    assert get_run(api, vm, queued)["state"] == "pending"
    assert api.delete(f"/api/v1/vms/{vm}/runs/{queued}").json()["cancelled"] is True
    assert get_run(api, vm, queued)["state"] == "cancelled"
    assert api.delete(f"/api/v1/vms/{vm}/runs/{first}").json()["cancelled"] is True
    assert api.run(vm, "test -e /home/user/queued && echo yes || echo no")["stdout"] == "no\n"
    # Cancelling a run that has ended says so.
    assert api.delete(f"/api/v1/vms/{vm}/runs/{first}").json()["cancelled"] is False


def test_deleting_a_session_cancels_its_running_and_queued_runs(api: Api, vm: str) -> None:
    r = api.post(f"/api/v1/vms/{vm}/sessions", json={})
    sid = r.json()["session_id"]
    running = start(api, vm, "sleep 600", session_id=sid)["run_id"]
    queued = start(api, vm, "echo never", session_id=sid)["run_id"]
    wait_state(api, vm, running, "running")
    assert api.get(f"/api/v1/vms/{vm}/sessions/{sid}").json()["state"] == "running"
    assert api.delete(f"/api/v1/vms/{vm}/sessions/{sid}").json()["deleted"] is True
    for run_id in (running, queued):
        run = get_run(api, vm, run_id)
        assert run["state"] == "cancelled" and run["fail_reason"], run
