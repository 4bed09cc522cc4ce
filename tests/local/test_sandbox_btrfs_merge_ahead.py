"""Chain merges made ahead of the fork that crosses the flatten threshold (both storages)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from arker.local.sandbox import Engine, Limits, volume
from arker.local.sandbox.layers import FLATTEN_THRESHOLD
from arker.local.sandbox.merge_ahead import MergeAhead

from .test_sandbox_btrfs import BASE_VM, out

BASE = Path("/base")


def wait_for(cond: Callable[[], object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def ids(n: int) -> list[str]:
    return [f"{i:08x}" for i in range(n)]


class Merges:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.unpinned: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def merge(self, layers: list[str], base: Path) -> str:
        self.gate.wait(10)
        self.calls.append(layers)
        return f"m{len(self.calls):07d}"


def test_a_chain_half_the_threshold_long_is_merged_in_the_background() -> None:
    m = Merges()
    ahead = MergeAhead(m.merge, m.unpinned.append, 32)
    try:
        ahead.consider(ids(15), BASE)
        ahead.consider(ids(16), BASE)
        ahead.consider(ids(17), BASE)  # covered by the queued merge of the first 16
        wait_for(lambda: ahead.shorten(ids(33), BASE))
        assert m.calls == [ids(16)]
        assert ahead.shorten(ids(33), BASE) == ["m0000001", *ids(33)[16:]]
        assert ahead.shorten(ids(33), Path("/other")) is None  # another base
        assert ahead.shorten(["ffffffff", *ids(32)], BASE) is None  # another prefix
    finally:
        ahead.close()


def test_a_merge_that_would_not_shorten_the_chain_enough_is_not_used() -> None:
    m = Merges()
    ahead = MergeAhead(m.merge, m.unpinned.append, 32)
    try:
        ahead.consider(ids(16), BASE)
        wait_for(lambda: m.calls)
        time.sleep(0.05)
        assert ahead.shorten(ids(60), BASE) is None  # 1 + 44 layers: merge inline
    finally:
        ahead.close()


def test_merges_whose_prefix_is_gone_from_disk_are_unpinned() -> None:
    m = Merges()
    ahead = MergeAhead(m.merge, m.unpinned.append, 32)
    try:
        ahead.consider(ids(16), BASE)
        wait_for(lambda: ahead.shorten(ids(33), BASE))
        ahead.drop_stale(set(ids(16)))
        assert m.unpinned == []
        ahead.drop_stale(set(ids(15)))
        assert m.unpinned == ["m0000001"] and ahead.shorten(ids(33), BASE) is None
    finally:
        ahead.close()


@pytest.mark.parametrize("storage", ["dir", "btrfs"])
def test_the_fork_crossing_the_threshold_stacks_the_layer_merged_ahead(
    sandbox_data_dir: Path, storage: str
) -> None:
    if storage == "btrfs" and volume.btrfs_unavailable():
        pytest.skip(f"btrfs storage unavailable: {volume.btrfs_unavailable()}")
    eng = Engine(
        sandbox_data_dir, network=False, limits=Limits(), storage=storage, storage_size=2 << 30
    )
    try:
        eng.ensure_base(BASE_VM)
        eng.fork(BASE_VM, "v0")
        vm = "v0"
        ahead = eng._store._ahead
        for i in range(FLATTEN_THRESHOLD + 1):
            out(eng, vm, f"echo {i} > f{i % 4}; echo {i} >> log; rm -f f{(i + 1) % 4}")
            if i == FLATTEN_THRESHOLD - 2:  # let the merge ahead finish (no race in the test)
                wait_for(lambda: ahead._ready)
            eng.fork(vm, f"v{i + 1}")
            vm = f"v{i + 1}"
        (merged,) = ahead._ready.values()
        layers = eng._vms[vm].meta.layers
        assert layers[0] == merged and len(layers) <= FLATTEN_THRESHOLD // 2 + 2
        assert (
            out(eng, vm, "wc -l < log; ls f*; cat f2")
            == f"{FLATTEN_THRESHOLD + 1}\nf0\nf2\nf3\n30\n"
        )
        eng.gc({f"v{i}" for i in range(FLATTEN_THRESHOLD + 2)})
        assert (eng._store.layer_path(merged)).is_dir()  # pinned, and in use
    finally:
        eng.close()
