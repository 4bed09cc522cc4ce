"""btrfs as the default storage (``auto``), the fallback, old data dirs, a growing image."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from arker.local.sandbox import Engine, Limits, storage, volume

BASE_VM = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"
MIB = 1 << 20


def needs_btrfs() -> None:
    reason = volume.btrfs_unavailable()
    if reason:
        pytest.skip(f"btrfs storage unavailable: {reason}")


def out(engine: Engine, vm: str, cmd: str) -> str:
    r = engine.run(vm, cmd, session="t", timeout=120)
    assert r.exit_code == 0, (cmd, r.stderr)
    return r.stdout.decode()


def open_engine(data_dir: Path, kind: str) -> Engine:
    eng = Engine(data_dir, network=False, limits=Limits(disk_quota_bytes=64 * MIB), storage=kind)
    eng.ensure_base(BASE_VM)
    return eng


def test_a_new_data_dir_gets_btrfs_storage_by_default_and_says_so(
    sandbox_data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    needs_btrfs()
    caplog.set_level(logging.INFO, logger="arker.local")
    eng = open_engine(sandbox_data_dir, "auto")
    try:
        eng.fork(BASE_VM, "v")
        out(eng, "v", "echo hi > f")
        assert (sandbox_data_dir / "storage.btrfs").is_file()
        assert not list((sandbox_data_dir / "engine" / "vms").glob("*.json"))
        notes = [r.getMessage() for r in caplog.records if "storage:" in r.getMessage()]
        assert len(notes) == 1 and notes[0].startswith("storage: btrfs"), notes
    finally:
        eng.close()


def test_data_dir_with_vms_on_the_old_directory_layout_keeps_them_under_auto(
    sandbox_data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The layout every data dir had before btrfs storage existed.
    old = open_engine(sandbox_data_dir, "dir")
    old.fork(BASE_VM, "v")
    out(old, "v", "echo kept > f; mkdir d; echo deep > d/g")
    old.fork("v", "c")
    old.close()
    assert (sandbox_data_dir / "engine" / "layers").is_dir()

    caplog.set_level(logging.INFO, logger="arker.local")
    eng = open_engine(sandbox_data_dir, "auto")
    try:
        assert out(eng, "v", "cat f d/g") == "kept\ndeep\n"
        assert out(eng, "c", "cat f") == "kept\n"
        eng.fork("c", "c2")
        out(eng, "c2", "echo new >> f")
        assert out(eng, "c", "cat f") == "kept\n"
        assert not (sandbox_data_dir / "storage.btrfs").exists()
        notes = [r.getMessage() for r in caplog.records if "storage:" in r.getMessage()]
        assert notes and "stay on it" in notes[0], notes
    finally:
        eng.close()


def test_auto_on_a_host_without_btrfs_falls_back_to_directories_with_the_reason(
    sandbox_data_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(storage, "btrfs_unavailable", lambda: "no loop devices (test)")
    caplog.set_level(logging.INFO, logger="arker.local")
    eng = open_engine(sandbox_data_dir, "auto")
    try:
        eng.fork(BASE_VM, "v")
        assert out(eng, "v", "echo x > f; cat f") == "x\n"
        assert not (sandbox_data_dir / "storage.btrfs").exists()
        notes = [r.getMessage() for r in caplog.records if "storage:" in r.getMessage()]
        assert len(notes) == 1 and "fallback (no loop devices (test))" in notes[0], notes
    finally:
        eng.close()


def test_a_data_dir_with_an_image_stays_on_btrfs(sandbox_data_dir: Path) -> None:
    needs_btrfs()
    eng = open_engine(sandbox_data_dir, "btrfs")
    eng.fork(BASE_VM, "v")
    out(eng, "v", "echo in-image > f")
    eng.close()
    again = open_engine(sandbox_data_dir, "auto")
    try:
        assert out(again, "v", "cat f") == "in-image\n"
    finally:
        again.close()


def test_storage_names_are_checked_and_default_means_directories() -> None:
    assert storage.Storage("default").kind == "dir"
    assert storage.Storage().kind == "auto"
    with pytest.raises(ValueError, match="unknown storage"):
        storage.Storage("zfs")


def test_the_image_starts_small_and_grows_as_it_fills_up_to_its_size(tmp_path: Path) -> None:
    needs_btrfs()
    image = tmp_path / "img.btrfs"
    vol = volume.BtrfsVolume(image, tmp_path / "mnt", 1 << 30, initial=256 * MIB, watch=False)
    try:
        assert image.stat().st_size == 256 * MIB
        assert not vol.grow_if_needed()  # mostly free: no growth
        chunk = os.urandom(MIB)
        written = 0
        for i in range(700):  # 700 MiB: past the first size, under the limit
            with open(vol.root / f"f{i}", "wb") as fh:
                fh.write(chunk)
            written += MIB
            if i % 32 == 0:
                vol.grow_if_needed()
        assert image.stat().st_size == 1 << 30
        st = os.statvfs(vol.root)
        assert st.f_blocks * st.f_frsize > 900 * MIB  # btrfs was resized, not just the file
        assert not vol.grow_if_needed()  # at its limit
        assert image.stat().st_size == 1 << 30
    finally:
        vol.close()


def test_the_watcher_grows_the_image_of_a_mounted_volume_by_itself(tmp_path: Path) -> None:
    needs_btrfs()
    image = tmp_path / "img.btrfs"
    vol = volume.BtrfsVolume(image, tmp_path / "mnt", 1 << 30, initial=256 * MIB)
    try:
        with open(vol.root / "fill", "wb") as fh:
            for _ in range(160):  # past half of the 256 MiB image
                fh.write(os.urandom(MIB))
            os.fsync(fh.fileno())
        deadline = time.monotonic() + 30
        while image.stat().st_size == 256 * MIB and time.monotonic() < deadline:
            time.sleep(0.1)
        assert image.stat().st_size == 512 * MIB
    finally:
        vol.close()
