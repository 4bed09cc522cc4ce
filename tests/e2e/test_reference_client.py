"""The original 0.1.0 client, as published, runs its full smoke demo against `arker serve`.

The reference client lives in ``shared/reference/arker-0.1.0`` beside this repository
(CI gets a copy of ``shared/`` next to its clone). It is loaded from there under a
private module name, never copied. Its only change of environment: 0.1.0 hard-codes
the global host for ``list``, so the test points that module constant at the local
server, which serves every route on one address.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

_REFERENCE = Path(__file__).resolve().parents[2].parent / "shared/reference/arker-0.1.0"


def _load_reference() -> ModuleType:
    source = _REFERENCE / "arker" / "computer.py"
    if not source.is_file():
        pytest.skip(f"0.1.0 reference client not found at {source}")
    spec = importlib.util.spec_from_file_location("arker_reference_0_1_0", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def ref(arker_server: Any, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = _load_reference()
    monkeypatch.setattr(module, "LIST_BASE_URL", arker_server.control_url)
    return module


def test_reference_client_smoke_demo(ref: ModuleType, arker_server: Any) -> None:
    """Every 0.1.0 method: list, vm, fork, run, write_file, read_file, error, child, delete."""
    client = ref.Arker(arker_server.api_key, base_url=arker_server.base_url)

    before = client.list(limit=100)
    assert isinstance(before.total, int)

    vm = client.vm("arkuntu").fork(name="ref-demo")
    assert vm.id != "01KQBYKEV5WJ7YB010603T1DCT_d8c0"

    result = vm.run("python3 -c 'print(2+2)'")
    assert result.stdout.decode() == "4\n"
    assert result.exit_code == 0
    assert isinstance(result.duration_ms, float)

    session = vm.run("cd /tmp && pwd", session_id="s1")
    assert session.cwd == "/tmp"
    assert vm.run("pwd", session_id="s1").stdout == b"/tmp\n"

    failed = vm.run("echo oops >&2; exit 3")
    assert failed.exit_code == 3
    assert failed.stderr == b"oops\n"

    vm.sync.write_file("/home/user/data.csv", b"a,b\n1,2\n")
    assert vm.sync.read_file("/home/user/data.csv") == b"a,b\n1,2\n"
    vm.sync.write_file("/home/user/text.txt", "héllo")
    assert vm.sync.read_file("/home/user/text.txt") == "héllo".encode()

    big = bytes(range(256)) * (5 * 4096 + 7)  # > 4 MiB: the presigned path
    vm.sync.write_file("/home/user/big.bin", big)
    assert vm.sync.read_file("/home/user/big.bin") == big

    with pytest.raises(ref.ArkerError) as caught:
        vm.sync.read_file("/home/user/missing")
    assert caught.value.code == "not_found"
    assert caught.value.status == 404
    assert "/home/user/missing" in caught.value.message

    page = client.list(limit=100, q="ref-demo")
    assert vm.id in [s.vm_id for s in page]
    assert len(page) == len(page.items) <= page.total

    child = vm.fork(name="ref-branch")
    child.sync.write_file("/home/user/only-child.txt", b"child")
    with pytest.raises(ref.ArkerError):
        vm.sync.read_file("/home/user/only-child.txt")
    assert child.sync.read_file("/home/user/data.csv") == b"a,b\n1,2\n"

    child.delete()
    vm.delete()
    with pytest.raises(ref.ArkerError) as gone:
        vm.run("true")
    assert gone.value.status == 404
