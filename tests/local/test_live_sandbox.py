"""Live runs in the sandbox engine: output to files as it comes, cancel, delete, caps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from arker.local.sandbox import Engine, RunOutcome
from arker.local.sandbox.live import LiveSink

BASE_VM = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"


class _Live:
    """One live run on a thread, its output in two files under ``tmp``."""

    def __init__(self, engine: Engine, tmp: Path, cmd: str, vm: str, cap: int = 1 << 20):
        self.out_path, self.err_path = tmp / "out", tmp / "err"
        self._out = self.out_path.open("wb")
        self._err = self.err_path.open("wb")
        self.grew = threading.Event()
        self.sink = LiveSink(self._out, self._err, cap, self.grew.set)
        self.outcome: RunOutcome | None = None
        self.error: BaseException | None = None

        def body() -> None:
            try:
                self.outcome = engine.run(vm, cmd, session="live", timeout=120, sink=self.sink)
            except BaseException as exc:
                self.error = exc
            finally:
                self._out.close()
                self._err.close()

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()

    def wait_for(self, pred: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, "condition never held"
            time.sleep(0.02)

    def end(self, timeout: float = 30) -> RunOutcome:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "live run did not end"
        assert self.error is None, self.error
        assert self.outcome is not None
        return self.outcome


def _fork_vm(engine: Engine, name: str) -> str:
    vm = f"01KQBYKEV5WJ7YB010603T1{name}_d8c0"
    engine.fork(BASE_VM, vm)
    return vm


def test_output_reaches_the_file_while_the_command_still_runs(engine: Engine, tmp_path: Path):
    vm = _fork_vm(engine, "AAAA")
    live = _Live(engine, tmp_path, "echo first; sleep 30; echo never", vm)
    live.wait_for(lambda: live.out_path.read_bytes() == b"first\n")
    assert live.thread.is_alive()
    live.sink.cancel()
    outcome = live.end()
    assert live.sink.cancelled and not outcome.timed_out
    assert live.out_path.read_bytes() == b"first\n"


def test_cancel_kills_a_setsid_daemon_of_the_run(engine: Engine, tmp_path: Path):
    vm = _fork_vm(engine, "BBBB")
    cmd = (
        "setsid sh -c 'while :; do date +%s%N >> /home/user/beat; sleep 0.05; done' "
        "</dev/null >/dev/null 2>&1 & echo started; sleep 600"
    )
    live = _Live(engine, tmp_path, cmd, vm)
    live.wait_for(lambda: b"started" in live.out_path.read_bytes())
    live.sink.cancel()
    live.end()
    size = engine.run(vm, "wc -c < /home/user/beat", session="s", timeout=30).stdout
    time.sleep(0.5)
    again = engine.run(vm, "wc -c < /home/user/beat", session="s", timeout=30).stdout
    assert size == again, "the daemon kept writing after cancel"


def test_a_daemon_that_closed_its_output_is_still_cancelled(engine: Engine, tmp_path: Path):
    vm = _fork_vm(engine, "CCCC")
    live = _Live(engine, tmp_path, "exec sleep 600 >/dev/null 2>&1", vm)
    live.wait_for(lambda: live.sink.started)
    time.sleep(0.3)
    live.sink.cancel()
    live.end(timeout=15)


def test_delete_vm_ends_its_live_runs(engine: Engine, tmp_path: Path):
    vm = _fork_vm(engine, "DDDD")
    live = _Live(engine, tmp_path, "echo up; sleep 600", vm)
    live.wait_for(lambda: b"up" in live.out_path.read_bytes())
    engine.delete(vm)
    live.end()
    assert live.sink.cancelled


def test_output_past_the_cap_is_discarded_and_flagged(engine: Engine, tmp_path: Path):
    vm = _fork_vm(engine, "EEEE")
    live = _Live(engine, tmp_path, "head -c 300000 /dev/zero; echo err >&2", vm, cap=100000)
    outcome = live.end()
    assert outcome.exit_code == 0
    assert live.out_path.stat().st_size == 100000
    assert outcome.stdout_truncated and not outcome.stderr_truncated
    assert live.err_path.read_bytes() == b"err\n"


def test_fork_with_a_live_writer_neither_waits_nor_tears_a_file(engine: Engine, tmp_path: Path):
    vm = _fork_vm(engine, "FFFF")
    # Each line is written whole by one write(2): a consistent copy has only whole lines.
    cmd = (
        'exec python3 -c "import os\n'
        "fd = os.open('/home/user/log', os.O_WRONLY | os.O_CREAT | os.O_APPEND)\n"
        "i = 0\n"
        "while True:\n"
        "    os.write(fd, b'line %08d %s\\n' % (i, b'x' * 48)); i += 1\""
    )
    live = _Live(engine, tmp_path, cmd, vm)
    live.wait_for(lambda: live.sink.started)
    time.sleep(0.5)
    child = "01KQBYKEV5WJ7YB010603T1GGGG_d8c0"
    engine.fork(vm, child)  # would be vm_busy after busy_wait_s if it waited for the run
    assert live.thread.is_alive(), "the parent's run stopped"
    check = (
        "wc -l < /home/user/log; wc -c < /home/user/log; "
        "awk 'length($0) != 62 || $2 != sprintf(\"%08d\", NR - 1)' /home/user/log | wc -l"
    )
    seen = engine.run(child, check, session="c", timeout=60)
    lines, size, bad = (int(x) for x in seen.stdout.split())
    assert lines > 10 and size == 63 * lines, seen.stdout  # no torn last line
    assert bad == 0, "a line out of order or torn in the copy"
    # The child has no process: its copy does not grow.
    again = engine.run(child, "wc -l < /home/user/log", session="c", timeout=60).stdout
    assert int(again) == lines
    # The parent carries on writing.
    before = int(engine.run(vm, "wc -l < /home/user/log", session="p", timeout=60).stdout)
    time.sleep(0.3)
    assert int(engine.run(vm, "wc -l < /home/user/log", session="p", timeout=60).stdout) > before
    live.sink.cancel()
    live.end()


def test_fork_copies_a_live_vm_at_one_instant(engine: Engine, tmp_path: Path):
    vm = _fork_vm(engine, "HHHH")
    # Each round writes round number i into f000..f199 in order: at any instant the
    # files read i, ..., i, i-1, ..., i-1. A copy taken file by file while the writer
    # runs would mix rounds further apart.
    cmd = (
        'exec python3 -c "import os\n'
        "os.makedirs('/home/user/c', exist_ok=True)\n"
        "fds = [os.open('/home/user/c/f%03d' % k, os.O_RDWR | os.O_CREAT) for k in range(200)]\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    for fd in fds: os.pwrite(fd, b'%08d' % i, 0)\""
    )
    live = _Live(engine, tmp_path, cmd, vm)
    live.wait_for(lambda: live.sink.started)
    time.sleep(0.5)
    child = "01KQBYKEV5WJ7YB010603T1JJJJ_d8c0"
    engine.fork(vm, child)
    check = (
        'python3 -c "import os\n'
        "v = [int(open('/home/user/c/f%03d' % k).read()) for k in range(200)]\n"
        'print(max(v) - min(v), all(a >= b for a, b in zip(v, v[1:])), min(v))"'
    )
    spread, ordered, low = engine.run(child, check, session="c", timeout=60).stdout.split()
    assert int(low) > 0
    assert (spread, ordered) in ((b"0", b"True"), (b"1", b"True")), "the copy mixes rounds"
    live.sink.cancel()
    live.end()


def test_a_vm_with_a_live_run_stays_mounted_past_the_mount_bound(engine: Engine, tmp_path: Path):
    from arker.local.sandbox.mounts import mounts_under

    engine._overlays._max_mounted = 1
    vm = _fork_vm(engine, "KKKK")
    live = _Live(engine, tmp_path, "while :; do echo x >> /home/user/t; sleep 0.05; done", vm)
    live.wait_for(lambda: live.sink.started)
    for i in range(4):  # other VMs used after it push it past the bound
        other = f"01KQBYKEV5WJ7YB010603T1M{i:03d}_d8c0"
        engine.fork(BASE_VM, other)
        assert engine.run(other, "true", session="s", timeout=30).exit_code == 0
    time.sleep(0.5)
    assert vm in {Path(p).name for p in mounts_under(str(engine.mount_dir))}
    assert live.thread.is_alive()
    size = engine.run(vm, "wc -c < /home/user/t", session="p", timeout=30).stdout
    time.sleep(0.3)
    assert engine.run(vm, "wc -c < /home/user/t", session="p", timeout=30).stdout != size
    live.sink.cancel()
    live.end()
