"""Interactive terminals against a real `arker serve`: the ``…/pty`` WebSocket.

A small synchronous WebSocket client (the `websockets` package) types into the shell
and reads the screen, as a person (or the published client's `connect_pty`) would.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from arker.testing import ArkerServer
from tests.kit.server import Api

websockets = pytest.importorskip("websockets")
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from websockets.sync.client import ClientConnection  # noqa: E402
from websockets.sync.client import connect as _connect  # noqa: E402

pytestmark = pytest.mark.e2e

_WAIT_S = 30.0


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


def new_session(api: Api, vm: str, **body: Any) -> str:
    r = api.post(f"/api/v1/vms/{vm}/sessions", json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["session_id"])


def mint(api: Api, vm: str, session: str) -> str:
    r = api.post(f"/api/v1/vms/{vm}/sessions/{session}/pty-ticket", json={})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"ticket", "expires_in"} and body["expires_in"] > 0
    return str(body["ticket"])


def pty_url(server: ArkerServer, vm: str, session: str, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    base = server.base_url.replace("http://", "ws://", 1)
    return f"{base}/api/v1/vms/{vm}/sessions/{session}/pty?{query}"


def connect(url: str, **kwargs: Any) -> ClientConnection:
    """A connection the caller closes (or leaves to the garbage collector)."""
    ws: ClientConnection = _connect(url, **kwargs).__enter__()
    return ws


class Screen:
    """What the terminal printed, read until a pattern shows up."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen = bytearray()

    def type(self, keys: bytes | str) -> None:
        self.ws.send(keys.encode() if isinstance(keys, str) else keys)

    def control(self, **message: Any) -> None:
        self.ws.send(json.dumps(message))

    def expect(self, pattern: bytes, within: float = _WAIT_S) -> re.Match[bytes]:
        """Wait for ``pattern`` in the output after the last match; return the match."""
        deadline = time.monotonic() + within
        while True:
            found = re.search(pattern, self.seen)
            if found is not None:
                del self.seen[: found.end()]
                return found
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {bytes(self.seen)[-2000:]!r}"
            try:
                frame = self.ws.recv(timeout=left)
            except TimeoutError:
                continue
            assert isinstance(frame, bytes), f"the server sent a text frame: {frame!r}"
            self.seen += frame

    def closed(self, within: float = _WAIT_S) -> ConnectionClosed:
        """Read to the end; the close the server sent."""
        deadline = time.monotonic() + within
        while True:
            try:
                frame = self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            except ConnectionClosed as exc:
                return exc
            except TimeoutError:
                pytest.fail("the server did not close the terminal")
            if isinstance(frame, bytes):
                self.seen += frame


def open_screen(server: ArkerServer, api: Api, vm: str, session: str, **params: Any) -> Screen:
    ws = connect(pty_url(server, vm, session, ticket=mint(api, vm, session), **params))
    return Screen(ws)


def refusal(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as info, _connect(url, **kwargs):
        pass
    response = info.value.response
    return response.status_code, json.loads(bytes(response.body or b"{}"))


def test_a_command_typed_in_the_terminal_runs_in_the_sessions_cwd_and_environment(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    session = new_session(api, vm, cwd="/tmp", env={"GREETING": "bonjour"})
    screen = open_screen(arker_server, api, vm, session)
    with screen.ws:
        screen.type("echo said-$GREETING-in-$(pwd)\n")
        screen.expect(rb"said-bonjour-in-/tmp")
        screen.type("test -t 0 && test -t 1 && echo both-are-terminals\n")
        screen.expect(rb"[\r\n]both-are-terminals")


def test_the_window_size_is_the_one_asked_for_then_follows_a_resize(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    session = new_session(api, vm)
    screen = open_screen(arker_server, api, vm, session, cols=123, rows=45)
    with screen.ws:
        screen.type("stty size\n")
        screen.expect(rb"[\r\n]45 123\r?\n")
        screen.control(type="resize", cols=77, rows=19)
        screen.type("stty size\n")
        screen.expect(rb"[\r\n]19 77\r?\n")


def test_ctrl_c_interrupts_the_foreground_command(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    session = new_session(api, vm)
    screen = open_screen(arker_server, api, vm, session)
    with screen.ws:
        screen.type("sleep 100; echo sleep-ended-$?\n")
        time.sleep(0.5)  # let the shell start sleep (an early ^C only cancels the line)
        screen.type(b"\x03")
        screen.type("echo shell-still-here\n")
        screen.expect(rb"[\r\n]shell-still-here", within=20)
        assert b"sleep-ended-0" not in screen.seen


def test_the_python_repl_evaluates_an_expression(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    session = new_session(api, vm)
    screen = open_screen(arker_server, api, vm, session)
    with screen.ws:
        screen.type("python3 -q\n")
        screen.expect(rb">>> ")
        screen.type("6*7\n")
        screen.expect(rb"[\r\n]42\r?\n>>> ")
        screen.type("exit()\n")


def test_vi_takes_the_screen_and_gives_it_back(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    session = new_session(api, vm, env={"TERM": "xterm"})
    screen = open_screen(arker_server, api, vm, session)
    with screen.ws:
        screen.type("vi /tmp/note.txt\n")
        screen.expect(rb"\x1b\[\?1049h")  # the alternate screen: vi is drawing
        screen.type(b"ihello from vi\x1b:wq\r")
        screen.expect(rb"\x1b\[\?1049l")
        screen.type("cat /tmp/note.txt\n")
        screen.expect(rb"[\r\n]hello from vi")


def test_exiting_the_shell_closes_the_socket_normally(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    session = new_session(api, vm)
    screen = open_screen(arker_server, api, vm, session)
    screen.type("exit\n")
    closed = screen.closed()
    assert closed.rcvd is not None and closed.rcvd.code == 1000


def _host_processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def _gone(marker: str, within: float = _WAIT_S) -> bool:
    deadline = time.monotonic() + within
    while _host_processes_with(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_closing_the_socket_ends_every_process_of_the_terminal(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    session = new_session(api, vm)
    seconds = str(100_000 + secrets.randbelow(800_000))
    screen = open_screen(arker_server, api, vm, session)
    screen.type(f"nohup sleep {seconds} >/dev/null 2>&1 & sleep {seconds}.5\n")
    deadline = time.monotonic() + _WAIT_S
    while len(_host_processes_with(f"sleep\0{seconds}")) < 2:
        assert time.monotonic() < deadline, "the sleeps never started"
        time.sleep(0.1)
    screen.ws.close()
    assert _gone(f"sleep\0{seconds}"), "a process of the closed terminal is still running"


def test_a_kill_control_ends_the_shell(arker_server: ArkerServer, api: Api, vm: str) -> None:
    session = new_session(api, vm)
    seconds = str(100_000 + secrets.randbelow(800_000))
    screen = open_screen(arker_server, api, vm, session)
    screen.type(f"sleep {seconds}\n")
    deadline = time.monotonic() + _WAIT_S
    while not _host_processes_with(f"sleep\0{seconds}"):
        assert time.monotonic() < deadline, "sleep never started"
        time.sleep(0.1)
    screen.control(type="kill")
    closed = screen.closed()
    assert closed.rcvd is not None and closed.rcvd.code == 1000
    assert _gone(f"sleep\0{seconds}")


def test_a_malformed_control_frame_closes_the_terminal_saying_why(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    session = new_session(api, vm)
    screen = open_screen(arker_server, api, vm, session)
    screen.ws.send(json.dumps({"type": "resize", "cols": "wide"}))
    closed = screen.closed()
    assert closed.rcvd is not None and closed.rcvd.code == 1003
    assert "cols" in closed.rcvd.reason


def test_deleting_the_vm_ends_its_terminal(arker_server: ArkerServer, api: Api) -> None:
    vm = str(api.fork()["vm_id"])
    session = new_session(api, vm)
    screen = open_screen(arker_server, api, vm, session)
    screen.type("echo ready\n")
    screen.expect(rb"[\r\n]ready")
    r = api.delete(f"/api/v1/vms/{vm}")
    assert r.status_code == 200, r.text
    closed = screen.closed()
    assert closed.rcvd is not None and closed.rcvd.code == 1001


def test_deleting_the_session_ends_its_terminal(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    session = new_session(api, vm)
    screen = open_screen(arker_server, api, vm, session)
    screen.type("echo ready\n")
    screen.expect(rb"[\r\n]ready")
    r = api.delete(f"/api/v1/vms/{vm}/sessions/{session}")
    assert r.status_code == 200, r.text
    closed = screen.closed()
    assert closed.rcvd is not None and closed.rcvd.code == 1000


def test_the_api_key_in_the_upgrades_header_opens_a_terminal(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    session = new_session(api, vm)
    headers = {"Authorization": f"Bearer {arker_server.api_key}"}
    with connect(pty_url(arker_server, vm, session), additional_headers=headers) as ws:
        screen = Screen(ws)
        screen.type("echo by-key\n")
        screen.expect(rb"[\r\n]by-key")


def test_a_ticket_opens_one_terminal_only(arker_server: ArkerServer, api: Api, vm: str) -> None:
    session = new_session(api, vm)
    ticket = mint(api, vm, session)
    with connect(pty_url(arker_server, vm, session, ticket=ticket)):
        pass
    status, body = refusal(pty_url(arker_server, vm, session, ticket=ticket))
    assert status == 401 and body["error"]["code"] == "unauthorized"


def test_an_unknown_ticket_or_no_credential_is_refused(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    session = new_session(api, vm)
    status, body = refusal(pty_url(arker_server, vm, session, ticket=secrets.token_urlsafe(32)))
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = refusal(pty_url(arker_server, vm, session))
    assert status == 401 and body["error"]["code"] == "unauthorized"


def test_a_ticket_for_another_session_is_refused(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    mine, other = new_session(api, vm), new_session(api, vm)
    status, _ = refusal(pty_url(arker_server, vm, other, ticket=mint(api, vm, mine)))
    assert status == 401


def test_another_org_can_neither_mint_a_ticket_nor_attach(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    session = new_session(api, vm)
    stranger_key = arker_server.create_key(f"pty-{secrets.token_hex(4)}")
    stranger = Api(arker_server, stranger_key)
    try:
        r = stranger.post(f"/api/v1/vms/{vm}/sessions/{session}/pty-ticket", json={})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        # Its own VM's ticket does not open a terminal on ours either.
        own = str(stranger.fork()["vm_id"])
        own_session = new_session(stranger, own)
        theirs = mint(stranger, own, own_session)
        status, _ = refusal(pty_url(arker_server, vm, session, ticket=theirs))
        assert status == 401
        headers = {"Authorization": f"Bearer {stranger_key}"}
        status, body = refusal(pty_url(arker_server, vm, session), additional_headers=headers)
        assert status == 404 and body["error"]["code"] == "not_found"
    finally:
        stranger.close()


def test_an_unknown_session_or_bad_size_is_refused_before_any_shell_starts(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    r = api.post(f"/api/v1/vms/{vm}/sessions/no-such-session/pty-ticket", json={})
    assert r.status_code == 404
    session = new_session(api, vm)
    url = pty_url(arker_server, vm, session, ticket=mint(api, vm, session), cols="wide")
    status, body = refusal(url)
    assert status == 400 and "cols" in body["error"]["message"]


def test_terminals_per_vm_are_bounded_with_the_platforms_quota_error(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    session = new_session(api, vm)
    opened = []
    try:
        while True:
            r = api.post(f"/api/v1/vms/{vm}/sessions/{session}/pty-ticket", json={})
            if r.status_code == 429:
                break
            assert r.status_code == 200 and len(opened) < 64, r.text
            ws = connect(pty_url(arker_server, vm, session, ticket=r.json()["ticket"]))
            opened.append(ws)
        error = r.json()["error"]
        assert error["code"] == "quota_exceeded"
        assert error["details"] == {
            "limit": {"metric": "pty_sessions", "unit": "sessions"},
            "scope": {"kind": "vm", "vm_id": vm},
            "enforcement": "worker_local",
            "measurements": {"kind": "measured", "current_usage": len(opened), "cap": len(opened)},
        }
        headers = {"Authorization": f"Bearer {arker_server.api_key}"}
        status, body = refusal(pty_url(arker_server, vm, session), additional_headers=headers)
        assert status == 429 and body["error"]["code"] == "quota_exceeded"
        opened.pop().close()
        deadline = time.monotonic() + _WAIT_S
        while True:  # the slot frees once the shell is reaped
            r = api.post(f"/api/v1/vms/{vm}/sessions/{session}/pty-ticket", json={})
            if r.status_code == 200:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.1)
    finally:
        for ws in opened:
            ws.close()


def test_refused_upgrades_do_not_use_up_the_clients_connections(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    session = new_session(api, vm)
    for _ in range(80):  # more than a client's connection cap (front.py)
        status, _ = refusal(pty_url(arker_server, vm, session, ticket="not-a-ticket"))
        assert status == 401
    assert api.get("/api/v1/health").status_code == 200


def test_a_terminal_idle_past_its_cancel_ttl_is_closed(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    session = new_session(api, vm)
    screen = open_screen(arker_server, api, vm, session, cancel_ttl_secs=1)
    closed = screen.closed()
    assert closed.rcvd is not None and closed.rcvd.code == 1000
    assert "idle" in closed.rcvd.reason


def test_a_vm_with_an_open_terminal_forks_and_the_terminal_goes_on(
    arker_server: ArkerServer, api: Api, vm: str
) -> None:
    session = new_session(api, vm)
    screen = open_screen(arker_server, api, vm, session)
    with screen.ws:
        # The marker is computed, so the terminal's echo of the typed line (which may
        # still be arriving, after an earlier prompt) cannot match it.
        screen.type("echo kept > /tmp/from-terminal; echo written-$((40+2))\n")
        screen.expect(rb"written-42")
        child = api.fork(vm)["vm_id"]
        try:
            assert api.run(child, "cat /tmp/from-terminal")["stdout"].strip() == "kept"
        finally:
            api.delete(f"/api/v1/vms/{child}")
        screen.type("echo still-here\n")
        screen.expect(rb"[\r\n]still-here")


def test_a_command_with_a_nul_byte_is_refused(arker_server: ArkerServer, api: Api, vm: str) -> None:
    session = new_session(api, vm)
    url = pty_url(arker_server, vm, session, ticket=mint(api, vm, session), command="bash%00x")
    status, body = refusal(url)
    assert status == 400 and body["error"]["code"] == "bad_request"
