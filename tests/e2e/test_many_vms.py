"""A 1,500-VM server under a 1,024-descriptor limit: every VM runs, the others stay usable.

One real `arker serve`, started with a low soft open-file limit (it raises it to the
hard limit), then held to ``ulimit -n 1024`` (soft and hard, with ``prlimit``). Each
of 1,500 VMs is forked and runs once; an idle VM must hold no descriptor and no mount
(counted in ``/proc/<pid>/fd`` and ``/proc/<pid>/mountinfo``: the server lives in a
private mount namespace), so forks, writes and runs of other VMs keep working, and a
descriptor shortage is one run's clear error, never the server's.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from arker import Arker, ArkerError
from arker.local.sandbox.mounting import MAX_MOUNTED
from arker.testing import ArkerServer, start_server

pytestmark = pytest.mark.e2e

N_VMS = 1500
NOFILE = 1024
WORKERS = 2


@dataclass
class Crowd:
    server: ArkerServer
    client: Arker
    vm_ids: list[str]
    soft_at_start: int
    hard_at_start: int
    fds_with_one_vm: int
    mounts_with_one_vm: int


def server_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def limit_leaving_free(pid: int, free: int) -> int:
    """The open-file limit under which only ``free`` descriptor numbers are unused."""
    used = {int(p.name) for p in Path(f"/proc/{pid}/fd").iterdir()}
    limit, unused = 0, 0
    while unused < free or limit in used:
        unused += limit not in used
        limit += 1
    return limit


def server_mounts(pid: int) -> int:
    return len(Path(f"/proc/{pid}/mountinfo").read_text().splitlines())


def nofile_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc/<pid>/limits")


def client_for(server: ArkerServer, **kwargs: int) -> Arker:
    return Arker(server.api_key, base_url=server.base_url, control_url=server.control_url, **kwargs)


def make_vms(server: ArkerServer, count: int) -> list[str]:
    """Fork ``count`` VMs from the base; each runs once."""
    made: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        client = client_for(server)
        try:
            while True:
                with lock:
                    if len(made) >= count or errors:
                        return
                    made.append("")
                    slot = len(made) - 1
                vm = client.vms.fork("arkuntu").vm_id
                out = client.runs.create(vm, "echo ran")
                assert out.exit_code == 0 and out.stdout == b"ran\n", out
                made[slot] = vm
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=work) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return made


def wait_until_at_most(probe: object, limit: int) -> int:
    """Poll ``probe()`` (evictions finish on the server's background queue)."""
    assert callable(probe)
    deadline = time.monotonic() + 60
    value = int(probe())
    while value > limit and time.monotonic() < deadline:
        time.sleep(0.2)
        value = int(probe())
    return value


@pytest.fixture(scope="module")
def crowd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crowd]:
    data = tmp_path_factory.mktemp("many-vms") / "data"
    own = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The server inherits a low soft limit, as from a shell's `ulimit -Sn 512`.
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, own[1]))
    try:
        server = start_server(data)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, own)
    client = client_for(server)
    try:
        soft, hard = nofile_limits(server.pid)
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
        first = make_vms(server, 1)
        fds, mounts = server_fds(server.pid), server_mounts(server.pid)
        vms = first + make_vms(server, N_VMS - 1)
        yield Crowd(server, client, vms, soft, hard, fds, mounts)
    finally:
        client.close()
        server.stop()


def test_the_server_raises_its_soft_open_file_limit_to_the_hard_one(crowd: Crowd) -> None:
    assert crowd.soft_at_start == crowd.hard_at_start > 512


def test_every_one_of_1500_vms_ran_under_a_1024_descriptor_limit(crowd: Crowd) -> None:
    assert len(set(crowd.vm_ids)) == N_VMS and all(crowd.vm_ids)
    assert nofile_limits(crowd.server.pid) == (NOFILE, NOFILE)


def test_idle_vms_hold_no_descriptor_and_no_mount(crowd: Crowd) -> None:
    pid = crowd.server.pid
    # Beyond the one-VM server: at most the bounded set of mounted VMs, plus slack
    # for connections and the database.
    fds = wait_until_at_most(lambda: server_fds(pid), crowd.fds_with_one_vm + MAX_MOUNTED + 32)
    assert fds <= crowd.fds_with_one_vm + MAX_MOUNTED + 32
    mounts = wait_until_at_most(lambda: server_mounts(pid), crowd.mounts_with_one_vm + MAX_MOUNTED)
    assert mounts <= crowd.mounts_with_one_vm + MAX_MOUNTED


def test_forks_writes_and_runs_of_other_vms_still_work(crowd: Crowd) -> None:
    client = crowd.client
    for vm in (crowd.vm_ids[0], crowd.vm_ids[N_VMS // 2], crowd.vm_ids[-1]):
        client.sync.write(vm, "/home/user/note", b"still here\n")
        child = client.vms.fork(vm).vm_id
        assert client.runs.create(child, "cat /home/user/note").stdout == b"still here\n"
        assert client.runs.create(vm, "echo ran again").stdout == b"ran again\n"
        client.vms.delete(child)
    fresh = client.vms.fork("arkuntu").vm_id
    assert client.runs.create(fresh, "echo new").stdout == b"new\n"
    assert client.vms.list(limit=5).total >= N_VMS


def test_running_out_of_descriptors_fails_that_run_only(crowd: Crowd) -> None:
    pid = crowd.server.pid
    vm = crowd.vm_ids[1]
    client = client_for(crowd.server, max_retries=0)
    try:
        client.runs.create(vm, "true")  # mounted, and the connection is open
        # Room for the run's info pipe, not for the command's output pipes: the limit
        # caps descriptor numbers, so it leaves three free numbers under it.
        tight = limit_leaving_free(pid, 3)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (tight, NOFILE))
        try:
            with pytest.raises(ArkerError) as caught:
                client.runs.create(vm, "echo never")
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
        assert caught.value.code == "unavailable", caught.value
        assert "open-file limit" in str(caught.value)
        assert client.runs.create(vm, "echo back").stdout == b"back\n"
        assert crowd.client.runs.create(crowd.vm_ids[2], "echo other").stdout == b"other\n"
    finally:
        client.close()
