"""What a VM can learn about the host from its mount table: no host path."""

from __future__ import annotations

from pathlib import Path

import pytest

from arker.local.sandbox import Engine, volume

BASE_VM = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"


@pytest.mark.parametrize("storage", ["dir", "btrfs"])
def test_a_vms_mount_table_names_no_host_path(sandbox_data_dir: Path, storage: str) -> None:
    if storage == "btrfs" and volume.btrfs_unavailable():
        pytest.skip(f"btrfs storage unavailable: {volume.btrfs_unavailable()}")
    eng = Engine(sandbox_data_dir, network=False, storage=storage)
    try:
        eng.ensure_base(BASE_VM)
        eng.fork(BASE_VM, "p")
        assert eng.run("p", "echo a > f", session="t", timeout=60).exit_code == 0
        eng.fork("p", "c")  # a frozen layer below the upper, too
        r = eng.run(
            "c", "cat /proc/self/mountinfo /proc/mounts /proc/1/mountinfo", session="t", timeout=60
        )
        assert r.exit_code == 0, r.stderr
        table = r.stdout.decode()
        assert "lowerdir=" in table and "workdir=" in table  # the overlay's options are there
        data_dir = str(sandbox_data_dir.resolve())
        for secret in (data_dir, str(sandbox_data_dir), "/run/arker-sandbox", "engine/"):
            assert secret not in table, f"{secret!r} in the VM's mount table:\n{table}"
    finally:
        eng.close()
