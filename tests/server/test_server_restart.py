"""State survives a clean stop (SIGTERM) and a crash (SIGKILL)."""

from __future__ import annotations

import base64
import signal
from typing import Any

import pytest

from arker._ids import new_ulid
from tests.kit.server import Api


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_state_survives_restart(arker_server: Any, kill: bool) -> None:
    api = Api(arker_server, arker_server.api_key)
    key_before = arker_server.api_key
    vm = api.fork(name=f"persist-{new_ulid().lower()}")["vm_id"]
    child = api.fork(vm)["vm_id"]
    api.run(vm, "echo kept > /home/user/kept.txt")
    api.run(vm, "mkdir -p /home/user/w && cd /home/user/w && export KEEP=1", session_id="s")
    # Half of a chunked upload: it must be resumable after the restart.
    data, upload_id = b"0123456789", new_ulid()
    part = {"path": "/home/user/resume.txt", "size": 10, "upload_id": upload_id}
    first = {**part, "start": 0, "end": 5, "content": base64.b64encode(data[:5]).decode()}
    assert api.write(vm, first)[0]["complete"] is False
    api.close()

    arker_server.restart(kill=kill)
    assert arker_server.api_key == key_before

    api = Api(arker_server, arker_server.api_key)
    listed = api.get("/api/v1/vms/list?limit=100").json()["items"]
    ids = [i["vm_id"] for i in listed]
    assert vm in ids and child in ids
    for vm_id in ids:
        assert api.run(vm_id, "true")["exit_code"] == 0
    assert api.run(vm, "cat /home/user/kept.txt")["stdout"] == "kept\n"
    again = api.run(vm, 'pwd; echo "$KEEP"', session_id="s")
    assert again["stdout"] == "/home/user/w\n1\n"
    second = {**part, "start": 5, "end": 10, "content": base64.b64encode(data[5:]).decode()}
    assert api.write(vm, second)[0]["complete"] is True
    assert api.run(vm, "cat /home/user/resume.txt")["stdout"] == "0123456789"
    api.close()


def test_sigterm_exits_cleanly(arker_server: Any) -> None:
    assert arker_server.stop(signal.SIGTERM) == 0
    arker_server.start()
    assert arker_server.health()["ok"] is True
