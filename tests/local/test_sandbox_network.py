"""Each VM's own network namespace (``private``, ``none``), and connecting into it."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from arker.local.sandbox import Engine, Limits, SandboxError
from arker.local.sandbox.network import missing_tools

from .conftest import BASE_VM

VM = "01KQBYKEV5WJ7YB010603T1DCT_net0"
OTHER = "01KQBYKEV5WJ7YB010603T1DCT_net1"

CONNECT = (
    'python3 -c "import socket,sys\n'
    "try:\n"
    " s=socket.create_connection(('{host}',{port}),timeout=3); print('OPEN', s.recv(16))\n"
    "except OSError as e: print('CLOSED', e)\""
)
SERVE_ONCE = (
    'python3 -c "import socket\n'
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('127.0.0.1',{port})); s.listen(); c,_=s.accept(); c.sendall(b'{reply}'); c.close()\""
)


def pasta_or_skip() -> None:
    if missing_tools("private") is not None:
        pytest.skip(missing_tools("private") or "")


@pytest.fixture
def private(sandbox_data_dir: Path) -> Iterator[Engine]:
    pasta_or_skip()
    eng = Engine(sandbox_data_dir, network="private")
    eng.ensure_base(BASE_VM)
    eng.fork(BASE_VM, VM)
    try:
        yield eng
    finally:
        eng.close()


def run(eng: Engine, cmd: str, vm: str = VM, session: str = "default") -> str:
    out = eng.run(vm, cmd, session=session, timeout=30)
    return out.stdout.decode() + out.stderr.decode()


def in_background(fn: Callable[[], object]) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def wait_connect(eng: Engine, vm: str, port: int) -> socket.socket:
    deadline = time.monotonic() + 20
    while True:
        try:
            return eng.open_connection(vm, port)
        except SandboxError as exc:
            if time.monotonic() > deadline:
                raise
            assert exc.code in ("unavailable", "conflict")
            time.sleep(0.05)


def pasta_pids() -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().startswith(("pasta", "passt")):
                        pids.add(int(entry))
            except OSError:
                pass
    return pids


def test_open_connection_reaches_a_server_listening_inside_the_vm(private: Engine) -> None:
    t = in_background(lambda: run(private, SERVE_ONCE.format(port=8080, reply="hello")))
    sock = wait_connect(private, VM, 8080)
    with sock:
        assert sock.recv(16) == b"hello"
    t.join(30)


def test_open_connection_errors_are_clear(private: Engine) -> None:
    with pytest.raises(SandboxError) as exc:
        private.open_connection(VM, 8080)
    assert exc.value.code == "conflict"  # no run yet: no namespace
    run(private, "true")
    with pytest.raises(SandboxError) as exc:
        private.open_connection(VM, 8080)
    assert exc.value.code == "unavailable" and "nothing listens" in str(exc.value)
    with pytest.raises(SandboxError) as exc:
        private.open_connection(VM, 0)
    assert exc.value.code == "bad_request"
    with pytest.raises(SandboxError) as exc:
        private.open_connection("01KQBYKEV5WJ7YB010603T1DCT_nope", 80)
    assert exc.value.code == "not_found"


def test_two_runs_of_one_vm_talk_over_loopback(private: Engine) -> None:
    t = in_background(lambda: run(private, SERVE_ONCE.format(port=9000, reply="x")))
    wait_connect(private, VM, 9000).close()  # the server is up (and served that one)
    t.join(30)
    t = in_background(lambda: run(private, SERVE_ONCE.format(port=9001, reply="pong")))
    wait_connect_port = 9001
    deadline = time.monotonic() + 20
    while True:
        out = run(private, CONNECT.format(host="127.0.0.1", port=wait_connect_port), session="b")
        if "OPEN" in out or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "OPEN b'pong'" in out
    t.join(30)


def test_the_hosts_loopback_and_abstract_sockets_are_out_of_reach(private: Engine) -> None:
    host = socket.socket()
    host.bind(("127.0.0.1", 0))
    host.listen()
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(b"\0arker-test-net-abstract")
    abstract.listen()
    try:
        port = host.getsockname()[1]
        for addr in ("127.0.0.1", "192.0.2.1"):  # loopback, and the gateway pasta shows
            out = run(private, CONNECT.format(host=addr, port=port))
            assert "CLOSED" in out, (addr, out)
        out = run(
            private,
            'python3 -c "import socket\ns=socket.socket(socket.AF_UNIX)\n'
            "try:\n s.connect(b'\\0arker-test-net-abstract'); print('OPEN')\n"
            "except OSError as e: print('CLOSED', e)\"",
        )
        assert "CLOSED" in out, out
    finally:
        host.close()
        abstract.close()


def test_another_vms_listener_is_out_of_reach(private: Engine) -> None:
    private.fork(BASE_VM, OTHER)
    t = in_background(lambda: run(private, SERVE_ONCE.format(port=7000, reply="other"), OTHER))
    wait_connect(private, OTHER, 7000).close()  # up (and that connection served it)
    t.join(30)
    t = in_background(lambda: run(private, SERVE_ONCE.format(port=7001, reply="other"), OTHER))
    wait_connect_deadline = time.monotonic() + 5
    while time.monotonic() < wait_connect_deadline:
        out = run(private, CONNECT.format(host="127.0.0.1", port=7001))
        assert "CLOSED" in out, out
        time.sleep(0.2)
    wait_connect(private, OTHER, 7001).close()
    t.join(30)


def test_network_none_has_only_loopback_shared_by_the_vms_runs(sandbox_data_dir: Path) -> None:
    with Engine(sandbox_data_dir, network="none") as eng:
        eng.ensure_base(BASE_VM)
        eng.fork(BASE_VM, VM)
        assert run(eng, "tail -n +3 /proc/net/dev | cut -d: -f1").split() == ["lo"]
        t = in_background(lambda: run(eng, SERVE_ONCE.format(port=8081, reply="lo")))
        with wait_connect(eng, VM, 8081) as sock:
            assert sock.recv(8) == b"lo"
        t.join(30)


def test_no_pasta_outlives_its_vm_or_the_engine(sandbox_data_dir: Path) -> None:
    pasta_or_skip()
    before = pasta_pids()
    eng = Engine(sandbox_data_dir, network="private")
    try:
        eng.ensure_base(BASE_VM)
        eng.fork(BASE_VM, VM)
        eng.fork(BASE_VM, OTHER)
        run(eng, "true")
        run(eng, "true", OTHER)
        assert len(pasta_pids() - before) == 2
        eng.delete(VM)
        assert len(pasta_pids() - before) == 1
    finally:
        eng.close()
    assert pasta_pids() - before == set()


def test_a_fork_gets_a_namespace_of_its_own(private: Engine) -> None:
    run(private, "true")
    private.fork(VM, OTHER)
    a = run(private, "readlink /proc/self/ns/net")
    b = run(private, "readlink /proc/self/ns/net", OTHER)
    assert a.startswith("net:") and b.startswith("net:") and a != b


@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 missing")
def test_host_mode_shares_the_hosts_namespace(sandbox_data_dir: Path) -> None:
    with Engine(sandbox_data_dir, network="host") as eng:
        eng.ensure_base(BASE_VM)
        assert run(eng, "readlink /proc/self/ns/net", BASE_VM).strip() == os.readlink(
            "/proc/self/ns/net"
        )


def test_without_pasta_private_names_the_package_and_none_does_not_need_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "pasta" else real(name))
    why = missing_tools("private")
    assert why is not None and "apt-get install -y passt" in why and "--network none" in why
    assert missing_tools("none") is None and missing_tools("host") is None


def test_no_network_contradicting_network_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from arker.local.cli import serve_main

    assert serve_main(["--no-network", "--network", "host"]) == 2
    assert "contradicts" in capsys.readouterr().err


def test_an_idle_vms_namespace_ends_and_is_made_again_on_the_next_run(
    sandbox_data_dir: Path,
) -> None:
    pasta_or_skip()
    before = pasta_pids()
    with Engine(sandbox_data_dir, network="private", limits=Limits(net_idle_s=0.5)) as eng:
        eng.ensure_base(BASE_VM)
        eng.fork(BASE_VM, VM)
        first = run(eng, "readlink /proc/self/ns/net")
        assert len(pasta_pids() - before) == 1
        deadline = time.monotonic() + 20
        while pasta_pids() - before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pasta_pids() - before == set()
        with pytest.raises(SandboxError):
            eng.open_connection(VM, 8080)  # no namespace while idle
        second = run(eng, "readlink /proc/self/ns/net")
        # Not compared by number: the kernel may give a new namespace the inode number
        # of the freed one. The pasta count and open_connection above show it was gone.
        assert first.startswith("net:") and second.startswith("net:")
        assert len(pasta_pids() - before) == 1


def test_a_live_run_keeps_its_vms_namespace_past_the_idle_time(sandbox_data_dir: Path) -> None:
    pasta_or_skip()
    with Engine(sandbox_data_dir, network="private", limits=Limits(net_idle_s=0.3)) as eng:
        eng.ensure_base(BASE_VM)
        eng.fork(BASE_VM, VM)
        t = in_background(lambda: run(eng, "sleep 3; " + SERVE_ONCE.format(port=8082, reply="on")))
        time.sleep(1.5)  # idle time passed several times, a run in flight all along
        with wait_connect(eng, VM, 8082) as sock:
            assert sock.recv(8) == b"on"
        t.join(30)
