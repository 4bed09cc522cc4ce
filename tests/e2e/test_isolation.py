"""Through the SDK and a real `arker serve`: VMs are isolated from the host and each other.

Every test here is an escape attempt or an isolation check made the way a user's code
would make it: a command inside a VM, or a sync call.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from arker import Arker, ArkerError, NotFoundError, VmBusyError

pytestmark = pytest.mark.e2e


@pytest.fixture()
def vm(arker_client: Arker) -> Iterator[str]:
    made = arker_client.vms.fork("arkuntu")
    yield made.vm_id
    with contextlib.suppress(NotFoundError):
        arker_client.vms.delete(made.vm_id)


def sh(client: Arker, vm_id: str, command: str, **kwargs: Any) -> str:
    result = client.runs.create(vm_id, command, **kwargs)
    return result.stdout_text


def test_host_files_are_invisible(arker_client: Arker, arker_server: Any, vm: str) -> None:
    marker = f"arker-host-secret-{secrets.token_hex(6)}"
    host_files = [Path("/root") / marker, Path("/tmp") / marker]
    for f in host_files:
        f.write_text("host secret\n")
    try:
        for f in host_files:
            out = arker_client.runs.create(vm, f"cat {f}; ls -d {f.parent}/{marker}*")
            assert out.exit_code != 0
            assert "host secret" not in out.stdout_text
        data_dir = str(arker_server.data_dir)
        listing = arker_client.runs.create(vm, f"ls {data_dir} /work 2>&1; echo done")
        assert "api_key" not in listing.stdout_text and "No such file" in listing.stdout_text
        found = sh(arker_client, vm, f"find / -xdev -name '{marker}*' 2>/dev/null | head")
        assert found == ""
    finally:
        for f in host_files:
            f.unlink()


def test_host_processes_are_invisible(arker_client: Arker, vm: str) -> None:
    cmdlines = sh(arker_client, vm, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
    assert "arker serve" not in cmdlines and "pytest" not in cmdlines
    pids = sh(arker_client, vm, "ls -d /proc/[0-9]* | wc -l")
    assert int(pids) < 10  # bwrap's init, the shell and its pipeline
    assert sh(arker_client, vm, "hostname") == "vm\n"


def test_another_vms_files_are_invisible(arker_client: Arker, vm: str) -> None:
    other = arker_client.vms.fork("arkuntu").vm_id
    try:
        secret = f"other-vm-{secrets.token_hex(6)}"
        arker_client.sync.write(other, f"/home/user/{secret}", b"theirs")
        found = sh(arker_client, vm, f"find / -xdev -name '{secret}' 2>/dev/null")
        assert found == ""
        with pytest.raises(NotFoundError):
            arker_client.sync.read(vm, f"/home/user/{secret}")
    finally:
        arker_client.vms.delete(other)


def test_fork_isolation_both_ways_and_after_delete(arker_client: Arker) -> None:
    parent = arker_client.vms.fork("arkuntu").vm_id
    arker_client.sync.write(parent, "/home/user/shared.txt", b"before")
    sh(arker_client, parent, "mkdir -p /home/user/d && echo old > /home/user/d/f")
    child = arker_client.vms.fork(parent).vm_id
    try:
        arker_client.sync.write(parent, "/home/user/shared.txt", b"parent-after")
        sh(arker_client, parent, "rm -r /home/user/d && echo p > /home/user/only-parent")
        arker_client.sync.write(child, "/home/user/only-child", b"c")
        sh(arker_client, child, "echo new > /home/user/d/f")

        assert arker_client.sync.read(child, "/home/user/shared.txt") == b"before"
        assert sh(arker_client, child, "cat /home/user/d/f") == "new\n"
        assert sh(arker_client, child, "ls /home/user/only-parent 2>&1; true").count("No such")
        assert sh(arker_client, parent, "ls /home/user/d 2>&1; true").count("No such")
        with pytest.raises(NotFoundError):
            arker_client.sync.read(parent, "/home/user/only-child")

        arker_client.vms.delete(parent)
        assert arker_client.sync.read(child, "/home/user/shared.txt") == b"before"
        grandchild = arker_client.vms.fork(child).vm_id
        assert sh(arker_client, grandchild, "cat /home/user/d/f /home/user/only-child") == "new\nc"
        arker_client.vms.delete(grandchild)
    finally:
        arker_client.vms.delete(child)


def test_setuid_binary_made_in_a_vm_is_harmless(
    arker_client: Arker, arker_server: Any, vm: str
) -> None:
    name = f"suid-{secrets.token_hex(4)}"
    made = arker_client.runs.create(
        vm, f"cp /bin/sh /home/user/{name} && chmod 4755 /home/user/{name} && ls -l /home/user"
    )
    assert made.exit_code == 0, made.stderr_text
    # Inside, it does not make anyone root (the VM's mounts are nosuid).
    assert sh(arker_client, vm, f"/home/user/{name} -p -c 'id -u'") == "1000\n"
    # On the host, the file belongs to the unprivileged sandbox uid, never to root.
    # Through the server's root: a btrfs volume is mounted in its mount namespace only.
    data_dir = Path(f"/proc/{arker_server.pid}/root{Path(arker_server.data_dir).resolve()}")
    hits = [p for p in data_dir.rglob(name) if p.is_file() and not p.is_symlink()]
    assert hits, "the VM's file should exist in its layer on the host"
    for p in hits:
        st = p.stat()
        assert st.st_uid != 0
        # As another unprivileged host user, running it never yields root.
        if st.st_mode & 0o4000:
            out = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(p),
                 "-p", "-c", "id -u"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert out.stdout.strip() != "0"


def test_fork_bomb_and_memory_hog_are_contained(arker_client: Arker, vm: str) -> None:
    bomb = arker_client.runs.create(vm, ":(){ :|:& };:", timeout=5)
    assert bomb.exit_code != 0 or bomb.timed_out
    hog = arker_client.runs.create(
        vm, "python3 -c 'b = bytearray(3 << 30); print(len(b))'", timeout=60
    )
    assert hog.exit_code != 0 and hog.stdout_text == ""
    # The VM, another VM and the server are all still fine.
    assert sh(arker_client, vm, "echo alive") == "alive\n"
    other = arker_client.vms.fork("arkuntu").vm_id
    assert sh(arker_client, other, "echo fine") == "fine\n"
    arker_client.vms.delete(other)


def _sandbox_sleepers(tag: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if tag in line]


def test_timeout_kills_background_processes(arker_client: Arker, vm: str) -> None:
    tag = f"{secrets.randbelow(10**6) + 10**6}"
    result = arker_client.runs.create(
        vm,
        f"echo started; sleep {tag} & setsid sleep {tag} & nohup sleep {tag} & sleep {tag}",
        timeout=2,
    )
    assert result.timed_out and result.exit_code == 124
    assert result.stdout_text == "started\n"
    assert _sandbox_sleepers(f"sleep {tag}") == []


def test_sessions_concurrency(arker_client: Arker, vm: str) -> None:
    outcomes: dict[str, Any] = {}

    def run(key: str, session: str) -> None:
        command = f"touch /home/user/started-{key}; sleep 2; echo done"
        try:
            outcomes[key] = arker_client.runs.create(vm, command, session_id=session)
        except ArkerError as exc:
            outcomes[key] = exc

    threads = [
        threading.Thread(target=run, args=("a", "a")),
        threading.Thread(target=run, args=("b", "b")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes["a"].stdout == b"done\n" and outcomes["b"].stdout == b"done\n"

    first = threading.Thread(target=run, args=("first", "same"))
    first.start()
    for _ in range(200):  # wait until the first command is surely running
        try:
            arker_client.sync.read(vm, "/home/user/started-first")
            break
        except NotFoundError:
            threading.Event().wait(0.02)
    with pytest.raises(VmBusyError) as busy:
        arker_client.runs.create(vm, "true", session_id="same")
    first.join()
    assert busy.value.status == 409
    assert outcomes["first"].stdout == b"done\n"


def test_no_network_flag_cuts_the_network(tmp_path: Path) -> None:
    from arker.testing import start_server

    server = start_server(tmp_path / "data", extra_args=("--no-network",))
    try:
        client = Arker(server.api_key, base_url=server.base_url, control_url=server.control_url)
        vm_id = client.vms.fork("arkuntu").vm_id
        out = client.runs.create(vm_id, "cat /proc/net/dev | tail -n +3 | cut -d: -f1")
        assert out.stdout_text.split() == ["lo"]
        client.close()
    finally:
        server.stop()
    assert os.path.isdir(tmp_path / "data")
