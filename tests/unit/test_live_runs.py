"""Live runs on the wire: ``runs.start`` (202 and 200, one key for every retry),
``runs.create`` with and without callbacks, ``get``, ``list``, ``cancel``, and what
``RunHandle.wait`` makes of each way a run ends."""

from __future__ import annotations

import json
import pickle
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from arker import (
    BadRequestError,
    OutcomeUnknownError,
    ResponseValidationError,
    RunCancelledError,
    RunError,
    RunFailedError,
    RunHandle,
    RunResult,
    RunStatus,
    VmBusyError,
)
from tests.unit.live_fakes import RUN, VM, FakeRun, b64, runs_url

BACKGROUND = {"run_id": RUN, "session_id": "default", "state": "running"}


def _body(call) -> dict:
    return json.loads(call.request.body)


# -- start -------------------------------------------------------------------------------


def test_start_posts_to_runs_with_time_to_background_zero_and_returns_a_handle(
    client, rsps
) -> None:
    rsps.post(runs_url(client), status=202, json=BACKGROUND)
    handle = client.runs.start(VM, "npm run dev")
    assert isinstance(handle, RunHandle)
    assert (handle.run_id, handle.vm_id, handle.session_id) == (RUN, VM, "default")
    (call,) = rsps.calls
    assert call.request.method == "POST"
    assert _body(call) == {"command": "npm run dev", "time_to_background": 0}
    assert call.request.headers["Idempotency-Key"]
    assert call.request.headers["Content-Type"] == "application/json"


def test_start_sends_session_and_timeout(client, rsps) -> None:
    rsps.post(runs_url(client), status=202, json={"run_id": RUN, "state": "running"})
    handle = client.runs.start(VM, "make", session_id="build", timeout=60)
    assert _body(rsps.calls[0]) == {
        "command": "make",
        "session_id": "build",
        "timeout": 60,
        "time_to_background": 0,
    }
    assert handle.session_id == "build"  # the server did not say: the name given


def test_start_takes_a_200_completed_answer_as_a_started_run(client, rsps) -> None:
    completed = {
        "run_id": RUN,
        "session_id": "s",
        "state": "completed",
        "stdout": "hi\n",
        "stdout_encoding": "utf-8",
        "stderr": "",
        "stderr_encoding": "utf-8",
        "exit_code": 0,
    }
    rsps.post(runs_url(client), status=200, json=completed)
    handle = client.runs.start(VM, "echo hi")
    assert (handle.run_id, handle.session_id) == (RUN, "s")


def test_start_without_a_run_id_is_a_validation_error(client, rsps) -> None:
    rsps.post(runs_url(client), status=202, json={"state": "running"})
    with pytest.raises(ResponseValidationError):
        client.runs.start(VM, "true")


def test_start_retries_a_lost_answer_with_the_same_key(client, rsps) -> None:
    rsps.post(runs_url(client), body=requests.ConnectionError("Connection reset by peer"))
    rsps.post(runs_url(client), body=requests.ReadTimeout("read timed out"))
    rsps.post(runs_url(client), status=202, json=BACKGROUND)
    handle = client.runs.start(VM, "sleep 100")
    assert handle.run_id == RUN
    keys = [c.request.headers["Idempotency-Key"] for c in rsps.calls]
    assert len(keys) == 3 and len(set(keys)) == 1
    assert len({c.request.body for c in rsps.calls}) == 1


def test_two_starts_mint_two_keys(client, rsps) -> None:
    rsps.post(runs_url(client), status=202, json=BACKGROUND)
    client.runs.start(VM, "a")
    client.runs.start(VM, "a")
    keys = {c.request.headers["Idempotency-Key"] for c in rsps.calls}
    assert len(keys) == 2


def test_start_lost_on_every_attempt_is_outcome_unknown_with_the_key(make_client, rsps) -> None:
    client = make_client(max_retries=2)
    rsps.post(runs_url(client), body=requests.ReadTimeout("read timed out"))
    with pytest.raises(OutcomeUnknownError) as info:
        client.runs.start(VM, "deploy", idempotency_key="start-key")
    assert info.value.idempotency_key == "start-key"
    assert {c.request.headers["Idempotency-Key"] for c in rsps.calls} == {"start-key"}


def test_start_in_a_busy_session_is_vm_busy(client, rsps) -> None:
    rsps.post(
        runs_url(client),
        status=409,
        json={"ok": False, "error": {"code": "vm_busy", "message": "session busy"}},
    )
    with pytest.raises(VmBusyError):
        client.runs.start(VM, "true", session_id="s")


@pytest.mark.parametrize("timeout", [0, -1, True])
def test_start_refuses_a_bad_timeout_before_sending(client, rsps, timeout) -> None:
    with pytest.raises(BadRequestError) as info:
        client.runs.start(VM, "true", timeout=timeout)
    assert info.value.status == 0 and not rsps.calls


def test_vm_start_is_runs_start(client, rsps) -> None:
    rsps.post(runs_url(client), status=202, json=BACKGROUND)
    handle = client.vm(VM).start("python -m http.server", session_id="web")
    assert handle.run_id == RUN
    assert _body(rsps.calls[0])["session_id"] == "web"


# -- create ------------------------------------------------------------------------------


def test_create_without_callbacks_sends_exactly_the_010_request(client, rsps) -> None:
    run_url = f"{client.base_url}/api/v1/vms/{VM}/run"
    rsps.post(run_url, json={"ok": True, "stdout": "hi\n", "stderr": "", "exit_code": 0})
    client.runs.create(VM, "echo hi")
    client.runs.create(VM, "echo hi", session_id="s", timeout=5)
    first, second = rsps.calls
    assert first.request.url == run_url and first.request.method == "POST"
    assert first.request.body == b'{"command":"echo hi","session_id":0}'
    assert second.request.body == b'{"command":"echo hi","session_id":"s","timeout":5}'


def test_create_with_callbacks_starts_a_run_and_hands_over_bytes_as_they_arrive(
    client, rsps
) -> None:
    run = FakeRun(
        [("stdout", b"step 1\n"), ("stderr", b"warn\n"), ("stdout", b"\xffstep 2\n")],
        exit_code=3,
    )
    rsps.post(runs_url(client), status=202, json=BACKGROUND)
    run.serve(rsps, client)
    out: list[bytes] = []
    err: list[bytes] = []
    result = client.runs.create(VM, "make", on_stdout=out.append, on_stderr=err.append)
    assert out == [b"step 1\n", b"\xffstep 2\n"] and err == [b"warn\n"]
    assert isinstance(result, RunResult)
    assert (result.stdout, result.stderr, result.exit_code) == (
        b"step 1\n\xffstep 2\n",
        b"warn\n",
        3,
    )
    assert result.session_id == "default" and result.duration_ms == 2000.0
    start = rsps.calls[0]
    assert start.request.url == runs_url(client)
    assert _body(start) == {"command": "make", "time_to_background": 0}
    assert not any(c.request.url.endswith("/run") for c in rsps.calls)


def test_create_with_one_callback_still_follows(client, rsps) -> None:
    run = FakeRun([("stdout", b"a"), ("stderr", b"b")])
    rsps.post(runs_url(client), status=202, json=BACKGROUND)
    run.serve(rsps, client)
    seen: list[bytes] = []
    result = client.runs.create(VM, "x", session_id="s1", on_stderr=seen.append)
    assert seen == [b"b"] and result.stdout == b"a"
    assert _body(rsps.calls[0])["session_id"] == "s1"


def test_create_cancels_the_run_when_a_callback_raises(client, rsps) -> None:
    run = FakeRun([("stdout", b"a"), ("stdout", b"b")])
    rsps.post(runs_url(client), status=202, json=BACKGROUND)
    run.serve(rsps, client)
    rsps.delete(runs_url(client, f"/{RUN}"), json={"cancelled": True})

    def boom(data: bytes) -> None:
        raise KeyError("stop")

    with pytest.raises(KeyError):
        client.runs.create(VM, "x", on_stdout=boom)
    assert rsps.calls[-1].request.method == "DELETE"


# -- wait: how a run ends -----------------------------------------------------------------


def test_wait_returns_the_result_of_a_completed_run(client, rsps) -> None:
    FakeRun([("stdout", b"ok\n")], exit_code=1).serve(rsps, client)
    result = client.runs.attach(VM, RUN).wait()
    assert (result.stdout, result.exit_code, result.ok) == (b"ok\n", 1, False)


def test_wait_on_a_failed_run_raises_run_failed_with_the_reason(client, rsps) -> None:
    run = FakeRun([("stdout", b"partial")], final_state="failed", exit_code=None)
    run.fail_reason = "server restarted"
    run.serve(rsps, client)
    with pytest.raises(RunFailedError) as info:
        client.runs.attach(VM, RUN).wait()
    err = info.value
    assert isinstance(err, RunError)
    assert (err.code, err.run_id, err.state) == ("run_failed", RUN, "failed")
    assert err.fail_reason == "server restarted" and "server restarted" in err.message
    assert err.stdout == b"partial"


def test_wait_on_a_cancelled_run_raises_run_cancelled(client, rsps) -> None:
    FakeRun([("stdout", b"x")], final_state="cancelled", exit_code=None).serve(rsps, client)
    with pytest.raises(RunCancelledError) as info:
        client.runs.attach(VM, RUN).wait()
    assert info.value.code == "run_cancelled" and info.value.stdout == b"x"


def test_a_run_killed_at_its_timeout_is_a_result_with_exit_124(client, rsps) -> None:
    url = runs_url(client, f"/{RUN}")
    done = {
        "run_id": RUN,
        "state": "completed",
        "exit_code": None,
        "stdout": {"offset": 0, "data": "", "next_offset": 0},
        "stderr": {"offset": 0, "data": "", "next_offset": 0},
        "done": True,
    }
    rsps.get(f"{url}/output", json=done)
    rsps.get(url, json={"run_id": RUN, "state": "failed", "timed_out": True})
    result = client.runs.attach(VM, RUN).wait()
    assert (result.exit_code, result.timed_out) == (124, True)


def test_wait_with_a_timeout_that_passed_raises_timeout_error(client, rsps) -> None:
    with pytest.raises(TimeoutError):
        client.runs.attach(VM, RUN).wait(timeout=0)


def test_run_errors_survive_pickling(client) -> None:
    err = RunFailedError("run r ended failed", run_id="r", state="failed", fail_reason="oom")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is RunFailedError
    assert (again.run_id, again.state, again.fail_reason, again.code) == (
        "r",
        "failed",
        "oom",
        "run_failed",
    )


# -- get, cancel, list --------------------------------------------------------------------


def test_get_decodes_the_run_and_its_output(client, rsps) -> None:
    rsps.get(
        runs_url(client, f"/{RUN}"),
        json={
            "run_id": RUN,
            "session_id": "s",
            "command": "head -c 2 /dev/urandom",
            "state": "running",
            "started_at": "2026-01-01T00:00:00",
            "exit_code": None,
            "stdout": b64(b"\x00\xff"),
            "stdout_encoding": "base64",
            "stderr": "é",
            "stderr_encoding": "utf-8",
            "some_future_field": 1,
        },
    )
    status = client.runs.get(VM, RUN)
    assert isinstance(status, RunStatus)
    assert (status.run_id, status.vm_id, status.state, status.done) == (RUN, VM, "running", False)
    assert (status.stdout, status.stderr) == (b"\x00\xff", "é".encode())
    assert status.started_at is not None and status.started_at.tzinfo is not None
    assert client.runs.attach(VM, RUN).status() == status


def test_cancel_deletes_the_run(client, rsps) -> None:
    rsps.delete(runs_url(client, f"/{RUN}"), json={"cancelled": True})
    rsps.delete(runs_url(client, f"/{RUN}"), json={"cancelled": False})
    assert client.runs.cancel(VM, RUN) is True
    assert client.runs.attach(VM, RUN).cancel() is False
    assert [c.request.method for c in rsps.calls] == ["DELETE", "DELETE"]


def test_ids_are_percent_encoded_in_paths(client, rsps) -> None:
    rsps.delete(re.compile(r".*"), json={"cancelled": True})
    client.runs.cancel(VM, "a/b?c")
    assert rsps.calls[0].request.url.endswith("/runs/a%2Fb%3Fc")


def test_list_iterates_every_cursor_page(client, rsps) -> None:
    def summary(n: int) -> dict:
        return {"run_id": f"r{n}", "state": "completed", "exit_code": 0, "started_at": None}

    url = runs_url(client)
    rsps.get(url, json={"runs": [summary(1), summary(2)], "next_cursor": "c2"})
    rsps.get(url, json={"runs": [summary(3)], "next_cursor": None})
    runs = client.runs.list(VM, state="completed", page_size=2)
    assert len(rsps.calls) == 0  # nothing fetched before iterating
    assert [r.run_id for r in runs] == ["r1", "r2", "r3"]
    queries = [parse_qs(urlsplit(c.request.url).query) for c in rsps.calls]
    assert queries == [
        {"limit": ["2"], "state": ["completed"]},
        {"cursor": ["c2"], "limit": ["2"], "state": ["completed"]},
    ]


def test_list_refuses_an_unknown_state_before_sending(client, rsps) -> None:
    with pytest.raises(BadRequestError):
        client.runs.list(VM, state="finished")
    assert not rsps.calls


def test_create_does_not_cancel_a_run_that_failed_by_itself(client, rsps) -> None:
    run = FakeRun([("stderr", b"boom")], final_state="failed", exit_code=None)
    rsps.post(runs_url(client), status=202, json=BACKGROUND)
    run.serve(rsps, client)
    with pytest.raises(RunFailedError):
        client.runs.create(VM, "x", on_stderr=lambda data: None)
    assert "DELETE" not in [c.request.method for c in rsps.calls]
