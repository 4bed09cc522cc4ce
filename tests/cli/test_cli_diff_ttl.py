"""`arker diff VM` and `arker fork --ttl` as a subprocess against a real `arker serve`."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime, timezone

import pytest

from arker import Arker, NotFoundError
from tests.cli.kit import Target, one_error_line, run_arker

pytestmark = pytest.mark.e2e

VM = tuple[str, str]


def _sh(sdk: Arker, vm_id: str, command: str) -> None:
    result = sdk.vm(vm_id).run(command)
    assert result.exit_code == 0, result.stderr


def test_diff_prints_git_status_lines_and_json(target: Target, sdk: Arker, vm: VM) -> None:
    _sh(sdk, vm[0], "cd ~ && echo a > edit && echo b > gone")
    child = sdk.vms.fork(vm[0])
    try:
        _sh(sdk, child.vm_id, "cd ~ && echo new > added && echo A > edit && rm gone")
        done = run_arker(target, "diff", child.vm_id)
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout.decode().splitlines() == [
            "A  /home/user/added  (4 B)",
            "M  /home/user/edit  (2 B)",
            "D  /home/user/gone",
        ]
        as_json = json.loads(run_arker(target, "diff", child.vm_id, "--json").stdout)
        assert [e["path"] for e in as_json["added"]] == ["/home/user/added"]
        assert [e["path"] for e in as_json["modified"]] == ["/home/user/edit"]
        assert [e["path"] for e in as_json["deleted"]] == ["/home/user/gone"]
        scoped = run_arker(target, "diff", child.vm_id, "--path", "/home/user/nothing-here")
        assert scoped.returncode == 0 and scoped.stdout == b""
    finally:
        sdk.vms.delete(child.vm_id)


def test_diff_with_a_bad_path_is_one_error_line(target: Target, vm: VM) -> None:
    done = run_arker(target, "diff", vm[0], "--path", "/home/../etc")
    assert done.returncode != 0
    assert "bad_request" in one_error_line(done)


def test_fork_ttl_sets_the_expiry_and_the_server_deletes_the_vm(target: Target, sdk: Arker) -> None:
    done = run_arker(target, "fork", "arkuntu", "--ttl", "2", "--json")
    assert done.returncode == 0, done.stderr.decode()
    made = json.loads(done.stdout)
    expires = datetime.fromisoformat(made["expires_at"].replace("Z", "+00:00"))
    assert expires > datetime.now(timezone.utc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            sdk.vm(made["vm_id"]).run("true")
        except NotFoundError:
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(NotFoundError):
            sdk.vms.delete(made["vm_id"])
        raise AssertionError("the VM outlived its TTL")


@pytest.mark.parametrize("ttl", ["0", "-1", "abc"])
def test_fork_with_a_bad_ttl_fails_and_makes_nothing(target: Target, sdk: Arker, ttl: str) -> None:
    before = sdk.vms.list().total
    done = run_arker(target, "fork", "arkuntu", "--ttl", ttl)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr.decode()
    assert sdk.vms.list().total == before
