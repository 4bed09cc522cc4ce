"""Escape attempts: symlinks, host visibility, setuid, fork bombs."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from arker.local.sandbox import Engine, SandboxError
from tests.kit.sandbox import put_file

BASE_VM = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"


def run(engine: Engine, cmd: str, timeout: float = 60) -> tuple[int, str, str]:
    r = engine.run(BASE_VM, cmd, session="sec", timeout=timeout)
    return r.exit_code, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def test_symlink_read_resolves_inside_vm(engine: Engine) -> None:
    run(
        engine,
        "ln -s /etc/passwd ~/pw; ln -s ../../../../../../etc/shadow ~/sh; "
        "ln -s /proc/self/root/etc/hostname ~/magic",
    )
    fh, _ = engine.open_read(BASE_VM, "/home/user/pw")
    with fh:
        vm_passwd = fh.read()
    assert b"user:x:1000:1000" in vm_passwd
    assert vm_passwd != Path("/etc/passwd").read_bytes()
    with pytest.raises(SandboxError) as ei:  # the VM has no /etc/shadow
        engine.open_read(BASE_VM, "/home/user/sh")
    assert ei.value.code == "not_found"
    with pytest.raises(SandboxError):  # magic links never resolve
        engine.open_read(BASE_VM, "/home/user/magic")


def test_write_through_symlinked_dir_stays_inside(engine: Engine, tmp_path: Path) -> None:
    host_dir = tmp_path / "hostdir"
    host_dir.mkdir()
    (host_dir / "victim").write_text("host")
    code, _, err = run(
        engine,
        f"ln -s {host_dir} ~/link; ln -s /etc ~/etclink; ln -s {host_dir}/victim ~/victimlink",
    )
    assert code == 0, err
    # The link dangles inside the VM: refused, and the host file is untouched.
    with pytest.raises(SandboxError) as ei:
        put_file(engine, BASE_VM, "/home/user/link/victim", b"pwned")
    assert ei.value.code == "bad_request"
    assert run(engine, f"mkdir -p {host_dir}")[0] == 0
    put_file(engine, BASE_VM, "/home/user/link/victim", b"pwned")
    put_file(engine, BASE_VM, "/home/user/link/new", b"pwned")
    put_file(engine, BASE_VM, "/home/user/victimlink", b"pwned")
    assert (host_dir / "victim").read_text() == "host"
    assert sorted(os.listdir(host_dir)) == ["victim"]
    # The writes landed inside the VM, at the path the link names there.
    code, out, _ = run(
        engine, f"cat {host_dir}/victim {host_dir}/new; readlink ~/victimlink || cat ~/victimlink"
    )
    assert out == "pwnedpwnedpwned"
    with pytest.raises(SandboxError) as ei:  # the VM's /etc is root's: a link does not help
        put_file(engine, BASE_VM, "/home/user/etclink/passwd", b"x")
    assert ei.value.code == "forbidden"
    assert b"user:x:1000" in engine.open_read(BASE_VM, "/etc/passwd")[0].read()
    assert b"root:" in Path("/etc/passwd").read_bytes()


def test_host_is_invisible(engine: Engine) -> None:
    code, out, _ = run(engine, "head -c 14 /proc/1/cmdline; echo; ls /proc | grep -c '^[0-9]'")
    assert code == 0
    cmdline, nprocs = out.splitlines()
    assert cmdline == "/usr/bin/bwrap"  # the sandbox's own init, not a host process
    assert int(nprocs) < 10
    code, out, _ = run(engine, "ls /work /root /farm 2>&1; ls /sys | wc -l; cat /etc/shadow")
    assert "/work" in out and "No such file" in out
    assert "Permission denied" in out or "cannot open" in out
    code, out, _ = run(engine, "cat /proc/net/dev | tail -n +3 | cut -d: -f1")
    assert out.split() == ["lo"]


def test_setuid_copy_is_not_setuid_root_on_host(engine: Engine, sandbox_data_dir: Path) -> None:
    code, out, err = run(
        engine,
        "cp /bin/sh ~/rootsh && chmod 4755 ~/rootsh && stat -c %a ~/rootsh && ~/rootsh -c 'id -u'",
    )
    assert code == 0, err
    assert out.split()[-1] == "1000"
    copies = list((sandbox_data_dir / "engine" / "layers").glob("*/home/user/rootsh"))
    assert copies
    for p in copies:
        st = p.stat()
        assert st.st_uid == engine.sandbox_uid  # setuid to the unprivileged sandbox uid at most
        assert st.st_uid != 0
    data_mode = stat.S_IMODE(sandbox_data_dir.stat().st_mode)
    assert data_mode == 0o700


def test_fork_bomb_is_contained(engine: Engine) -> None:
    # dash (/bin/sh) rejects ':' as a function name; bash runs the classic bomb.
    code, _, _ = run(engine, ":(){ :|:& };:", timeout=3)
    assert code in (2, 124)
    # The run ends by its timeout (124) or, when the bomb still holds every pid of the
    # VM's budget, because the shell itself cannot fork `sleep` (2): contained both ways.
    for bomb in ("bash -c ':(){ :|:& };:'; sleep 30", "b(){ b|b& };b; sleep 30"):
        started = time.monotonic()
        code, _, _ = run(engine, bomb, timeout=3)
        assert code in (2, 124)
        assert time.monotonic() - started < 20
    code, out, _ = run(engine, "echo survived")
    assert (code, out) == (0, "survived\n")


def test_memory_limit_kills_big_allocation(engine: Engine) -> None:
    limit = engine.limits.memory_max_bytes
    code, _, _ = run(engine, f"python3 -c 'b = bytearray({limit * 2}); print(len(b))'")
    assert code != 0
    assert run(engine, "echo ok")[1] == "ok\n"


def test_network_flag_controls_the_network_namespace(sandbox_data_dir: Path) -> None:
    eng = Engine(sandbox_data_dir, network=True)
    try:
        eng.ensure_base(BASE_VM)
        r = eng.run(BASE_VM, "tail -n +3 /proc/net/dev | cut -d: -f1", session="0", timeout=30)
        host = Path("/proc/net/dev").read_text().splitlines()[2:]
        assert sorted(r.stdout.decode().split()) == sorted(ln.split(":")[0].strip() for ln in host)
    finally:
        eng.close()
