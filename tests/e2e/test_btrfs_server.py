"""`arker serve --storage btrfs` end to end: the SDK against a server on the btrfs storage.

The kernel enforces the disk quota whatever the VM's code does (here: a file held open
after ``unlink``, which the default storage's usage walk never sees), a small write to a
big inherited file costs about a block, and forks stay isolated.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from arker import Arker
from arker.local.sandbox import volume
from arker.testing import ArkerServer, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def btrfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArkerServer]:
    reason = volume.btrfs_unavailable()
    if reason:
        pytest.skip(f"btrfs storage unavailable: {reason}")
    data = tmp_path_factory.mktemp("btrfs-serve") / "data"
    args = ("--storage", "btrfs", "--storage-size", "2G", "--disk-quota", "128M", "--no-network")
    server = start_server(data, extra_args=args)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def client(btrfs_server: ArkerServer) -> Iterator[Arker]:
    with Arker(
        api_key=btrfs_server.api_key,
        base_url=btrfs_server.base_url,
        control_url=btrfs_server.control_url,
    ) as c:
        yield c


def _image_bytes(server: ArkerServer) -> int:
    image = Path(server.data_dir) / "storage.btrfs"
    return image.stat().st_blocks * 512


def test_the_kernel_stops_a_vm_writing_through_an_unlinked_open_file(
    client: Arker, btrfs_server: ArkerServer
) -> None:
    vm = client.vms.fork("arkuntu").vm_id
    before = _image_bytes(btrfs_server)
    script = (
        "exec 3>/home/user/hidden; rm /home/user/hidden; "
        "dd if=/dev/zero bs=1M count=300 2>&1 >&3; echo rc=$?"
    )
    out = client.runs.create(vm, f"sh -c {shlex.quote(script)}", timeout=120)
    assert "quota exceeded" in out.stdout_text.lower(), out.stdout_text
    assert "rc=0" not in out.stdout_text
    # The host disk did not take the 300 MiB: at most the 128 MiB budget plus metadata.
    assert _image_bytes(btrfs_server) - before < 128 * 2**20 + 32 * 2**20
    client.vms.delete(vm)


def test_a_small_append_to_a_big_inherited_file_costs_about_a_block(
    client: Arker, btrfs_server: ArkerServer
) -> None:
    parent = client.vms.fork("arkuntu").vm_id
    made = client.runs.create(parent, "head -c 50M /dev/urandom > /home/user/big && sync")
    assert made.exit_code == 0, made.stderr_text
    child = client.vms.fork(parent).vm_id
    before = _image_bytes(btrfs_server)
    appended = client.runs.create(child, "printf ab >> /home/user/big && sync && wc -c < ~/big")
    assert appended.stdout_text.strip() == str(50 * 2**20 + 2), appended.stderr_text
    assert _image_bytes(btrfs_server) - before < 8 * 2**20  # not another 50 MiB
    # The parent still sees its own file, unchanged.
    assert client.runs.create(parent, "wc -c < ~/big").stdout_text.strip() == str(50 * 2**20)
    client.vms.delete(child)
    client.vms.delete(parent)


def _storage_lines(server: ArkerServer) -> list[str]:
    log = server.log_path.read_text(errors="replace")
    return [ln for ln in log.splitlines() if ln.startswith("arker serve: storage:")]


def test_a_plain_arker_serve_keeps_a_data_dir_made_on_directories_and_starts_new_ones_on_btrfs(
    tmp_path: Path,
) -> None:
    if volume.btrfs_unavailable():
        pytest.skip(f"btrfs storage unavailable: {volume.btrfs_unavailable()}")
    for sub in ("old", "new"):
        (tmp_path / sub).mkdir()
    # A data dir as arker made them before btrfs was the default: VMs on directories.
    old = start_server(tmp_path / "old" / "data", extra_args=("--storage", "dir"))
    try:
        with Arker(old.api_key, base_url=old.base_url, control_url=old.control_url) as c:
            vm = c.vms.fork("arkuntu").vm_id
            c.sync.write(vm, "/home/user/kept.txt", b"from before")
        old.stop()
        old.extra_args = ()  # the default: --storage auto
        old.start()
        assert len(_storage_lines(old)) == 1 and "stay on it" in _storage_lines(old)[0]
        with Arker(old.api_key, base_url=old.base_url, control_url=old.control_url) as c:
            assert c.sync.read(vm, "/home/user/kept.txt") == b"from before"
            child = c.vms.fork(vm).vm_id
            assert c.runs.create(child, "cat /home/user/kept.txt").stdout == b"from before"
        assert not (old.data_dir / "storage.btrfs").exists()
    finally:
        old.stop()
    new = start_server(tmp_path / "new" / "data")
    try:
        (line,) = _storage_lines(new)
        assert line.startswith("arker serve: storage: btrfs"), line
        assert (new.data_dir / "storage.btrfs").is_file()
        with Arker(new.api_key, base_url=new.base_url, control_url=new.control_url) as c:
            vm = c.vms.fork("arkuntu").vm_id
            assert c.runs.create(vm, "echo on btrfs").stdout == b"on btrfs\n"
    finally:
        new.stop()
