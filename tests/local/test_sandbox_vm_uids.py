"""Hostile code against per-uid kernel limits: each VM runs as a host uid of its own.

One VM holding every inotify instance its uid may have leaves another VM its own; the
host sees each VM's processes under a different uid, kept across restarts, a new one for
a fork; files inherited through a fork stay writable on both sides and keep one owner on
disk; a command's ``RLIMIT_NOFILE`` is its own, not the server's raised one.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from arker.local.sandbox import Engine, Limits, SandboxError

BASE_VM = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"
UIDS = (2_000_100_000, 64)  # a range of this test's own
CANONICAL = 60999  # Engine's default sandbox_uid: the owner of the files on disk
LIMITS = Limits(max_output_bytes=64 * 1024, pids_max=128, memory_max_bytes=512 << 20)


def _engine(data_dir: Path) -> Engine:
    eng = Engine(data_dir, network=False, limits=LIMITS, vm_uids=UIDS)
    eng.ensure_base(BASE_VM)
    return eng


@pytest.fixture
def engine(sandbox_data_dir: Path) -> Iterator[Engine]:
    eng = _engine(sandbox_data_dir)
    try:
        yield eng
    finally:
        eng.close()


def _vm(eng: Engine, name: str) -> str:
    vm_id = f"vm-{name}"
    eng.fork(BASE_VM, vm_id)
    return vm_id


def _sh(eng: Engine, vm: str, command: str, session: str = "s") -> str:
    out = eng.run(vm, command, session=session, timeout=60)
    assert out.exit_code == 0, out.stderr
    return out.stdout.decode()


def _in_background(eng: Engine, vm: str, command: str) -> threading.Thread:
    t = threading.Thread(
        target=eng.run, args=(vm, command), kwargs={"session": "bg", "timeout": 60}
    )
    t.start()
    return t


def _host_uids_of(marker: str) -> set[int]:
    """Real uids of the host processes whose command line holds ``marker`` (like ps)."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if marker.encode() in cmdline and b"arker-spawn" not in cmdline:
                found.add(Path(f"/proc/{pid}").stat().st_uid)
        except OSError:
            continue
    return found


def _host_uid(eng: Engine, vm: str, marker: str) -> int:
    """The host uid a command of ``vm`` runs as, seen from the host while it sleeps."""
    t = _in_background(eng, vm, f"exec sleep {marker}")
    try:
        for _ in range(200):
            uids = _host_uids_of(f"sleep {marker}")
            if uids:
                assert len(uids) == 1, uids
                return uids.pop()
            time.sleep(0.05)
        raise AssertionError(f"no host process of {vm} found")
    finally:
        t.join()


def test_inotify_instances_held_by_one_vm_leave_another_its_own(engine: Engine) -> None:
    hog, other = _vm(engine, "HOG00"), _vm(engine, "OTHER")
    hold = (
        'python3 -c "import ctypes, time; libc = ctypes.CDLL(None); '
        "n = sum(libc.inotify_init1(0) >= 0 for _ in range(200)); "
        "open('/home/user/held', 'w').write(str(n)); time.sleep(6)\""
    )
    t = _in_background(engine, hog, hold)
    try:
        for _ in range(200):
            held = _sh(engine, hog, "cat /home/user/held 2>/dev/null || true")
            if held:
                break
            time.sleep(0.05)
        assert int(held) >= 128, "the hog could not even take its uid's instances"
        got = _sh(
            engine, other, "python3 -c 'import ctypes; print(ctypes.CDLL(None).inotify_init1(0))'"
        )
        assert int(got) >= 0, "inotify_init1 failed in another VM: the limit is shared"
    finally:
        t.join()


def test_each_vm_runs_as_its_own_host_uid_and_keeps_it(sandbox_data_dir: Path) -> None:
    eng = _engine(sandbox_data_dir)
    try:
        a, b = _vm(eng, "AAAAA"), _vm(eng, "BBBBB")
        uid_a, uid_b = _host_uid(eng, a, "7.01"), _host_uid(eng, b, "7.02")
        assert uid_a != uid_b
        assert {uid_a, uid_b} <= set(range(UIDS[0], UIDS[0] + UIDS[1]))
        child = "vm-child-of-a"
        eng.fork(a, child)
        uid_child = _host_uid(eng, child, "7.03")
        assert uid_child not in (uid_a, uid_b)
        assert _sh(eng, a, "id -u") == _sh(eng, child, "id -u") == "1000\n"  # inside: the same
    finally:
        eng.close()
    eng = _engine(sandbox_data_dir)
    try:
        assert _host_uid(eng, b, "7.04") == uid_b
        assert _host_uid(eng, a, "7.05") == uid_a
    finally:
        eng.close()


def test_a_deleted_vms_uid_is_given_back(engine: Engine) -> None:
    gone = _vm(engine, "GONE0")
    uid = _host_uid(engine, gone, "7.06")
    engine.delete(gone)
    assert _host_uid(engine, _vm(engine, "NEXT0"), "7.07") == uid


def test_files_inherited_by_a_fork_stay_writable_and_keep_one_owner_on_disk(
    engine: Engine, sandbox_data_dir: Path
) -> None:
    parent = _vm(engine, "PAREN")
    _sh(engine, parent, "mkdir -p proj && echo one > proj/notes && touch /tmp/scratch")
    child = "vm-child"
    engine.fork(parent, child)
    assert _sh(engine, child, "echo two >> proj/notes && touch proj/new && cat proj/notes") == (
        "one\ntwo\n"
    )
    assert _sh(engine, parent, "echo three >> proj/notes && rm /tmp/scratch && cat proj/notes") == (
        "one\nthree\n"
    )
    assert _sh(engine, child, "stat -c '%u %g' proj/notes proj/new") == "1000 1000\n" * 2
    owners = {
        (p.stat().st_uid, p.stat().st_gid)
        for p in (sandbox_data_dir / "engine" / "layers").rglob("notes")
    }
    assert owners == {(CANONICAL, CANONICAL)}  # forks never chown: one owner on disk


def test_a_command_gets_its_own_open_file_limit_not_the_servers(engine: Engine) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= LIMITS.nofile[0]:
        pytest.skip(f"the hard open-file limit ({hard}) is already low")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # what `arker serve` does
    try:
        vm = _vm(engine, "FILES")
        assert _sh(engine, vm, "ulimit -Sn") == f"{LIMITS.nofile[0]}\n"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_full_uid_range_is_unavailable(sandbox_data_dir: Path) -> None:
    eng = Engine(sandbox_data_dir, network=False, limits=LIMITS, vm_uids=(UIDS[0], 1))
    try:
        eng.ensure_base(BASE_VM)
        _sh(eng, BASE_VM, "true")  # the base VM takes the only uid
        with pytest.raises(SandboxError) as err:
            eng.run(_vm(eng, "NOUID"), "true", session="s", timeout=10)
        assert err.value.code == "unavailable"
    finally:
        eng.close()
