"""Following a live run's output: the ``/output`` long poll with offsets, reconnection
without a gap or a duplicate, and the polling fallback on servers without the route."""

from __future__ import annotations

import json
import socket

import pytest
import requests

from arker import APIConnectionError, NotFoundError, OutputChunk, ResponseValidationError
from tests.unit.live_fakes import RUN, VM, FakeRun, b64, runs_url

WRITES = [
    ("stdout", b"compiling a\n"),
    ("stderr", b"warning: x\n"),
    ("stdout", b"compiling b\n"),
    ("stdout", b"\xff\xfe binary\n"),
    ("stderr", b"done\n"),
]


def _joined(chunks: list[OutputChunk], stream: str) -> bytes:
    return b"".join(c.data for c in chunks if c.stream == stream)


def _expected(stream: str) -> bytes:
    return b"".join(d for s, d in WRITES if s == stream)


def test_stream_yields_every_byte_once_in_order_and_ends_with_the_run(client, rsps) -> None:
    run = FakeRun(list(WRITES))
    run.serve(rsps, client)
    chunks = list(client.runs.attach(VM, RUN).stream())
    assert _joined(chunks, "stdout") == _expected("stdout")
    assert _joined(chunks, "stderr") == _expected("stderr")
    assert all(c.data for c in chunks)
    assert run.run_requests == 0  # the extension was used, never the full run


def test_each_long_poll_resumes_at_the_offsets_already_handed_out(client, rsps) -> None:
    run = FakeRun(list(WRITES))
    run.serve(rsps, client)
    handed = {"stdout": 0, "stderr": 0}
    for chunk in client.runs.attach(VM, RUN).stream():
        query = run.output_requests[-1]
        # The request that brought this chunk asked from what was handed out before it.
        assert int(query[f"{chunk.stream}_offset"]) == handed[chunk.stream]
        handed[chunk.stream] += len(chunk.data)
    offsets = [(int(q["stdout_offset"]), int(q["stderr_offset"])) for q in run.output_requests]
    assert offsets == sorted(offsets)
    assert handed == {"stdout": len(_expected("stdout")), "stderr": len(_expected("stderr"))}
    assert all(float(q["wait"]) > 0 for q in run.output_requests)


def test_stream_reconnects_after_dropped_connections_without_gap_or_duplicate(
    client, rsps, sleeps
) -> None:
    run = FakeRun(list(WRITES), faults={2, 4, 5})
    run.serve(rsps, client)
    chunks = list(client.runs.attach(VM, RUN).stream())
    assert _joined(chunks, "stdout") == _expected("stdout")
    assert _joined(chunks, "stderr") == _expected("stderr")
    # The retry of a dropped request asks from the same offsets.
    queries = run.output_requests
    assert queries[1] == queries[2] and queries[3] == queries[4] == queries[5]
    assert len(sleeps) >= 3  # the client's backoff between attempts


def test_stream_gives_up_after_the_retries_and_a_new_stream_resumes(make_client, rsps) -> None:
    client = make_client(max_retries=1)
    run = FakeRun(list(WRITES), faults={3, 4})
    run.serve(rsps, client)
    handle = client.runs.attach(VM, RUN)
    got: list[OutputChunk] = []
    with pytest.raises(APIConnectionError):
        for chunk in handle.stream():
            got.append(chunk)
    out, err = len(_joined(got, "stdout")), len(_joined(got, "stderr"))
    got += list(handle.stream(stdout_offset=out, stderr_offset=err))
    assert _joined(got, "stdout") == _expected("stdout")
    assert _joined(got, "stderr") == _expected("stderr")


def test_large_output_arrives_in_bounded_answers(client, rsps) -> None:
    big = bytes(range(256)) * 64  # 16 KiB
    run = FakeRun([("stdout", big)], limit=4096)
    run.serve(rsps, client)
    chunks = list(client.runs.attach(VM, RUN).stream())
    assert b"".join(c.data for c in chunks) == big
    assert max(len(c.data) for c in chunks) == 4096


def test_stream_falls_back_to_polling_the_run_when_the_output_route_is_404(
    client, rsps, sleeps
) -> None:
    run = FakeRun(list(WRITES))
    run.serve(rsps, client, extension=False)
    chunks = list(client.runs.attach(VM, RUN).stream())
    assert _joined(chunks, "stdout") == _expected("stdout")
    assert _joined(chunks, "stderr") == _expected("stderr")
    output_calls = [c for c in rsps.calls if "/output" in c.request.url]
    assert len(output_calls) == 1  # asked once, then polled the run
    assert run.run_requests == len(WRITES)
    assert sleeps and set(sleeps) == {0.5}


def test_polling_fallback_reconnects_without_gap_or_duplicate(client, rsps) -> None:
    run = FakeRun(list(WRITES), faults={2, 3})
    run.serve(rsps, client, extension=False)
    chunks = list(client.runs.attach(VM, RUN).stream())
    assert _joined(chunks, "stdout") == _expected("stdout")
    assert _joined(chunks, "stderr") == _expected("stderr")


def test_a_run_that_does_not_exist_is_not_found_not_a_fallback(client, rsps) -> None:
    base = runs_url(client, f"/{RUN}")
    rsps.get(f"{base}/output", status=404, json={"ok": False, "error": {"code": "not_found"}})
    rsps.get(base, status=404, json={"ok": False, "error": {"code": "not_found"}})
    with pytest.raises(NotFoundError):
        list(client.runs.attach(VM, RUN).stream())


def test_an_answer_from_other_offsets_is_refused(client, rsps) -> None:
    answer = {
        "run_id": RUN,
        "state": "running",
        "stdout": {"offset": 5, "data": b64(b"abc"), "next_offset": 8},
        "stderr": {"offset": 0, "data": "", "next_offset": 0},
        "done": False,
    }
    rsps.get(runs_url(client, f"/{RUN}/output"), json=answer)
    with pytest.raises(ResponseValidationError, match="offset 5"):
        list(client.runs.attach(VM, RUN).stream())


def test_an_answer_whose_next_offset_miscounts_its_bytes_is_refused(client, rsps) -> None:
    answer = {
        "run_id": RUN,
        "state": "running",
        "stdout": {"offset": 0, "data": b64(b"abc"), "next_offset": 4},
        "stderr": {"offset": 0, "data": "", "next_offset": 0},
        "done": False,
    }
    rsps.get(runs_url(client, f"/{RUN}/output"), json=answer)
    with pytest.raises(ResponseValidationError, match="next_offset"):
        list(client.runs.attach(VM, RUN).stream())


def test_an_empty_answer_that_did_not_wait_is_followed_by_a_pause(client, rsps, sleeps) -> None:
    empty = {
        "run_id": RUN,
        "state": "running",
        "stdout": {"offset": 0, "data": "", "next_offset": 0},
        "stderr": {"offset": 0, "data": "", "next_offset": 0},
        "done": False,
    }
    done = {**empty, "state": "completed", "exit_code": 0, "done": True}
    url = runs_url(client, f"/{RUN}/output")
    rsps.get(url, json=empty)
    rsps.get(url, json=done)
    assert list(client.runs.attach(VM, RUN).stream()) == []
    assert sleeps == [0.2]


# -- a real socket: an answer cut mid-body ------------------------------------------------


def _answer(body: dict) -> bytes:
    data = json.dumps(body).encode()
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n"
    )
    return head + data


def test_stream_after_an_answer_cut_mid_body_has_no_gap_or_duplicate(loopback, make_client):
    first = {
        "run_id": RUN,
        "state": "running",
        "stdout": {"offset": 0, "data": b64(b"one\n"), "next_offset": 4},
        "stderr": {"offset": 0, "data": "", "next_offset": 0},
    }
    second = {
        "run_id": RUN,
        "state": "completed",
        "exit_code": 0,
        "stdout": {"offset": 4, "data": b64(b"two\n"), "next_offset": 8},
        "stderr": {"offset": 0, "data": "", "next_offset": 0},
        "done": True,
    }
    whole_second = _answer(second)
    answers = [_answer(first), whole_second[: len(whole_second) - 20], whole_second]

    def behaviour(handler) -> None:
        n = len(loopback.requests) - 1
        handler.wfile.write(answers[min(n, len(answers) - 1)])
        handler.wfile.flush()
        if n == 1:  # the cut one: close mid-body
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_WR)

    loopback.behaviour = behaviour
    client = make_client(base_url=loopback.url, control_url=loopback.url, max_retries=2)
    chunks = list(client.runs.attach(VM, RUN).stream())
    assert b"".join(c.data for c in chunks) == b"one\ntwo\n"
    paths = [path for _, path, _ in loopback.requests]
    assert "stdout_offset=4" in paths[1] and "stdout_offset=4" in paths[2]
    assert all(requests.utils.urlparse(p).path.endswith("/output") for p in paths)


def test_long_polls_ask_for_whole_seconds_of_wait_and_the_default_limit(client, rsps) -> None:
    run = FakeRun([("stdout", b"x")])
    run.serve(rsps, client)
    list(client.runs.attach(VM, RUN).stream())
    assert run.output_requests[0] == {
        "stdout_offset": "0",
        "stderr_offset": "0",
        "wait": "20",
        "limit": str(1 << 20),
    }


def test_wait_after_a_stream_asks_only_for_bytes_past_what_was_streamed(client, rsps) -> None:
    run = FakeRun(list(WRITES))
    run.serve(rsps, client)
    handle = client.runs.attach(VM, RUN)
    chunks = list(handle.stream())
    streamed = len(run.output_requests)
    result = handle.wait()
    after = run.output_requests[streamed:]
    assert after == [
        {
            "stdout_offset": str(len(_joined(chunks, "stdout"))),
            "stderr_offset": str(len(_joined(chunks, "stderr"))),
            "wait": "20",
            "limit": str(1 << 20),
        }
    ]
    assert result.stdout == _expected("stdout")
