"""The VM uid table and the idmapping that swaps two uids (no sandbox needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from arker.local.sandbox.errors import SandboxError
from arker.local.sandbox.idmap import swap_mapping
from arker.local.sandbox.vm_uids import VmUids


def test_swap_mapping_swaps_two_uids_and_keeps_every_other() -> None:
    rows = [
        tuple(map(int, line.split())) for line in swap_mapping(60999, 2_000_000_000).splitlines()
    ]

    def mapped(uid: int) -> int:
        hits = [out + uid - inside for inside, out, count in rows if inside <= uid < inside + count]
        assert len(hits) == 1, (uid, hits)
        return hits[0]

    assert mapped(60999) == 2_000_000_000 and mapped(2_000_000_000) == 60999
    for uid in (0, 1, 1000, 60998, 61000, 1_999_999_999, 2_000_000_001, 0xFFFFFFFE):
        assert mapped(uid) == uid
    assert len(rows) <= 340  # the kernel's limit of lines per map


@pytest.mark.parametrize(("canonical", "uid"), [(5, 5), (0, 7), (7, 0xFFFFFFFF)])
def test_swap_mapping_refuses_what_cannot_be_swapped(canonical: int, uid: int) -> None:
    with pytest.raises(ValueError):
        swap_mapping(canonical, uid)


def test_uids_are_taken_lowest_first_kept_and_given_back(tmp_path: Path) -> None:
    table = VmUids(tmp_path / "uids", 5000, 3, canonical=60999)
    assert [table.uid_of(v) for v in ("a", "b", "a", "c")] == [5000, 5001, 5000, 5002]
    with pytest.raises(SandboxError) as err:
        table.uid_of("d")
    assert err.value.code == "unavailable"
    table.release("b")
    assert table.uid_of("d") == 5001
    again = VmUids(tmp_path / "uids", 5000, 3, canonical=60999)  # after a restart
    assert [again.uid_of(v) for v in ("a", "c", "d")] == [5000, 5002, 5001]
    again.keep_only({"a"})
    assert again.uid_of("e") == 5001


def test_a_range_holding_the_canonical_uid_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        VmUids(tmp_path / "uids", 60000, 1000, canonical=60999)
