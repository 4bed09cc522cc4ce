"""Commands against a stub client: what they ask the SDK and what they print, for SDK
methods that may or may not be there (fork TTLs, fork diffs)."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel

from arker.cli.context import CliError, Context
from arker.cli.vms import diff_vm, fork_vm

VM_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV_loc0"


def _context(vms: Any, **flags: Any) -> Context:
    ctx = Context(argparse.Namespace(json=flags.pop("json", False), **flags))
    ctx._client = SimpleNamespace(vms=vms)  # type: ignore[assignment]
    return ctx


class VmsWithTtl:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def fork(self, source: str, *, name: str | None = None, ttl: int | None = None) -> Any:
        self.calls.append({"source": source, "name": name, "ttl": ttl})
        return SimpleNamespace(vm_id=VM_ID, name=name)


class VmsWithoutTtl:
    def fork(self, source: str, *, name: str | None = None) -> Any:
        raise AssertionError("must not be called")


def test_fork_passes_the_ttl_to_an_sdk_that_has_it(capsys: pytest.CaptureFixture[str]) -> None:
    vms = VmsWithTtl()
    fork_vm(_context(vms), argparse.Namespace(source="arkuntu", name="t", ttl=60))
    assert vms.calls == [{"source": "arkuntu", "name": "t", "ttl": 60}]
    assert capsys.readouterr().out == f"{VM_ID} (t)\n"


def test_fork_ttl_without_sdk_support_is_a_clear_error() -> None:
    with pytest.raises(CliError) as err:
        fork_vm(_context(VmsWithoutTtl()), argparse.Namespace(source="a", name=None, ttl=60))
    assert err.value.code == "unsupported_operation"


def test_fork_without_ttl_does_not_send_one() -> None:
    vms = VmsWithTtl()
    fork_vm(_context(vms), argparse.Namespace(source="a", name=None, ttl=None))
    assert vms.calls == [{"source": "a", "name": None, "ttl": None}]


class VmsWithDiff:
    def diff(self, vm_id: str, *, path: str) -> Any:
        assert (vm_id, path) == (VM_ID, "/home/user/p")
        entry = SimpleNamespace(path="/home/user/p/x", size=3, sha256="ab")
        return SimpleNamespace(added=[entry], modified=[], deleted=[])


def test_diff_prints_short_status_lines(capsys: pytest.CaptureFixture[str]) -> None:
    diff_vm(_context(VmsWithDiff()), argparse.Namespace(vm=VM_ID, path="/home/user/p"))
    assert capsys.readouterr().out == "A  /home/user/p/x  (3 B)\n"


class Entry(BaseModel):
    path: str
    size: int | None = None
    sha256: str | None = None


class ForkDiff(BaseModel):
    added: list[Entry] = []
    modified: list[Entry] = []
    deleted: list[Entry] = []


class VmsWithModelDiff:
    def diff(self, vm_id: str, *, path: str) -> ForkDiff:
        return ForkDiff(added=[Entry(path="/home/user/x", size=1)])


def test_diff_json_is_the_sdks_result(capsys: pytest.CaptureFixture[str]) -> None:
    ctx = _context(VmsWithModelDiff(), json=True)
    diff_vm(ctx, argparse.Namespace(vm=VM_ID, path="/home/user"))
    assert json.loads(capsys.readouterr().out) == {
        "added": [{"path": "/home/user/x", "size": 1, "sha256": None}],
        "modified": [],
        "deleted": [],
    }


def test_diff_without_sdk_support_is_a_clear_error() -> None:
    with pytest.raises(CliError) as err:
        diff_vm(_context(SimpleNamespace()), argparse.Namespace(vm=VM_ID, path="/home/user"))
    assert err.value.code == "unsupported_operation"


def test_cp_shows_a_progress_bar_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tqdm")
    from arker.cli.files import _progress
    from arker.progress import ProgressBar

    ctx = _context(SimpleNamespace())
    quiet = argparse.Namespace(quiet=False)
    with _progress(ctx, quiet, "f") as bar:
        assert bar is None  # stderr is captured here, not a terminal
    monkeypatch.setattr(Context, "stderr_is_terminal", property(lambda self: True))
    with _progress(ctx, quiet, "f") as bar:
        assert isinstance(bar, ProgressBar)
    with _progress(ctx, argparse.Namespace(quiet=True), "f") as bar:
        assert bar is None
