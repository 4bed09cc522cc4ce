"""100 MiB each way through a proxy that resets the connection about every MiB.

The upload resumes from the server's offset (``HEAD``, then ``Content-Range``) and the
download from the bytes it already holds (``Range``), for as long as each attempt makes
progress. Both end byte-exact, and the proxy's byte counters show that resuming re-sent
little: less than 1.5 times the file on the wire.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from arker import Arker
from tests.kit.faultproxy import FaultPlan, FaultProxy
from tests.kit.files import sha256_of

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
SIZE = 100 * MiB


def _presigned(method: str, path: str) -> bool:
    return "/presigned/" in path


@pytest.fixture
def big(tmp_path: Path) -> Path:
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        for _ in range(SIZE // MiB):
            f.write(os.urandom(MiB))
    return src


@pytest.fixture
def vm_id(arker_client: Arker) -> Any:
    vm = arker_client.vms.fork("arkuntu")
    yield vm.vm_id
    arker_client.vms.delete(vm.vm_id)


def _through(proxy: FaultProxy, server: Any) -> Arker:
    return Arker(server.api_key, base_url=proxy.url, control_url=proxy.url, sleep=lambda s: None)


def test_100mib_upload_resumes_through_resets_every_mib(
    arker_server: Any, arker_client: Arker, vm_id: str, big: Path, tmp_path: Path
) -> None:
    plan = FaultPlan(rate=0.0, reset_every=MiB, applies=_presigned)
    with FaultProxy(arker_server.base_url, plan) as proxy:
        client = _through(proxy, arker_server)
        try:
            client.sync.write(vm_id, "/home/user/up.bin", big)
        finally:
            client.close()
    print(f"\nupload: {plan.injected['reset_every']} resets, {proxy.bytes_up / SIZE:.3f}x up")
    assert plan.injected["reset_every"] >= 50  # it really was cut all along the way
    assert SIZE <= proxy.bytes_up < 1.5 * SIZE
    back = tmp_path / "back.bin"
    arker_client.sync.read_to(vm_id, "/home/user/up.bin", back)
    assert sha256_of(back) == sha256_of(big)


def test_100mib_download_resumes_through_resets_every_mib(
    arker_server: Any, arker_client: Arker, vm_id: str, big: Path, tmp_path: Path
) -> None:
    arker_client.sync.write(vm_id, "/home/user/down.bin", big)
    plan = FaultPlan(rate=0.0, reset_every=MiB, applies=_presigned)
    dest = tmp_path / "down.bin"
    with FaultProxy(arker_server.base_url, plan) as proxy:
        client = _through(proxy, arker_server)
        try:
            assert client.sync.read_to(vm_id, "/home/user/down.bin", dest) == SIZE
        finally:
            client.close()
    print(f"\ndownload: {plan.injected['reset_every']} resets, {proxy.bytes_down / SIZE:.3f}x down")
    assert plan.injected["reset_every"] >= 50
    assert SIZE <= proxy.bytes_down < 1.5 * SIZE
    assert sha256_of(dest) == sha256_of(big)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
