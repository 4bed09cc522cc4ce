"""The platform's current API (``POST /v1/fork``, ``/v1/vms``…) as pydantic models.

Shared by `arker serve` (`arker.local.routes_platform`) and the SDK's
``client.vms.get`` / ``client.vms.update``. Shapes follow the hosted platform's
published OpenAPI document ("Arker Public VM API"); only the fields a local server can
give an honest value for are modelled, and unknown fields are ignored both ways.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ._wire import RequestModel, WireModel

__all__ = [
    "UNSUPPORTED_FORK_FIELDS",
    "UNSUPPORTED_PATCH_FIELDS",
    "DeleteVmResponse",
    "ListRegionsResponse",
    "PatchVmRequest",
    "PlatformErrorBody",
    "PlatformForkRequest",
    "PlatformHealth",
    "PlatformVm",
    "PlatformVmList",
    "RegionPlacement",
    "WhoamiResponse",
]

UNSUPPORTED_FORK_FIELDS: dict[str, str] = {
    "image": "OCI images as fork sources",
    "dockerfile": "Dockerfile builds",
    "nestedvirt": "nested virtualization",
    "disk": "disk-less forks",
    "durable": "durability settings",
    "platforms": "platform placement",
    "layers": "memory layers",
    "policies": "network policies",
    "resources": "resource sizing",
    "registry_auth": "private image registries",
    "pool_id": "pools",
    "pool_name": "pools",
    "command": "a boot command",
    "ssh_public_keys": "SSH access",
}
"""Fork fields that ask for something `arker serve` cannot do, and what that is."""

UNSUPPORTED_PATCH_FIELDS: dict[str, str] = {
    "immutable": "immutable VMs",
    "resources": "resizing",
    "ssh_public_keys": "SSH access",
    "policies": "network policies",
    "pool_id": "pools",
    "pool_name": "pools",
}
"""``PATCH /v1/vms/{id}`` fields `arker serve` cannot honour, and what they ask for."""


class PlatformErrorBody(WireModel):
    """The ``error`` of the platform's envelope ``{"error": {...}}`` (no ``ok`` field)."""

    code: str
    message: str
    timestamp: str = ""
    request_id: str = ""
    request: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] | None = None


class PlatformForkRequest(RequestModel):
    """``POST /v1/fork``: exactly one of ``source_vm_id`` and ``source_vm_name``."""

    source_vm_id: str | None = Field(default=None, max_length=256)
    source_vm_name: str | None = Field(default=None, max_length=256)
    source_org_id: str | None = Field(default=None, max_length=128)
    source_org_name: str | None = Field(default=None, max_length=256)
    name: str | None = Field(default=None, max_length=256)
    description: str | None = Field(default=None, max_length=4096)
    public: bool | None = None
    queueing_timeout: int | None = None


class PatchVmRequest(RequestModel):
    """``PATCH /v1/vms/{id}``: an explicit ``null`` description clears it; (ext) ``name``."""

    description: str | None = Field(default=None, max_length=4096)
    name: str | None = Field(default=None, max_length=256)


class PlatformVm(WireModel):
    """A VM in the platform's ``Vm`` shape, with the values a local server really has.

    ``state`` is ``running`` while one of its runs is live, else ``idle``; ``resources``
    and ``network`` are empty (nothing is sized or reachable per VM locally).
    """

    vm_id: str
    owner_org_id: str
    created_at: str
    description: str | None = None
    public: bool = False
    state: Literal["idle", "running"] = "idle"
    network: dict[str, Any] = Field(default_factory=dict)
    sessions: list[dict[str, Any]] = Field(default_factory=list)
    resources: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None
    root_source_vm_id: str | None = None
    region: str | None = None
    provider: str | None = None
    last_active_at: str | None = None


class PlatformVmList(WireModel):
    """``GET /v1/vms``: one page, and the cursor of the next (``None`` on the last)."""

    vms: list[PlatformVm] = Field(default_factory=list)
    next_cursor: str | None = None


class DeleteVmResponse(WireModel):
    deleted: bool = True


class PlatformHealth(WireModel):
    status: str = "ok"
    timestamp: str = ""
    version: str = ""
    backend: str = ""


class WhoamiResponse(WireModel):
    org_id: str
    org_name: str


class RegionPlacement(WireModel):
    provider: str
    region: str
    endpoint: str
    platforms: list[str] = Field(default_factory=list)


class ListRegionsResponse(WireModel):
    regions: list[RegionPlacement] = Field(default_factory=list)
