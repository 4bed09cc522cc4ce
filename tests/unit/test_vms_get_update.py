"""``client.vms.get`` and ``client.vms.update``: the platform's ``GET/PATCH /v1/vms/{id}``."""

from __future__ import annotations

import json
from datetime import timezone

import pytest

from arker import Arker, BadRequestError, NotFoundError, VmDetails

VM = "01HZZZZZZZZZZZZZZZZZZZZZZZ_abc1"

VM_ANSWER = {
    "vm_id": VM,
    "owner_org_id": "org-1",
    "created_at": "2026-12-01T10:00:00Z",
    "description": "build box",
    "public": False,
    "state": "running",
    "network": {},
    "resources": {},
    "name": "builder",
    "region": "local",
    "sessions": [{"session_id": "s1", "state": "running", "cwd": "/home/user"}],
}


def test_get_reads_the_vm_shape(client: Arker, rsps) -> None:
    rsps.get(f"{client.base_url}/api/v1/vms/{VM}", json=VM_ANSWER)
    vm = client.vms.get(VM)
    assert isinstance(vm, VmDetails)
    assert (vm.vm_id, vm.name, vm.description, vm.state) == (VM, "builder", "build box", "running")
    assert vm.created_at.tzinfo == timezone.utc
    assert [s.session_id for s in vm.sessions] == ["s1"]
    (call,) = rsps.calls
    assert call.request.method == "GET" and call.request.body is None


def test_get_of_a_missing_vm_decodes_the_platform_envelope(client: Arker, rsps) -> None:
    error = {"error": {"code": "not_found", "message": "vm not found", "request_id": "r"}}
    rsps.get(f"{client.base_url}/api/v1/vms/{VM}", json=error, status=404)
    with pytest.raises(NotFoundError, match="vm not found"):
        client.vms.get(VM)


def test_update_sends_only_the_fields_given(client: Arker, rsps) -> None:
    rsps.patch(f"{client.base_url}/api/v1/vms/{VM}", json={**VM_ANSWER, "description": "new"})
    vm = client.vms.update(VM, description="new")
    assert vm.description == "new"
    assert json.loads(rsps.calls[0].request.body) == {"description": "new"}


def test_update_renames(client: Arker, rsps) -> None:
    rsps.patch(f"{client.base_url}/api/v1/vms/{VM}", json={**VM_ANSWER, "name": "b2"})
    assert client.vms.update(VM, name="b2").name == "b2"
    assert json.loads(rsps.calls[0].request.body) == {"name": "b2"}


def test_update_refuses_bad_input_before_sending(client: Arker, rsps) -> None:
    with pytest.raises(BadRequestError):
        client.vms.update(VM, name="x" * 300)
    with pytest.raises(BadRequestError):
        client.vms.get("")
    assert not rsps.calls
