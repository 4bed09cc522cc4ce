"""Fork diffs and VM TTLs through the SDK against a real `arker serve`."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from arker import ARKUNTU_ID, Arker, BadRequestError, ForkDiff, NotFoundError
from arker.testing import ArkerServer, start_server

pytestmark = pytest.mark.e2e

HOME = "/home/user"


def sh(client: Arker, vm_id: str, command: str) -> None:
    result = client.vm(vm_id).run(command)
    assert result.exit_code == 0, result.stderr


def changes(d: ForkDiff) -> tuple[list[str], list[str], list[str]]:
    return (
        [e.path for e in d.added],
        [e.path for e in d.modified],
        [e.path for e in d.deleted],
    )


@pytest.fixture
def parent(arker_client: Arker) -> Iterator[str]:
    with arker_client.vms.fork("arkuntu") as vm:
        sh(
            arker_client,
            vm.vm_id,
            "cd ~ && echo a > keep && echo b > edit && echo c > gone && echo d > back"
            " && echo e > mode && chmod 644 mode && mkdir -p dir/sub && echo f > dir/sub/f",
        )
        yield vm.vm_id


def test_diff_reports_added_modified_deleted_and_mode_changes(
    arker_client: Arker, parent: str
) -> None:
    with arker_client.vms.fork(parent) as child:
        sh(
            arker_client,
            child.vm_id,
            "cd ~ && echo new > added && echo B > edit && rm gone && chmod 700 mode"
            " && echo x > back && echo d > back && touch keep && rm -r dir",
        )
        sh(arker_client, parent, "cd ~ && echo later > parent_later")  # not the child's
        d = arker_client.vms.diff(child.vm_id)
    assert changes(d) == (
        [f"{HOME}/added"],
        [f"{HOME}/edit", f"{HOME}/mode"],
        [f"{HOME}/dir/sub/f", f"{HOME}/gone"],
    )
    assert d.added[0].sha256 == hashlib.sha256(b"new\n").hexdigest()
    assert d.added[0].size == 4
    assert d.modified[0].sha256 == hashlib.sha256(b"B\n").hexdigest()
    assert d.modified[1].mode == 0o700
    assert d.deleted[1].sha256 is None and not d.truncated and d.path == HOME


def test_diff_of_nested_forks_is_relative_to_the_direct_parent(
    arker_client: Arker, parent: str
) -> None:
    with arker_client.vms.fork(parent) as child:
        sh(arker_client, child.vm_id, "cd ~ && echo c > from_child")
        with arker_client.vms.fork(child.vm_id) as grandchild:
            sh(arker_client, grandchild.vm_id, "cd ~ && echo g > from_grandchild && rm keep")
            assert changes(arker_client.vms.diff(grandchild.vm_id)) == (
                [f"{HOME}/from_grandchild"],
                [],
                [f"{HOME}/keep"],
            )
        assert changes(arker_client.vms.diff(child.vm_id)) == ([f"{HOME}/from_child"], [], [])


def test_diff_of_deep_paths_and_forged_marker_names(arker_client: Arker, parent: str) -> None:
    deep = "/".join(["x"] * 200)
    with arker_client.vms.fork(parent) as child:
        sh(
            arker_client,
            child.vm_id,
            f"cd ~ && mkdir -p {deep} && echo z > {deep}/z"
            " && touch .wh.keep .wh..wh..opq dir/.wh..wh..opq && ln -s /etc/passwd link",
        )
        d = arker_client.vms.diff(child.vm_id)
        scoped = arker_client.vms.diff(child.vm_id, path=f"{HOME}/dir")
    assert changes(d) == (
        sorted(
            [
                f"{HOME}/{deep}/z",
                f"{HOME}/.wh.keep",
                f"{HOME}/.wh..wh..opq",
                f"{HOME}/dir/.wh..wh..opq",
                f"{HOME}/link",
            ]
        ),
        [],
        [],
    )
    assert {e.path: e.sha256 for e in d.added}[f"{HOME}/link"] is None
    assert changes(scoped) == ([f"{HOME}/dir/.wh..wh..opq"], [], [])


def test_diff_bad_input_is_a_clear_error(arker_client: Arker, parent: str) -> None:
    with pytest.raises(BadRequestError):
        arker_client.vms.diff(parent, path="relative")
    with pytest.raises(BadRequestError) as ei:
        arker_client.vms.diff(parent, path="/home/../etc")
    assert ei.value.status == 400
    with pytest.raises(NotFoundError):
        arker_client.vms.diff(parent + "x")
    with pytest.raises(NotFoundError):
        arker_client.vms.diff("01ARZ3NDEKTSV4RRFFQ69G5FAV_loc0")


def test_ttl_expiry_touch_and_the_context_manager(arker_client: Arker) -> None:
    short = arker_client.vms.fork("arkuntu", ttl=1)
    assert short.expires_at is not None and short.expires_at > datetime.now(timezone.utc)
    kept = arker_client.vms.fork("arkuntu", ttl=2)
    new_expiry = arker_client.vms.touch(kept.vm_id, ttl=3600)
    assert new_expiry > kept.expires_at  # type: ignore[operator]
    listed = {v.vm_id: v for v in arker_client.vms.list_all()}
    assert listed[kept.vm_id].expires_at == new_expiry
    _wait_gone(arker_client, short.vm_id)
    sh(arker_client, kept.vm_id, "true")  # touched: not reaped
    with pytest.raises(NotFoundError):
        arker_client.vms.touch(short.vm_id, ttl=10)
    with arker_client.vms.fork("arkuntu") as scoped:
        assert scoped.expires_at is None
    with pytest.raises(NotFoundError):
        arker_client.vms.delete(scoped.vm_id)
    handle = arker_client.vm("arkuntu").fork(ttl=1)
    _wait_gone(arker_client, handle.id)
    arker_client.vms.delete(kept.vm_id)


def test_bad_ttls_are_refused_before_anything_happens(arker_client: Arker) -> None:
    before = arker_client.vms.list().total
    for ttl in (0, -1, 10**12, True, 1.5):
        with pytest.raises(BadRequestError):
            arker_client.vms.fork("arkuntu", ttl=ttl)  # type: ignore[arg-type]
    assert arker_client.vms.list().total == before


def _wait_gone(client: Arker, vm_id: str, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            client.vm(vm_id).run("true")
        except NotFoundError:
            return
        time.sleep(0.2)
    raise AssertionError(f"{vm_id} was not reaped")


@pytest.fixture
def ttl_server(tmp_path: Path) -> Iterator[ArkerServer]:
    server = start_server(tmp_path / "data", extra_args=("--default-ttl", "3"))
    try:
        yield server
    finally:
        server.stop()


def test_default_ttl_and_expiry_across_a_restart(ttl_server: ArkerServer) -> None:
    def client() -> Arker:
        return Arker(
            ttl_server.api_key, base_url=ttl_server.base_url, control_url=ttl_server.control_url
        )

    with client() as c:
        defaulted = c.vms.fork("arkuntu")
        assert defaulted.expires_at is not None
        explicit = c.vms.fork("arkuntu", ttl=3600)
        ttl_server.stop()
    time.sleep(4)  # the default TTL runs out while the server is down
    ttl_server.start()
    with client() as c:
        _wait_gone(c, defaulted.vm_id)
        sh(c, explicit.vm_id, "true")
        assert c.vms.list().items[0].expires_at is not None


def test_the_server_answers_bad_ttls_with_400_and_forks_nothing(
    arker_server: ArkerServer, arker_client: Arker
) -> None:
    from tests.kit.server import Api

    api = Api(arker_server, arker_server.api_key)
    vm = arker_client.vms.fork("arkuntu")
    before = arker_client.vms.list().total
    for ttl in (0, -1, "60", 1.5, True, 10**30):
        body = {"is_public": False, "ttl": ttl}
        r = api.post(f"/api/v1/vms/{ARKUNTU_ID}/fork", json=body)
        assert r.status_code == 400, (ttl, r.text)
        assert r.json()["error"]["code"] == "bad_request"
        t = api.post(f"/api/v1/vms/{vm.vm_id}/touch", json={"ttl": ttl})
        assert t.status_code == 400, (ttl, t.text)
    assert api.post(f"/api/v1/vms/{vm.vm_id}/touch", json={}).status_code == 400
    assert arker_client.vms.list().total == before
    arker_client.vms.delete(vm.vm_id)


def test_odd_diff_paths_answer_cleanly(arker_client: Arker, parent: str) -> None:
    with arker_client.vms.fork(parent) as child:
        for path in ("/" + "n" * 300, "/home/user/" + "a/" * 3000, "/home/user/%00", "/proc"):
            try:
                d = arker_client.vms.diff(child.vm_id, path=path)
            except BadRequestError:
                continue
            assert not d.added and not d.modified and not d.deleted


def test_diff_of_a_fork_taken_while_the_parent_runs_a_command(
    arker_client: Arker, parent: str
) -> None:
    handle = arker_client.runs.start(parent, "echo busy > ~/during; sleep 60")
    try:
        deadline = time.monotonic() + 30
        probe = arker_client.vm(parent)
        while probe.run("cat ~/during", session_id="probe").stdout != b"busy\n":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        with arker_client.vms.fork(parent) as child:  # the parent's upper is copied, frozen
            sh(arker_client, child.vm_id, "cd ~ && echo c > mine && rm during")
            assert changes(arker_client.vms.diff(child.vm_id)) == (
                [f"{HOME}/mine"],
                [],
                [f"{HOME}/during"],
            )
    finally:
        handle.cancel()
