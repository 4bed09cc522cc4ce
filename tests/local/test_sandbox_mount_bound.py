"""Only a bounded set of idle VMs stays mounted; an evicted VM comes back intact.

The engine keeps at most ``max_mounted`` idle VMs mounted (a small bound here so that a
handful of VMs exercise it): every mount and every kept handle would otherwise cost on
each sandbox start and hold a descriptor per VM.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from arker.local.sandbox import Engine
from arker.local.sandbox.mounts import mounts_under

BASE_VM = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"
BOUND = 2


@pytest.fixture
def bounded(engine: Engine) -> Engine:
    engine._overlays._max_mounted = BOUND
    return engine


def mounted(engine: Engine) -> set[str]:
    return {Path(p).name for p in mounts_under(str(engine.mount_dir))}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settle(engine: Engine, vm_ids: set[str]) -> None:
    """Wait until no VM outside ``vm_ids`` is mounted (evictions finish in the background)."""
    deadline = time.monotonic() + 30
    while mounted(engine) - vm_ids and time.monotonic() < deadline:
        time.sleep(0.05)


def test_idle_vms_past_the_bound_are_unmounted_and_hold_no_descriptor(bounded: Engine) -> None:
    bounded.fork(BASE_VM, "first")
    bounded.run("first", "true", session="s", timeout=30)
    before = open_fds()
    names = [f"vm{i}" for i in range(8)]
    for name in names:
        bounded.fork(BASE_VM, name)
        assert bounded.run(name, "echo hi > f", session="s", timeout=30).exit_code == 0
    settle(bounded, set(names[-BOUND:]))
    assert mounted(bounded) <= set(names[-BOUND:])
    # Their cgroups went too (kernel memory per VM); the next run makes new ones.
    assert all(bounded._vms[name].cgroup is None for name in names[:4])
    assert bounded.run(names[0], "cat f", session="s", timeout=30).stdout == b"hi\n"
    deadline = time.monotonic() + 30
    while open_fds() > before + BOUND and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds() <= before + BOUND


def test_an_evicted_vm_keeps_its_files_and_session(bounded: Engine) -> None:
    bounded.fork(BASE_VM, "a")
    out = bounded.run(
        "a", "mkdir -p /home/user/w && cd /home/user/w && echo kept > f", session="s", timeout=30
    )
    assert out.exit_code == 0
    for i in range(4):
        bounded.fork(BASE_VM, f"other{i}")
        bounded.run(f"other{i}", "true", session="s", timeout=30)
    settle(bounded, {"other2", "other3"})
    assert "a" not in mounted(bounded)
    again = bounded.run("a", "cat f; pwd", session="s", timeout=30)
    assert again.stdout == b"kept\n/home/user/w\n"
    bounded.fork("a", "a-child")
    assert bounded.run("a-child", "cat /home/user/w/f", session="s", timeout=30).stdout == b"kept\n"


def test_a_running_vm_is_never_evicted(bounded: Engine) -> None:
    bounded.fork(BASE_VM, "busy")
    bounded.run("busy", "true", session="s", timeout=30)
    result: list[bytes] = []
    runner = threading.Thread(
        target=lambda: result.append(
            bounded.run("busy", "sleep 1; echo done > g; cat g", session="s", timeout=30).stdout
        )
    )
    runner.start()
    time.sleep(0.3)
    for i in range(4):
        bounded.fork(BASE_VM, f"o{i}")
        bounded.run(f"o{i}", "true", session="s", timeout=30)
        assert "busy" in mounted(bounded)
    runner.join()
    assert result == [b"done\n"]


def test_a_file_open_for_reading_outlives_its_vms_eviction(bounded: Engine) -> None:
    bounded.fork(BASE_VM, "r")
    data = os.urandom(256 * 1024).hex()
    bounded.run("r", f"printf %s {data[:1000]} > /home/user/big", session="s", timeout=30)
    fh, size = bounded.open_read("r", "/home/user/big")
    try:
        for i in range(4):
            bounded.fork(BASE_VM, f"x{i}")
            bounded.run(f"x{i}", "true", session="s", timeout=30)
        settle(bounded, {"x2", "x3"})
        assert "r" not in mounted(bounded)
        assert fh.read() == data[:1000].encode() and size == 1000
    finally:
        fh.close()
    assert bounded.run("r", "wc -c < /home/user/big", session="s", timeout=30).stdout == b"1000\n"


def test_deleting_an_evicted_vm_leaves_no_mount_point(bounded: Engine) -> None:
    bounded.fork(BASE_VM, "gone")
    bounded.run("gone", "true", session="s", timeout=30)
    for i in range(3):
        bounded.fork(BASE_VM, f"y{i}")
        bounded.run(f"y{i}", "true", session="s", timeout=30)
    settle(bounded, {"y1", "y2"})
    bounded.delete("gone")
    assert not bounded.exists("gone")
    bounded._background.close()  # drain the queue: the teardown and the rmdir ran
    assert not (bounded.mount_dir / "gone").exists()
