"""Base image, identity, sessions, timeouts, output caps, file I/O, persistence."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from arker.local.sandbox import Engine, SandboxError, SandboxUnavailable
from arker.local.sandbox.mounts import mounts_under
from arker.local.sandbox.probe import probe
from tests.kit.sandbox import put_file

BASE_VM = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"


def sh(engine: Engine, cmd: str, session: str = "0", vm: str = BASE_VM, timeout: float = 60):
    return engine.run(vm, cmd, session=session, timeout=timeout)


def test_base_image_has_shell_coreutils_python_and_user(engine: Engine) -> None:
    r = sh(
        engine,
        "id -u; id -un; echo $HOME; pwd; ls /bin/sh >/dev/null && echo sh-ok; "
        "python3 -c 'print(6*7)'; hostname",
    )
    assert r.exit_code == 0, r.stderr
    assert r.stdout.decode().split() == [
        "1000",
        "user",
        "/home/user",
        "/home/user",
        "sh-ok",
        "42",
        "vm",
    ]
    assert r.cwd == "/home/user"
    assert not r.timed_out and not r.stdout_truncated and not r.stderr_truncated


def test_exit_codes_and_stderr_are_returned(engine: Engine) -> None:
    r = sh(engine, "echo out; echo err >&2; exit 7")
    assert (r.stdout, r.stderr, r.exit_code) == (b"out\n", b"err\n", 7)
    assert sh(engine, "false").exit_code == 1
    assert sh(engine, "if").exit_code == 2  # syntax error like sh -c


def test_runs_as_unprivileged_host_uid(engine: Engine, sandbox_data_dir: Path) -> None:
    marker = "977.5123"
    t = threading.Thread(target=sh, args=(engine, f"sleep {marker}"), kwargs={"timeout": 5})
    t.start()
    try:
        uids: list[str] = []
        for _ in range(200):
            out = subprocess.run(
                ["pgrep", "-f", f"^sleep {marker}$"], capture_output=True, text=True, check=False
            ).stdout.split()
            if out:
                status = Path(f"/proc/{out[0]}/status").read_text()
                uids = next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1:]
                break
            time.sleep(0.05)
        assert uids and set(uids) == {str(engine.sandbox_uid)}
    finally:
        t.join()
    r = sh(engine, "echo x > /home/user/owned; mkdir -p /home/user/d")
    assert r.exit_code == 0
    found = [p for p in (sandbox_data_dir / "engine" / "layers").glob("*/home/user/owned")]
    assert found and all(p.stat().st_uid == engine.sandbox_uid for p in found)


def test_sessions_keep_cwd_and_exports_independently(engine: Engine) -> None:
    r = sh(engine, "mkdir -p /tmp/a/b && cd /tmp/a/b && export FOO=bar && exit 3", session="s1")
    assert r.exit_code == 3 and r.cwd == "/tmp/a/b"
    r = sh(engine, "pwd; echo ${FOO:-unset}", session="s1")
    assert r.stdout == b"/tmp/a/b\nbar\n" and r.cwd == "/tmp/a/b"
    r = sh(engine, "pwd; echo ${FOO:-unset}", session="s2")
    assert r.stdout == b"/home/user\nunset\n" and r.cwd == "/home/user"
    # Odd session names are hashed into safe file names, still independent.
    r = sh(engine, "cd /; export Q='a b'\"'\"'c'", session="../weird name/")
    assert r.cwd == "/"
    r = sh(engine, 'echo "$Q"; pwd', session="../weird name/")
    assert r.stdout == b"a b'c\n/\n"
    with pytest.raises(SandboxError) as ei:
        sh(engine, "true", session="")
    assert ei.value.code == "bad_request"


def test_busy_session_and_concurrent_sessions(engine: Engine) -> None:
    started = threading.Event()
    results: dict[str, object] = {}

    def slow() -> None:
        started.set()
        results["slow"] = sh(engine, "sleep 2; echo done", session="busy")

    t = threading.Thread(target=slow)
    t.start()
    started.wait()
    try:
        busy = None
        for _ in range(100):  # until the slow run has registered its session
            try:
                sh(engine, "true", session="busy")
            except SandboxError as exc:
                busy = exc
                break
            time.sleep(0.01)
        assert busy is not None and busy.code == "vm_busy"
        other = sh(engine, "echo other", session="free")
        assert other.stdout == b"other\n"
    finally:
        t.join()
    slow_r = results["slow"]
    assert getattr(slow_r, "stdout", None) == b"done\n"
    assert sh(engine, "echo again", session="busy").stdout == b"again\n"


def _leftovers(tag: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    return [ln for ln in out.stdout.splitlines() if tag in ln and "ps -eo" not in ln]


def test_timeout_kills_whole_tree(engine: Engine) -> None:
    r = sh(engine, "echo started; sleep 100.4242 & sleep 100.4242; echo never", timeout=1)
    assert r.timed_out and r.exit_code == 124
    assert r.stdout == b"started\n"
    assert _leftovers("100.4242") == []
    assert sh(engine, "echo alive").stdout == b"alive\n"


def test_timeout_with_setsid_and_nohup(engine: Engine) -> None:
    r = sh(
        engine,
        "setsid sleep 100.5151 & nohup sleep 100.5151 >/dev/null 2>&1 & "
        "(trap '' TERM HUP; sleep 100.5151) & wait",
        timeout=1,
    )
    assert r.timed_out and r.exit_code == 124
    assert _leftovers("100.5151") == []


def test_output_cap_truncates_and_drains(engine: Engine) -> None:
    cap = engine.limits.max_output_bytes
    r = sh(engine, f"head -c {cap * 4} /dev/zero; head -c 10 /dev/zero >&2; echo tail >&2")
    assert r.exit_code == 0
    assert len(r.stdout) == cap and r.stdout_truncated
    assert not r.stderr_truncated and r.stderr.endswith(b"tail\n")


def test_write_then_read_and_run_sees_it(engine: Engine) -> None:
    data = os.urandom(300_000)
    put_file(engine, BASE_VM, "/home/user/new/dir/f.bin", data, 0o640)
    fh, size = engine.open_read(BASE_VM, "/home/user/new/dir/f.bin")
    with fh:
        assert size == len(data) and fh.read() == data
    r = sh(
        engine,
        "stat -c '%u %a' new/dir/f.bin new/dir new; sha256sum new/dir/f.bin; "
        "echo edit >> new/dir/f.bin && echo edited",
    )
    lines = r.stdout.decode().splitlines()
    assert lines[:3] == ["1000 640", "1000 755", "1000 755"]
    assert lines[-1] == "edited"
    # Overwrite is atomic and replaces content; writing the VM's own files works.
    put_file(engine, BASE_VM, "/home/user/new/dir/f.bin", b"v2")
    fh, size = engine.open_read(BASE_VM, "/home/user/new/dir/f.bin")
    with fh:
        assert (fh.read(), size) == (b"v2", 2)
    assert sh(engine, "ls -a new/dir").stdout == b".\n..\nf.bin\n"  # no temp leftovers


def test_read_errors(engine: Engine) -> None:
    with pytest.raises(SandboxError) as ei:
        engine.open_read(BASE_VM, "/home/user/missing.txt")
    assert ei.value.code == "not_found"
    assert ei.value.message == "file not found: /home/user/missing.txt"
    with pytest.raises(SandboxError) as ei:
        engine.open_read(BASE_VM, "/home/user")
    assert ei.value.code == "bad_request"
    sh(engine, "mkfifo /home/user/fifo")
    with pytest.raises(SandboxError) as ei:
        engine.open_read(BASE_VM, "/home/user/fifo")
    assert ei.value.code == "bad_request"
    with pytest.raises(SandboxError) as ei:
        put_file(engine, BASE_VM, "/home/user", b"x")
    assert ei.value.code == "conflict"  # a directory is in the way
    with pytest.raises(SandboxError) as ei:
        engine.open_read("NOPE", "/home/user/x")
    assert ei.value.code == "not_found"
    with pytest.raises(SandboxError) as ei:
        engine.run("NOPE", "true", session="0", timeout=5)
    assert ei.value.code == "not_found"
    big = engine.limits.max_file_bytes + 1
    with pytest.raises(SandboxError) as ei:
        engine.check_room(BASE_VM, big)
    assert ei.value.code == "payload_too_large"


def _overlay_mounts(data_dir: Path) -> list[str]:
    """This data dir's overlays, by mount point (other engines may run on the same host)."""
    tag = hashlib.sha256(str((data_dir / "engine").resolve()).encode()).hexdigest()[:8]
    with open("/proc/self/mountinfo") as fh:
        return [ln for ln in fh if " - overlay " in ln and f"/{tag}/" in ln.split()[4]]


def test_restart_persistence_and_close_unmounts(sandbox_data_dir: Path) -> None:
    before = _overlay_mounts(sandbox_data_dir)
    eng = Engine(sandbox_data_dir, network=False)
    eng.ensure_base(BASE_VM)
    eng.fork(BASE_VM, "vm1")
    assert eng.run("vm1", "echo persisted > f; cd /tmp", session="s", timeout=30).exit_code == 0
    eng.fork("vm1", "vm2")
    put_file(eng, "vm2", "/home/user/g", b"gg")
    assert len(_overlay_mounts(sandbox_data_dir)) > len(before)
    eng.close()
    assert _overlay_mounts(sandbox_data_dir) == before
    eng2 = Engine(sandbox_data_dir, network=False)
    try:
        assert eng2.vm_ids() == {BASE_VM, "vm1", "vm2"}
        r = eng2.run("vm2", "cat ~/f ~/g; pwd", session="s", timeout=30)
        assert r.stdout == b"persisted\ngg/tmp\n"
        eng2.ensure_base(BASE_VM)  # idempotent
        assert eng2.exists("vm1") and not eng2.exists("vm3")
    finally:
        eng2.close()
    assert _overlay_mounts(sandbox_data_dir) == before


def test_probe_passes_here(sandbox_data_dir: Path) -> None:
    probe(sandbox_data_dir)


def test_broken_session_state_does_not_brick_the_session(engine: Engine) -> None:
    assert sh(engine, "echo 'if then' > /var/lib/arker/sessions/zz", session="a").exit_code == 0
    r = sh(engine, "echo ok; cd /tmp", session="zz")
    assert (r.stdout, r.exit_code, r.cwd) == (b"ok\n", 0, "/tmp")
    assert sh(engine, "pwd", session="zz").stdout == b"/tmp\n"


def test_close_stops_running_commands(sandbox_data_dir: Path) -> None:
    eng = Engine(sandbox_data_dir, network=False)
    eng.ensure_base(BASE_VM)
    results: list[object] = []
    t = threading.Thread(
        target=lambda: results.append(eng.run(BASE_VM, "sleep 100.6262", session="0", timeout=600))
    )
    t.start()
    for _ in range(200):
        if _leftovers("100.6262"):
            break
        time.sleep(0.02)
    eng.close()
    t.join(timeout=30)
    assert not t.is_alive()
    assert _leftovers("100.6262") == []
    assert mounts_under(str(eng.mount_dir)) == []
    with pytest.raises(SandboxError):
        eng.run(BASE_VM, "true", session="0", timeout=5)


def test_debian_base_requires_a_built_rootfs(sandbox_data_dir: Path) -> None:
    with pytest.raises(SandboxUnavailable) as ei:
        Engine(sandbox_data_dir, network=False, base="debian")
    assert "build_debian_rootfs" in str(ei.value) and "\n" not in str(ei.value)
    eng = Engine(sandbox_data_dir, network=False)  # the failed start left nothing locked
    eng.close()


@pytest.mark.parametrize(
    ("stdout", "stderr", "code", "retry"),
    [
        (b"", b"bwrap: Can't fork for pid 1: Resource temporarily unavailable\n", 1, True),
        (b"", b"bwrap: Creating new namespace failed: Resource temporarily unavailable\n", 1, True),
        # The command's own output or status: it ran, so it is never run again.
        (b"x", b"bwrap: Can't fork for pid 1: Resource temporarily unavailable\n", 1, False),
        (b"", b"sh: 1: Cannot fork\n", 2, False),
        (b"", b"bash: fork: Resource temporarily unavailable\n", 1, False),
        (b"", b"bwrap: Can't fork for pid 1: Resource temporarily unavailable\nmore\n", 1, False),
        (b"", b"bwrap: execvp nope: No such file or directory\n", 1, False),
        (b"", b"bwrap: Can't fork for pid 1: Resource temporarily unavailable\n", 2, False),
    ],
)
def test_only_a_sandbox_that_could_not_fork_is_started_again(
    stdout: bytes, stderr: bytes, code: int, retry: bool
) -> None:
    from arker.local.sandbox.pipeline import bwrap_could_not_fork
    from arker.local.sandbox.runner import RawResult

    raw = RawResult(stdout, stderr, code, False, False, False)
    assert bwrap_could_not_fork(raw) is retry
