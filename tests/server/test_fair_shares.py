"""Multi-tenant: one organisation saturating its share of runs cannot starve the others.

Against the session's real `arker serve` with its default shares (16 runs per org, 8 per
VM): runs past a share are refused at once with ``429 quota_exceeded`` and a
``Retry-After``, and while one org's share is full of sleeping commands, ``/health`` and
another org's ``echo`` still answer before those sleeps end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import requests

from arker.local.config import ServerConfig
from arker.testing import ArkerServer, start_server
from tests.kit.server import Api

pytestmark = pytest.mark.usefixtures("no_unhandled_errors")

SLEEP_S = 15


class _Runs:
    """Runs started in threads, each with its own HTTP client; answers kept in order."""

    def __init__(self) -> None:
        self.answers: list[tuple[float, requests.Response]] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, api: Api, vm: str, command: str, session: str) -> None:
        def go() -> None:
            client = api.fresh()
            try:
                r = client.post(
                    f"/api/v1/vms/{vm}/run",
                    json={"command": command, "session_id": session},
                    timeout=SLEEP_S * 6,
                )
            finally:
                client.close()
            with self._lock:
                self.answers.append((time.monotonic(), r))

        t = threading.Thread(target=go, daemon=True)
        t.start()
        self._threads.append(t)

    def join(self) -> None:
        for t in self._threads:
            t.join(SLEEP_S * 8)

    def statuses(self) -> list[int]:
        with self._lock:
            return [r.status_code for _, r in self.answers]


@pytest.fixture
def runs() -> Iterator[_Runs]:
    started = _Runs()
    yield started
    started.join()  # no run of this module outlives it


def _org(arker_server: ArkerServer, name: str) -> Api:
    return Api(arker_server, arker_server.create_key(name))


def test_a_saturating_org_is_refused_past_its_share_and_others_stay_fast(
    arker_server: ArkerServer, other: Api, runs: _Runs
) -> None:
    greedy = _org(arker_server, "greedy-org")
    vms = [greedy.fork(name=f"greedy-{i}")["vm_id"] for i in range(3)]
    others_vm = other.fork(name="bystander")["vm_id"]
    for i in range(45):  # the attack: 45 concurrent sleeps, separate sessions
        runs.start(greedy, vms[i % 3], f"sleep {SLEEP_S}", f"s{i}")

    # The refusals come at once; once they are in, every slot of the share is taken.
    refused_by = time.monotonic() + SLEEP_S * 2
    while runs.statuses().count(429) < 45 - ServerConfig.runs_per_org:
        assert time.monotonic() < refused_by, runs.statuses()
        time.sleep(0.1)
    assert 200 not in runs.statuses(), "a sleep ended before the check began"

    health = other.get("/api/v1/health", timeout=SLEEP_S * 4)
    echo = other.run(others_vm, "echo still here")
    answered = time.monotonic()
    assert health.status_code == 200
    assert echo["stdout"] == "still here\n"
    runs.join()
    first_sleep_done = min(t for t, r in runs.answers if r.status_code == 200)
    assert answered < first_sleep_done, "the other org waited for the sleeps to end"

    statuses = runs.statuses()
    assert statuses.count(200) == ServerConfig.runs_per_org, statuses
    refusal = next(r for _, r in runs.answers if r.status_code == 429)
    assert refusal.json()["error"]["code"] == "quota_exceeded"
    assert "organisation" in refusal.json()["error"]["message"]
    assert int(refusal.headers["Retry-After"]) >= 1
    greedy.close()


def test_one_vm_is_refused_past_its_share_of_runs(arker_server: ArkerServer, runs: _Runs) -> None:
    org = _org(arker_server, "one-busy-vm-org")
    vm = org.fork(name="busy")["vm_id"]
    extra = 2
    for i in range(ServerConfig.runs_per_vm + extra):
        runs.start(org, vm, "sleep 10", f"s{i}")
    runs.join()
    statuses = runs.statuses()
    assert statuses.count(200) == ServerConfig.runs_per_vm, statuses
    assert statuses.count(429) == extra, statuses
    refusal = next(r for _, r in runs.answers if r.status_code == 429)
    assert refusal.json()["error"]["code"] == "quota_exceeded"
    assert "VM" in refusal.json()["error"]["message"]
    assert "Retry-After" in refusal.headers
    # The share is given back: the VM runs again once its commands ended.
    assert org.run(vm, "echo again")["stdout"] == "again\n"
    org.close()


@pytest.fixture(scope="module")
def roomy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArkerServer]:
    """A server whose shares exceed the request thread pool (40 threads)."""
    server = start_server(
        tmp_path_factory.mktemp("roomy") / "data",
        extra_args=("--runs-per-org", "60", "--runs-per-vm", "60", "--runs-total", "60"),
    )
    try:
        yield server
    finally:
        server.stop()


def test_runs_waiting_on_their_commands_hold_no_request_thread(
    roomy_server: ArkerServer, runs: _Runs
) -> None:
    greedy = Api(roomy_server, roomy_server.api_key)
    bystander = Api(roomy_server, roomy_server.create_key("bystander-org"))
    vm = greedy.fork(name="greedy")["vm_id"]
    others_vm = bystander.fork(name="bystander")["vm_id"]
    count = 50  # more than the 40 threads that serve requests
    for i in range(count):
        runs.start(greedy, vm, f"sleep {SLEEP_S}", f"s{i}")
    time.sleep(3)  # let the requests arrive; none of the sleeps can have ended yet
    health = bystander.get("/api/v1/health", timeout=SLEEP_S * 4)
    echo = bystander.run(others_vm, "echo still here")
    answered = time.monotonic()
    assert health.status_code == 200
    assert echo["stdout"] == "still here\n"
    runs.join()
    assert runs.statuses() == [200] * count
    assert answered < min(t for t, _ in runs.answers), "health waited for the sleeps"
    greedy.close()
    bystander.close()
