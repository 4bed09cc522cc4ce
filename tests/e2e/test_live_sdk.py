"""Live runs through the SDK against a real `arker serve`: start, stream, wait, cancel,
reattach from another client, runs.create with callbacks, sessions, and starts through
the fault proxy making one run each.

Skipped while `arker serve` lacks the live-run routes (they are built on another
branch, and the module below is theirs); they run as soon as both sides are merged.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from arker import Arker, RunCancelledError, RunHandle
from arker._ids import new_ulid
from arker.testing import ArkerServer
from tests.kit.faultproxy import CUT_FAULTS, FaultPlan, FaultProxy

pytest.importorskip(
    "arker.local.routes_live", reason="arker serve has no live-run routes on this branch"
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def vm_id(arker_client: Arker) -> Iterator[str]:
    vm = arker_client.vms.fork("arkuntu", name=f"live-{new_ulid().lower()}")
    yield vm.vm_id
    arker_client.vms.delete(vm.vm_id)


def _drain(handle: RunHandle) -> dict[str, bytes]:
    got = {"stdout": b"", "stderr": b""}
    for chunk in handle.stream():
        got[chunk.stream] += chunk.data
    return got


def test_start_streams_every_byte_in_order_and_wait_gives_the_result(
    arker_client: Arker, vm_id: str
) -> None:
    command = "for i in $(seq 1 200); do echo line $i; done; printf '\\377' >&2; exit 4"
    handle = arker_client.runs.start(vm_id, command, session_id="count")
    got = _drain(handle)
    assert got["stdout"] == b"".join(b"line %d\n" % i for i in range(1, 201))
    assert got["stderr"] == b"\xff"
    result = handle.wait()
    assert (result.exit_code, result.stdout, result.stderr) == (4, got["stdout"], b"\xff")
    assert handle.status().state == "completed"


def test_callbacks_receive_output_while_the_command_still_runs(
    arker_client: Arker, vm_id: str
) -> None:
    # The command goes on only once a callback has seen its first line: a client that
    # got output only at the end would leave it waiting until its timeout (exit 124).
    gate = f"/tmp/go-{new_ulid()}"
    command = f"echo first; while [ ! -f {gate} ]; do sleep 0.05; done; echo second"
    seen: list[bytes] = []

    def on_stdout(data: bytes) -> None:
        seen.append(data)
        if b"first" in data:
            arker_client.runs.create(vm_id, f"touch {gate}", session_id="opener")

    result = arker_client.runs.create(
        vm_id, command, session_id="gated", timeout=60, on_stdout=on_stdout
    )
    assert result.exit_code == 0 and not result.timed_out
    assert b"".join(seen) == b"first\nsecond\n" == result.stdout


def test_another_client_reattaches_by_run_id(
    arker_client: Arker, arker_server: ArkerServer, vm_id: str
) -> None:
    run_id = arker_client.vm(vm_id).start("sleep 1; echo done", session_id="job").run_id
    with Arker(
        arker_server.api_key,
        base_url=arker_server.base_url,
        control_url=arker_server.control_url,
    ) as other:
        again = other.runs.attach(vm_id, run_id)
        assert again.wait().stdout == b"done\n"
        assert run_id in [run.run_id for run in other.runs.list(vm_id)]


def test_cancel_ends_the_run_and_wait_says_so(arker_client: Arker, vm_id: str) -> None:
    handle = arker_client.runs.start(vm_id, "echo started; sleep 600", session_id="sleeper")
    for chunk in handle.stream():
        if b"started" in chunk.data:
            break
    assert handle.cancel() is True
    with pytest.raises(RunCancelledError) as info:
        handle.wait()
    assert info.value.run_id == handle.run_id and info.value.stdout == b"started\n"
    assert arker_client.runs.get(vm_id, handle.run_id).state == "cancelled"


def test_sessions_keep_their_directory_and_environment(arker_client: Arker, vm_id: str) -> None:
    tab = arker_client.sessions.create(vm_id, cwd="/tmp", env={"STAGE": "e2e"})
    r = arker_client.runs.create(vm_id, 'echo "$PWD $STAGE"', session_id=tab.session_id)
    assert r.stdout == b"/tmp e2e\n"
    assert tab.session_id in [s.session_id for s in arker_client.sessions.list(vm_id)]
    assert arker_client.sessions.get(vm_id, tab.session_id).cwd == "/tmp"
    assert arker_client.sessions.delete(vm_id, tab.session_id) is True


@pytest.mark.parametrize("fault", CUT_FAULTS)
def test_a_start_whose_answer_is_cut_makes_one_run(
    arker_server: ArkerServer, arker_client: Arker, vm_id: str, fault: str
) -> None:
    plan = FaultPlan(rate=0.0, applies=lambda method, path: method == "POST")
    with (
        FaultProxy(arker_server.base_url, plan) as proxy,
        Arker(
            arker_server.api_key,
            base_url=proxy.url,
            control_url=proxy.url,
            max_retries=2,
            sleep=lambda s: None,
        ) as client,
    ):
        plan.force(fault)
        handle = client.runs.start(vm_id, f"echo {fault}", session_id=fault)
        assert handle.wait().stdout == f"{fault}\n".encode()
    assert plan.injected[fault] == 1
    runs = [r for r in arker_client.runs.list(vm_id) if r.session_id == fault]
    assert [r.run_id for r in runs] == [handle.run_id]
