"""The fork-diff and TTL extensions' wire shapes, against a mocked server."""

from __future__ import annotations

import json

import pytest
import responses

from arker import Arker, BadRequestError, ForkDiff, NotFoundError, UnsupportedError
from tests.conftest import BASE, CONTROL

VM = "01ARZ3NDEKTSV4RRFFQ69G5FAV_loc0"
CREATED = "2026-01-02T03:04:05Z"
DIFF_OK = {
    "ok": True,
    "path": "/home/user/p",
    "added": [{"path": "/home/user/p/a", "size": 3, "mode": 420, "sha256": "ab" * 32}],
    "modified": [{"path": "/home/user/p/m", "size": 1, "mode": 493, "sha256": None}],
    "deleted": [{"path": "/home/user/p/d", "size": 9, "mode": 420}],
    "truncated": False,
    "future_field": 1,
}


def test_diff_sends_the_path_and_reads_the_three_lists(
    client: Arker, rsps: responses.RequestsMock
) -> None:
    rsps.get(f"{BASE}/api/v1/vms/{VM}/diff", json=DIFF_OK)
    d = client.vms.diff(VM, path="/home/user/p")
    assert isinstance(d, ForkDiff) and d
    assert rsps.calls[0].request.params == {"path": "/home/user/p"}
    assert [e.path for e in d.added] == ["/home/user/p/a"]
    assert d.added[0].sha256 == "ab" * 32 and d.modified[0].mode == 0o755
    assert d.deleted[0].size == 9 and d.deleted[0].sha256 is None


def test_diff_on_a_server_without_the_route_is_unsupported(
    client: Arker, rsps: responses.RequestsMock
) -> None:
    rsps.get(
        f"{BASE}/api/v1/vms/{VM}/diff",
        status=404,
        json={"ok": False, "error": {"code": "not_found", "message": "Not Found"}},
    )
    with pytest.raises(UnsupportedError) as ei:
        client.vms.diff(VM)
    assert ei.value.code == "unsupported_operation"


def test_diff_of_a_missing_vm_stays_not_found(client: Arker, rsps: responses.RequestsMock) -> None:
    rsps.get(
        f"{BASE}/api/v1/vms/{VM}/diff",
        status=404,
        json={"ok": False, "error": {"code": "not_found", "message": f"vm not found: {VM}"}},
    )
    with pytest.raises(NotFoundError) as ei:
        client.vms.diff(VM)
    assert not isinstance(ei.value, UnsupportedError)


def test_a_relative_diff_path_is_refused_before_sending(
    client: Arker, rsps: responses.RequestsMock
) -> None:
    with pytest.raises(BadRequestError) as ei:
        client.vms.diff(VM, path="home/user")
    assert ei.value.status == 0 and not rsps.calls


def test_fork_sends_the_ttl_and_reads_expires_at(
    client: Arker, rsps: responses.RequestsMock
) -> None:
    rsps.post(
        f"{BASE}/api/v1/vms/{VM}/fork",
        json={"ok": True, "vm_id": VM, "created_at": CREATED, "expires_at": CREATED},
    )
    rsps.delete(f"{BASE}/api/v1/vms/{VM}", json={"ok": True})
    with client.vms.fork(VM, ttl=60) as made:
        assert made.expires_at is not None and made.expires_at.tzinfo is not None
    assert json.loads(rsps.calls[0].request.body or b"{}")["ttl"] == 60
    assert rsps.calls[1].request.method == "DELETE"  # the context manager deleted it


def test_fork_without_ttl_sends_none(client: Arker, rsps: responses.RequestsMock) -> None:
    rsps.post(f"{BASE}/api/v1/vms/{VM}/fork", json={"ok": True, "vm_id": VM})
    client.vms.fork(VM)
    assert json.loads(rsps.calls[0].request.body or b"{}").get("ttl") is None


@pytest.mark.parametrize("ttl", [0, -5, 10**12, True, 2.5, "60"])
def test_bad_ttls_are_refused_before_sending(
    client: Arker, rsps: responses.RequestsMock, ttl: object
) -> None:
    with pytest.raises(BadRequestError) as ei:
        client.vms.fork(VM, ttl=ttl)  # type: ignore[arg-type]
    assert ei.value.status == 0
    with pytest.raises(BadRequestError):
        client.vms.touch(VM, ttl=ttl)  # type: ignore[arg-type]
    assert not rsps.calls


def test_touch_posts_the_ttl_and_returns_the_expiry(
    client: Arker, rsps: responses.RequestsMock
) -> None:
    rsps.post(
        f"{BASE}/api/v1/vms/{VM}/touch", json={"ok": True, "vm_id": VM, "expires_at": CREATED}
    )
    when = client.vms.touch(VM, ttl=120)
    assert when.isoformat() == "2026-01-02T03:04:05+00:00"
    assert json.loads(rsps.calls[0].request.body or b"{}") == {"ttl": 120}


def test_list_shows_expires_at(client: Arker, rsps: responses.RequestsMock) -> None:
    item = {"vm_id": VM, "base_image": "b", "region": "r", "created_at": CREATED}
    rsps.get(
        f"{CONTROL}/api/v1/vms/list",
        json={"ok": True, "items": [item, {**item, "expires_at": CREATED}], "total": 2},
    )
    page = client.vms.list()
    assert page.items[0].expires_at is None and page.items[1].expires_at is not None
