"""A VM cannot forge its manifest: the server walks the VM's tree from the host.

The attack: the VM's code puts a fake ``python3`` first on the ``PATH`` of the session
the old in-VM manifest helper ran in, printing entries that climb out of the tree,
name ``/etc/shadow`` or carry a setuid mode. None of it may reach the manifest.
"""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from tests.kit.server import Api

pytestmark = pytest.mark.usefixtures("no_unhandled_errors")

_FORGED = {
    "entries": [
        ["/home/user/proj/../../../../tmp/evil", 5, 0o4755, "0" * 64],
        ["/etc/shadow", 5, 0o644, "0" * 64],
        ["/home/user/proj/a.txt", 999, 0o6777, "f" * 64],
    ],
    "truncated": False,
}


def _plant_fake_helpers(api: Api, vm: str) -> None:
    fake = f"#!/bin/sh\necho '{json.dumps(_FORGED)}'\n".encode()
    api.run(
        vm,
        f"mkdir -p /home/user/.evil && echo {base64.b64encode(fake).decode()}"
        " | base64 -d > /home/user/.evil/python3 && chmod 755 /home/user/.evil/python3",
    )
    # Every session the server might use for its own work: the PATH sticks to it.
    for session in ("__arker_sync", "0", "default"):
        api.run(vm, "export PATH=/home/user/.evil:$PATH", session_id=session)


def test_a_vm_cannot_forge_manifest_entries(api: Api, vm: str) -> None:
    api.run(vm, "mkdir -p /home/user/proj && printf abc > /home/user/proj/a.txt")
    api.run(vm, "ln -s /etc/shadow /home/user/proj/shadow; chmod 4755 /home/user/proj/a.txt")
    _plant_fake_helpers(api, vm)
    r = api.sync(vm, {"op": "manifest", "path": "/home/user/proj"})
    assert r.status_code == 200, r.text
    assert r.json()["entries"] == [
        {
            "path": "/home/user/proj/a.txt",
            "size": 3,
            "mode": 0o755,
            "sha256": hashlib.sha256(b"abc").hexdigest(),
        }
    ]
    assert r.json()["truncated"] is False


def test_a_vm_cannot_forge_what_delete_reports(api: Api, vm: str) -> None:
    _plant_fake_helpers(api, vm)
    api.run(vm, "touch /home/user/real")
    r = api.sync(vm, {"op": "delete", "paths": ["/home/user/real", "/home/user/absent"]})
    assert r.status_code == 200, r.text
    assert r.json()["deleted"] == ["/home/user/real"]
    assert api.run(vm, "test -e /home/user/real; echo $?")["stdout"] == "1\n"
