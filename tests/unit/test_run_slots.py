"""The fair shares of runs (`arker.local.run_slots`): which share refuses, and when."""

from __future__ import annotations

import pytest

from arker.local.errors import ApiError
from arker.local.run_slots import RunSlots


def _refusal(slots: RunSlots, org: str, vm: str) -> tuple[int, str, str]:
    with pytest.raises(ApiError) as info:
        slots.acquire(org, vm)
    return info.value.status, info.value.code, info.value.headers["Retry-After"]


def test_an_org_past_its_share_is_refused_with_quota_exceeded() -> None:
    slots = RunSlots(per_org=2, per_vm=5, total=10)
    slots.acquire("a", "v1")
    slots.acquire("a", "v2")
    assert _refusal(slots, "a", "v3") == (429, "quota_exceeded", "1")
    slots.acquire("b", "v4")  # another org keeps its own share


def test_a_vm_past_its_share_is_refused_while_its_org_has_room() -> None:
    slots = RunSlots(per_org=5, per_vm=1, total=10)
    slots.acquire("a", "v1")
    assert _refusal(slots, "a", "v1")[:2] == (429, "quota_exceeded")
    slots.acquire("a", "v2")


def test_a_full_server_is_unavailable() -> None:
    slots = RunSlots(per_org=5, per_vm=5, total=2)
    slots.acquire("a", "v1")
    slots.acquire("b", "v2")
    assert _refusal(slots, "c", "v3")[:2] == (503, "unavailable")


def test_a_released_slot_is_taken_again_and_released_once() -> None:
    slots = RunSlots(per_org=1, per_vm=1, total=1)
    with slots.acquire("a", "v1") as slot:
        assert slots.in_progress("a") == 1
    slot.release()  # a second release gives back nothing more
    assert slots.in_progress() == 0
    slots.acquire("a", "v1")
    assert _refusal(slots, "a", "v1")[1] == "quota_exceeded"


def test_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError):
        RunSlots(per_org=0, per_vm=1, total=1)


def test_another_org_naming_a_vm_does_not_fill_its_owners_share_of_it() -> None:
    slots = RunSlots(per_org=5, per_vm=1, total=10)
    slots.acquire("intruder", "victims-vm")  # refused later: not its VM
    slots.acquire("owner", "victims-vm")
