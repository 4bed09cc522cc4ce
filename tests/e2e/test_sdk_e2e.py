"""The SDK against a real `arker serve` on loopback: every public method, end to end."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from arker import (
    ARKUNTU_ID,
    Arker,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    UnsupportedError,
    VmBusyError,
)
from arker._ids import new_ulid

pytestmark = pytest.mark.e2e


def test_list_fork_run_delete(arker_client: Arker) -> None:
    tag = f"sdk-{new_ulid().lower()}"
    vm = arker_client.vm("arkuntu").fork(name=f"{tag}-a")
    assert vm.id != ARKUNTU_ID
    by_name = arker_client.vms.fork(f"{tag}-a", name=f"{tag}-b")
    assert by_name.vm_id and by_name.name == f"{tag}-b"

    page = arker_client.list(q=tag, sort="created_at", limit=1)
    assert page.total == 2 and len(page.items) == 1 and page.items[0].vm_id == vm.id
    assert {s.vm_id for s in arker_client.vms.list_all(q=tag)} == {vm.id, by_name.vm_id}

    result = vm.run("python3 -c 'print(2+2)'; echo e >&2; exit 3")
    assert (result.stdout, result.stderr, result.exit_code) == (b"4\n", b"e\n", 3)
    vm.run("cd /tmp && export X=1", session_id="s")
    again = vm.run('pwd; echo "$X"', session_id="s")
    assert again.stdout == b"/tmp\n1\n" and again.cwd == "/tmp"
    slow = vm.run("sleep 30", timeout=1)
    assert slow.timed_out and slow.exit_code == 124

    arker_client.vms.delete(by_name.vm_id)
    vm.delete()
    with pytest.raises(NotFoundError):
        vm.run("true")


def test_context_manager_deletes(arker_client: Arker) -> None:
    with arker_client.vm("arkuntu").fork() as vm:
        vm.run("true")
    with pytest.raises(NotFoundError):
        arker_client.vms.delete(vm.id)


def test_idempotency_keys(arker_client: Arker) -> None:
    base = arker_client.vm("arkuntu")
    key = f"k-{new_ulid()}"
    first = base.fork(name="idem", idempotency_key=key)
    assert base.fork(name="idem", idempotency_key=key).id == first.id
    with pytest.raises(ConflictError):
        base.fork(name="other", idempotency_key=key)
    run_key = f"r-{new_ulid()}"
    first.run("echo x >> /home/user/log", idempotency_key=run_key)
    first.run("echo x >> /home/user/log", idempotency_key=run_key)
    assert first.run("cat /home/user/log").stdout == b"x\n"
    first.delete()


def test_sync_small_large_streamed_and_modes(arker_client: Arker, tmp_path: Path) -> None:
    vm = arker_client.vm("arkuntu").fork()
    vm.sync.write_file("/home/user/a.txt", "héllo")
    assert vm.sync.read_file("/home/user/a.txt") == "héllo".encode()
    vm.sync.write_file("/home/user/empty", b"")
    assert vm.sync.read_file("/home/user/empty") == b""

    big = os.urandom(6 * 1024 * 1024)
    arker_client.sync.write(vm.id, "/home/user/big.bin", io.BytesIO(big))
    assert arker_client.sync.read(vm.id, "/home/user/big.bin") == big
    dest = tmp_path / "big.bin"
    assert arker_client.sync.read_to(vm.id, "/home/user/big.bin", dest) == len(big)
    assert dest.read_bytes() == big

    arker_client.sync.write(vm.id, "/home/user/run.sh", b"#!/bin/sh\necho ran\n", mode=0o755)
    assert vm.run("/home/user/run.sh").stdout == b"ran\n"

    with pytest.raises(NotFoundError):
        vm.sync.read_file("/home/user/missing")
    with pytest.raises(BadRequestError):
        vm.sync.read_file("/etc/passwd")
    vm.delete()


def test_push_and_pull_dir(arker_client: Arker, tmp_path: Path) -> None:
    vm = arker_client.vm("arkuntu").fork()
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    pushed = arker_client.sync.push_dir(vm.id, src, "/home/user/proj/")
    assert len(pushed.transferred) == 2
    again = arker_client.sync.push_dir(vm.id, src, "/home/user/proj/")
    assert len(again.transferred) == 0 and len(again.skipped) == 2
    (src / "a.txt").unlink()
    pruned = arker_client.sync.push_dir(vm.id, src, "/home/user/proj/", delete=True)
    assert pruned.deleted == ["a.txt"]
    assert vm.run("ls -R /home/user/proj").stdout.count(b"b.txt") == 1

    dest = tmp_path / "dest"
    pulled = arker_client.sync.pull_dir(vm.id, "/home/user/proj/", dest)
    assert len(pulled.transferred) == 1 and (dest / "sub" / "b.txt").read_text() == "b"
    vm.delete()


def test_errors_map_to_sdk_classes(arker_client: Arker, arker_server: Any) -> None:
    with pytest.raises(UnsupportedError):
        arker_client.vm("arkuntu").fork(region="mars")
    with pytest.raises(NotFoundError):
        arker_client.vms.fork("no-such-vm-name")
    bad = Arker("wrong-key", base_url=arker_server.base_url, control_url=arker_server.control_url)
    with pytest.raises(AuthenticationError):
        bad.list()
    bad.close()

    vm = arker_client.vm("arkuntu").fork()
    started = threading.Event()

    def hold() -> None:
        started.set()
        vm.run("touch /home/user/go; sleep 4", session_id="busy")

    thread = threading.Thread(target=hold)
    thread.start()
    started.wait()
    while vm.run("test -e /home/user/go", session_id="p").exit_code:
        pass
    with pytest.raises(VmBusyError):
        arker_client.with_options(max_retries=0).vm(vm.id).run("true", session_id="busy")
    thread.join()
    vm.delete()
