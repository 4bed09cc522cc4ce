"""Live runs and the server's life: restarts, big outputs, forks of busy VMs.

Each test starts its own `arker serve` (restarts, memory figures of one process).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from arker.testing import ArkerServer, start_server
from tests.kit.server import Api

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ArkerServer]:
    srv = start_server(tmp_path / "data")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def api(server: ArkerServer) -> Iterator[Api]:
    client = Api(server, server.api_key)
    try:
        yield client
    finally:
        client.close()


def start(api: Api, vm: str, command: str, **body: Any) -> str:
    body.setdefault("time_to_background", 0)
    r = api.post(f"/api/v1/vms/{vm}/runs", json={"command": command, **body})
    assert r.status_code in (200, 202), r.text
    return str(r.json()["run_id"])


def get_run(api: Api, vm: str, run_id: str) -> dict[str, Any]:
    r = api.get(f"/api/v1/vms/{vm}/runs/{run_id}")
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def wait_for(api: Api, vm: str, run_id: str, text: str) -> None:
    deadline = time.monotonic() + 30
    while text not in get_run(api, vm, run_id)["stdout"]:
        assert time.monotonic() < deadline, f"{text!r} never appeared"
        time.sleep(0.05)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


BEATING = (
    "setsid sh -c 'while :; do echo beat >> /home/user/beat; sleep 0.05; done' "
    "</dev/null >/dev/null 2>&1 & echo started; sleep 600"
)


@pytest.mark.parametrize("kill", [True, False], ids=["sigkill", "sigterm"])
def test_a_restart_fails_live_runs_and_leaves_none_of_their_processes(
    server: ArkerServer, api: Api, kill: bool
) -> None:
    vm = str(api.fork()["vm_id"])
    run_id = start(api, vm, BEATING, session_id="beating")
    wait_for(api, vm, run_id, "started")
    server.restart(kill=kill)
    after = Api(server, server.api_key)
    try:
        run = get_run(after, vm, run_id)
        assert run["state"] == "failed", run
        assert run["fail_reason"]
        assert "started" in run["stdout"]  # its output survived the restart
        size = after.run(vm, "wc -c < /home/user/beat")["stdout"]
        time.sleep(0.5)
        assert after.run(vm, "wc -c < /home/user/beat")["stdout"] == size
    finally:
        after.close()


def test_a_200_mb_output_is_followed_with_the_server_memory_bounded(
    server: ArkerServer, api: Api
) -> None:
    vm = str(api.fork()["vm_id"])
    total = 200_000_000
    before = rss_kib(server.pid)
    run_id = start(api, vm, f"head -c {total} /dev/zero | tr '\\0' a")
    got = 0
    peak = before
    offset = 0
    while True:
        r = api.get(
            f"/api/v1/vms/{vm}/runs/{run_id}/output",
            params={"stdout_offset": offset, "limit": 4 << 20, "wait": 10},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        data = base64.b64decode(body["stdout"]["data"])
        assert data.count(b"a") == len(data)
        got += len(data)
        offset = body["stdout"]["next_offset"]
        peak = max(peak, rss_kib(server.pid))
        if body["done"]:
            break
    assert got == total and body["stdout"]["truncated"] is False
    # A few answers of 4 MiB (base64 and JSON copies) at most, never the output.
    assert peak - before < 120 * 1024, f"server RSS grew {(peak - before) // 1024} MiB"
    run = get_run(api, vm, run_id)
    assert run["state"] == "completed" and run["stdout_truncated"] is True  # inline cap
    assert len(run["stdout"]) == 4 << 20


def test_fork_of_a_vm_with_a_live_writer_answers_and_both_go_on(api: Api) -> None:
    vm = str(api.fork()["vm_id"])
    run_id = start(
        api,
        vm,
        "echo started; while :; do echo x >> /home/user/w; sleep 0.01; done",
        session_id="w",
    )
    wait_for(api, vm, run_id, "started")
    r = api.post(f"/api/v1/vms/{vm}/fork", json={"is_public": False})
    assert r.status_code == 200, r.text
    child = r.json()["vm_id"]
    assert get_run(api, vm, run_id)["state"] == "running"
    n = int(api.run(child, "wc -l < /home/user/w")["stdout"])
    time.sleep(0.3)
    assert int(api.run(child, "wc -l < /home/user/w")["stdout"]) == n  # no process there
    assert int(api.run(vm, "wc -l < /home/user/w")["stdout"]) > n  # the parent goes on
    assert api.get(f"/api/v1/vms/{child}/runs").json()["runs"] == []
    api.delete(f"/api/v1/vms/{vm}/runs/{run_id}")


def test_runs_of_a_deleted_vm_are_removed_at_the_next_start(
    server: ArkerServer, api: Api, tmp_path: Path
) -> None:
    vm = str(api.fork()["vm_id"])
    keep = str(api.fork()["vm_id"])
    gone_run = start(api, vm, "echo bye", time_to_background=30)
    kept_run = start(api, keep, "echo hi", time_to_background=30)
    runs_dir = tmp_path / "data" / "runs"
    assert (runs_dir / f"{gone_run}.out").read_bytes() == b"bye\n"
    assert api.delete(f"/api/v1/vms/{vm}").status_code == 200
    server.restart()
    assert not (runs_dir / f"{gone_run}.out").exists()
    assert not (runs_dir / f"{gone_run}.err").exists()
    after = Api(server, server.api_key)
    try:
        assert get_run(after, keep, kept_run)["stdout"] == "hi\n"
    finally:
        after.close()


def test_a_stopping_server_answers_its_waiting_requests_503_and_exits(
    server: ArkerServer, api: Api
) -> None:
    import signal
    import threading

    vm = str(api.fork()["vm_id"])
    run_id = start(api, vm, "sleep 600", session_id="a")
    got: dict[str, Any] = {}

    def waiting_start() -> None:
        mine = api.fresh()
        body = {"command": "sleep 600", "session_id": "b"}  # time_to_background: 300
        got["start"] = mine.post(f"/api/v1/vms/{vm}/runs", json=body)

    def follower() -> None:
        mine = api.fresh()
        path = f"/api/v1/vms/{vm}/runs/{run_id}/output"
        got["follow"] = mine.get(path, params={"wait": 30})

    threads = [threading.Thread(target=waiting_start), threading.Thread(target=follower)]
    for t in threads:
        t.start()
    time.sleep(1.5)  # both are waiting in the server
    # The harness SIGKILLs a server still up after 30 s: 0 means it stopped by itself.
    assert server.stop(signal.SIGTERM) == 0
    for t in threads:
        t.join(30)
    r = got["start"]
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "unavailable", r.text
    # A follower is answered either way a follower can go on from: 503, or what it has
    # so far (nothing new, not done), so it asks again from the same offsets.
    r = got["follow"]
    if r.status_code == 200:
        body = r.json()
        assert body["done"] is False and body["stdout"]["data"] == "", r.text
    else:
        assert (r.status_code, r.json()["error"]["code"]) == (503, "unavailable"), r.text
    server.start()
