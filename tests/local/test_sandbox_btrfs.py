"""The btrfs storage (``Engine(storage="btrfs")``): block-level copy-up, kernel quota, forks."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from arker.local.sandbox import Engine, Limits, SandboxUnavailable, volume
from arker.local.sandbox.layers import FLATTEN_THRESHOLD
from arker.local.sandbox.probe import probe

BASE_VM = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"
MIB = 1 << 20
BUDGET = 64 * MIB


def out(engine: Engine, vm: str, cmd: str) -> str:
    r = engine.run(vm, cmd, session="t", timeout=120)
    assert r.exit_code == 0, (cmd, r.stderr)
    return r.stdout.decode()


def open_btrfs(data_dir: Path, budget: int) -> Engine:
    """An engine on the btrfs storage (a 2 GiB image) with ``budget`` bytes per VM."""
    reason = volume.btrfs_unavailable()
    if reason:
        pytest.skip(f"btrfs storage unavailable: {reason}")
    eng = Engine(
        data_dir,
        network=False,
        limits=Limits(disk_quota_bytes=budget),
        storage="btrfs",
        storage_size=2 << 30,
    )
    eng.ensure_base(BASE_VM)
    return eng


@pytest.fixture
def btrfs_engine(sandbox_data_dir: Path) -> Iterator[Engine]:
    """An engine on the btrfs storage with a 64 MiB disk quota per VM."""
    eng = open_btrfs(sandbox_data_dir, BUDGET)
    try:
        yield eng
    finally:
        eng.close()


def volume_used(engine: Engine) -> int:
    """Bytes used on the engine's btrfs volume (after a sync)."""
    os.sync()
    st = os.statvfs(engine.data_dir / "engine" / "btrfs")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def image_bytes(engine: Engine) -> int:
    """Host disk held by the (sparse) image file."""
    return os.stat(engine.data_dir / "storage.btrfs").st_blocks * 512


WRITE_200MIB = (
    "python3 -c \"import os\nb=os.urandom(1<<20)\nf=open('big','wb')\n"
    'for _ in range(200): f.write(b)"'
)


def test_two_byte_append_to_inherited_200mib_file_costs_about_a_block(
    sandbox_data_dir: Path,
) -> None:
    eng = open_btrfs(sandbox_data_dir, 1 << 30)
    try:
        eng.fork(BASE_VM, "p")
        out(eng, "p", WRITE_200MIB)
        eng.fork("p", "c")
        before = volume_used(eng)
        out(eng, "c", "printf xy >> big")
        grown = volume_used(eng) - before
        assert grown < 4 * MIB, grown  # a block plus metadata, not 200 MiB
        assert out(eng, "c", "stat -c %s big") == f"{200 * MIB + 2}\n"
        assert out(eng, "p", "stat -c %s big") == f"{200 * MIB}\n"
    finally:
        eng.close()


UNLINKED_WRITER = """python3 -c "
import errno, os
f = open('hidden', 'wb'); os.unlink('hidden')
b = b'x' * (1 << 20); n = 0
try:
    while n < (512 << 20):
        n += f.write(b); f.flush()
    print('no error', n)
except OSError as e:
    print(errno.errorcode[e.errno], n)
" """


def test_vm_writing_past_its_budget_through_an_unlinked_open_file_gets_edquot(
    btrfs_engine: Engine,
) -> None:
    btrfs_engine.fork(BASE_VM, "v")
    out(btrfs_engine, "v", "true")
    image_before = image_bytes(btrfs_engine)
    r = btrfs_engine.run("v", UNLINKED_WRITER, session="t", timeout=120)
    code, written = r.stdout.decode().split()
    assert code == "EDQUOT", r.stdout
    assert int(written) <= BUDGET
    # The host disk held by the image did not grow past the budget (plus metadata).
    assert image_bytes(btrfs_engine) - image_before < BUDGET + 32 * MIB


def test_budget_holds_against_many_hard_links_and_deep_paths(btrfs_engine: Engine) -> None:
    btrfs_engine.fork(BASE_VM, "v")
    cmd = """python3 -c "
import errno, os
os.makedirs('d', exist_ok=True); os.chdir('d')
for i in range(300):
    os.mkdir('nested-directory-name-' * 2); os.chdir('nested-directory-name-' * 2)
b = b'y' * (1 << 20)
try:
    for i in range(512):
        with open(f'f{i}', 'wb') as f:
            f.write(b)
        os.link(f'f{i}', f'l{i}')
    print('no error')
except OSError as e:
    print(errno.errorcode[e.errno])
" """
    r = btrfs_engine.run("v", cmd, session="t", timeout=120)
    assert r.stdout.decode().split()[:1] == ["EDQUOT"], (r.stdout, r.stderr)


def test_fork_isolation_and_restart_on_btrfs_storage(
    btrfs_engine: Engine, sandbox_data_dir: Path
) -> None:
    btrfs_engine.fork(BASE_VM, "p")
    out(btrfs_engine, "p", "echo one > a; mkdir d; echo in > d/x")
    btrfs_engine.fork("p", "c")
    out(btrfs_engine, "p", "echo parent > a; echo p > onlyp; rm d/x")
    out(btrfs_engine, "c", "echo child > a; echo c > onlyc; rm -r d")
    assert out(btrfs_engine, "p", "cat a; ls") == "parent\na\nd\nonlyp\n"
    assert out(btrfs_engine, "c", "cat a; ls") == "child\na\nonlyc\n"
    btrfs_engine.delete("p")
    assert out(btrfs_engine, "c", "cat a") == "child\n"
    btrfs_engine.close()
    again = Engine(
        sandbox_data_dir, network=False, limits=Limits(disk_quota_bytes=BUDGET), storage="btrfs"
    )
    try:
        assert out(again, "c", "cat a onlyc") == "child\nc\n"
        assert not again.exists("p")
    finally:
        again.close()


def test_chain_past_the_flatten_threshold_keeps_every_file_on_btrfs(btrfs_engine: Engine) -> None:
    vm = "g0"
    btrfs_engine.fork(BASE_VM, vm)
    for i in range(FLATTEN_THRESHOLD + 2):
        out(btrfs_engine, vm, f"echo {i} > f{i}; ln -sf f{i} last; printf {i} >> log")
        child = f"g{i + 1}"
        btrfs_engine.fork(vm, child)
        vm = child
    n = FLATTEN_THRESHOLD + 2
    assert out(btrfs_engine, vm, "cat f0 last; ls f* | wc -l") == f"0\n{n - 1}\n{n}\n"
    assert out(btrfs_engine, vm, "cat log") == "".join(str(i) for i in range(n))


def test_btrfs_storage_without_mkfs_is_a_clear_start_up_error(
    sandbox_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(volume.shutil, "which", lambda name: None)
    with pytest.raises(SandboxUnavailable, match=r"mkfs\.btrfs not found"):
        Engine(sandbox_data_dir, network=False, storage="btrfs")


def test_probe_names_the_missing_btrfs_tool_and_the_directory_storage_fallback(
    sandbox_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(volume.shutil, "which", lambda name: None)
    monkeypatch.setattr("arker.local.sandbox.probe.find_bwrap", lambda: "/usr/bin/bwrap")
    with pytest.raises(SandboxUnavailable) as ei:
        probe(sandbox_data_dir, storage="btrfs")
    assert "--storage btrfs: mkfs.btrfs not found" in str(ei.value)
    assert "--storage dir" in str(ei.value)


def test_serve_accepts_the_storage_flags() -> None:
    from arker.local.cli import build_parser

    args = build_parser().parse_args(["--storage", "btrfs", "--storage-size", "50G"])
    assert (args.storage, args.storage_size) == ("btrfs", 50 << 30)
    default = build_parser().parse_args([])
    assert default.storage == "auto"


def test_deleting_a_vm_gives_its_blocks_back_to_the_volume_and_the_host(
    btrfs_engine: Engine,
) -> None:
    btrfs_engine.fork(BASE_VM, "v")
    before, image_before = volume_used(btrfs_engine), image_bytes(btrfs_engine)
    out(btrfs_engine, "v", "head -c 48M /dev/urandom > blob")
    assert volume_used(btrfs_engine) - before > 40 * MIB
    btrfs_engine.delete("v")
    btrfs_engine.gc(set())
    os.sync()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        volume_used(btrfs_engine) - before > 8 * MIB
        or image_bytes(btrfs_engine) - image_before > 24 * MIB
    ):
        time.sleep(0.2)  # subvolume deletion and discards finish in the background
    assert volume_used(btrfs_engine) - before < 8 * MIB
    assert image_bytes(btrfs_engine) - image_before < 24 * MIB


def test_empty_files_count_against_the_budget_so_the_kernel_stops_an_inode_flood(
    sandbox_data_dir: Path,
) -> None:
    # Simple quotas charge each file's metadata (about 380 bytes an empty file, measured
    # with a 50 MiB budget: EDQUOT after ~138,000 files), so no separate file budget.
    eng = open_btrfs(sandbox_data_dir, 4 * MIB)
    try:
        eng.fork(BASE_VM, "v")
        cmd = """python3 -c "
import errno, os
n = 0
try:
    for i in range(400000):
        if i % 1000 == 0:
            os.mkdir(f'd{i // 1000}')
        os.close(os.open(f'd{i // 1000}/f{i}', os.O_CREAT | os.O_WRONLY)); n += 1
    print('no-error', n)
except OSError as e:
    print(errno.errorcode[e.errno], n)
" """
        r = eng.run("v", cmd, session="t", timeout=300)
        code, made = r.stdout.decode().split()
        assert code in ("EDQUOT", "ENOSPC"), (r.stdout, r.stderr)
        assert int(made) < 100_000
    finally:
        eng.close()


def test_copy_up_of_a_big_base_image_file_is_a_clone(sandbox_data_dir: Path) -> None:
    eng = open_btrfs(sandbox_data_dir, 1 << 30)
    eng.close()
    source = sandbox_data_dir / "engine" / "base" / "host"
    (source / "big").write_bytes(os.urandom(64 * MIB))  # the base changed: copied again
    os.chmod(source / "big", 0o666)
    eng = open_btrfs(sandbox_data_dir, 1 << 30)
    try:
        eng.fork(BASE_VM, "v")
        out(eng, "v", "true")
        before = volume_used(eng)
        out(eng, "v", "printf xy >> /big")
        assert volume_used(eng) - before < 8 * MIB  # a block plus metadata, not 64 MiB
        assert out(eng, "v", "stat -c %s /big") == f"{64 * MIB + 2}\n"
        assert (source / "big").stat().st_size == 64 * MIB
    finally:
        eng.close()


MANY_UNLINKED_WRITER = """python3 -c "
import errno, os
held = []; b = b'x' * (1 << 20); n = 0
try:
    while n < (512 << 20):
        f = open('hidden', 'wb'); os.unlink('hidden'); held.append(f)
        for _ in range(4):  # 4 MiB a file: under the per-file size cap
            n += f.write(b); f.flush()
    print('no error', n)
except OSError as e:
    print(errno.errorcode[e.errno], n)
" """


def test_the_kernel_limit_counts_the_layers_a_vm_inherited(btrfs_engine: Engine) -> None:
    btrfs_engine.fork(BASE_VM, "p")
    out(btrfs_engine, "p", "head -c 40M /dev/urandom > inherited")
    btrfs_engine.fork("p", "c")
    r = btrfs_engine.run("c", MANY_UNLINKED_WRITER, session="t", timeout=120)
    code, written = r.stdout.decode().split()
    assert code == "EDQUOT", r.stdout
    # What the 40 MiB it inherited leave of the 64 MiB budget (plus 1 MiB of slack).
    assert 16 * MIB < int(written) <= BUDGET - 40 * MIB + 2 * MIB
    # The parent's new upper is held the same way.
    r = btrfs_engine.run("p", MANY_UNLINKED_WRITER, session="t", timeout=120)
    code, written = r.stdout.decode().split()
    assert code == "EDQUOT" and int(written) <= BUDGET - 40 * MIB + 2 * MIB


def test_flatten_on_btrfs_clones_a_hard_linked_file_once_for_all_its_names(
    btrfs_engine: Engine, sandbox_data_dir: Path
) -> None:
    vm = "h0"
    btrfs_engine.fork(BASE_VM, vm)
    out(
        btrfs_engine,
        vm,
        "mkdir L; head -c 64K /dev/urandom > L/f; for i in $(seq 300); do ln L/f L/n$i; done",
    )
    for i in range(FLATTEN_THRESHOLD + 1):  # forks past the threshold: the chain is merged
        out(btrfs_engine, vm, f"echo {i} > g")
        child = f"h{i + 1}"
        btrfs_engine.fork(vm, child)
        vm = child
    links, same = out(btrfs_engine, vm, "stat -c %h L/f; cmp L/f L/n300 && echo same").split()
    # 301 names of one inode; a later merge of the merged layer (merged ahead in the
    # background, merge_ahead.py, maybe still running) links more names to that inode.
    assert int(links) >= 301 and same == "same", links
    store = sandbox_data_dir / "engine" / "btrfs"
    layers = json.loads((store / "vms" / f"{vm}.json").read_text())["layers"]
    merged = [store / "layers" / lid / "root" / "home" / "user" / "L" for lid in layers]
    inodes = {os.lstat(d / n).st_ino for d in merged if d.is_dir() for n in os.listdir(d)}
    assert len(inodes) == 1, f"{len(inodes)} inodes for one hard-linked file"
