"""``client.vms``: list, iterate, get, fork, update and delete VMs; expose their ports;
their diffs and TTLs (extensions)."""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from datetime import datetime

from .._diff_models import ForkDiff
from .._exceptions import NotFoundError, UnsupportedError, refused_before_sending
from .._ids import looks_like_vm_id, new_ulid, resolve_source
from .._models import ExposedPort, ForkResult, VmDetails, VmList, VmSummary
from .._wire import (
    MAX_TTL_S,
    SORT_KEYS,
    DeleteResponse,
    ForkRequest,
    ForkResponse,
    ListVmsResponse,
    SortOrder,
)
from .._wire_diff import ForkDiffResponse, TouchRequest, TouchResponse
from .._wire_platform import PatchVmRequest, PlatformVm
from .._wire_ports import (
    PORT_MAX,
    PORT_MIN,
    ExposedPortWire,
    ExposePortRequest,
    ListPortsResponse,
    UnexposePortResponse,
)
from ._resource import Resource, build_request, vm_path

__all__ = ["VmsResource", "vm_path"]


def _port_path(vm_id: str, port: int) -> str:
    if isinstance(port, bool) or not isinstance(port, int) or not PORT_MIN <= port <= PORT_MAX:
        raise refused_before_sending(f"port must be an integer {PORT_MIN}-{PORT_MAX}: {port!r}")
    return vm_path(vm_id, f"/ports/{port}")


def _check_list_args(limit: int, offset: int, sort: str | None) -> None:
    if not 1 <= limit <= 100:
        raise refused_before_sending(f"limit must be 1-100, got {limit}")
    if offset < 0:
        raise refused_before_sending(f"offset must be >= 0, got {offset}")
    if sort is not None and sort not in SORT_KEYS:
        raise refused_before_sending(f"sort must be one of {SORT_KEYS}, got {sort!r}")


def _check_ttl(ttl: int | None) -> None:
    if ttl is None:
        return
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL_S:
        raise refused_before_sending(f"ttl must be whole seconds, 1-{MAX_TTL_S}, got {ttl!r}")


def _unsupported_if_no_route(exc: NotFoundError, what: str) -> Exception:
    """A 404 naming no VM is the route missing: a server without the extension."""
    if "vm" in exc.message.lower():
        return exc
    return UnsupportedError(
        "unsupported_operation", f"this server has no {what} ({exc.message})", exc.status
    )


class VmsResource(Resource):
    """VMs of your organisation. List routes go to the control host."""

    def list(
        self,
        *,
        limit: int = 25,
        offset: int = 0,
        q: str | None = None,
        sort: SortOrder | None = None,
    ) -> VmList:
        """One page of your organisation's VMs.

        Args:
            limit: Page size, 1–100.
            offset: How many matches to skip.
            q: Only VMs whose name contains this substring.
            sort: ``created_at``, ``-created_at`` (default), ``region`` or ``-region``.

        Returns:
            The page; ``total`` counts every match.
        """
        _check_list_args(limit, offset, sort)
        params = {"limit": str(limit), "offset": str(offset)}
        if q is not None:
            params["q"] = q
        if sort is not None:
            params["sort"] = sort
        wire = self._client.call(
            "GET", "/api/v1/vms/list", ListVmsResponse, host="control", params=params
        )
        return VmList.from_wire(wire)

    def list_all(
        self, *, q: str | None = None, sort: SortOrder | None = None, page_size: int = 100
    ) -> Iterator[VmSummary]:
        """Every matching VM, fetching pages lazily as you iterate.

        Pages are read by offset: VMs created or deleted while you iterate may shift
        the pages. Pass ``sort="created_at"`` (oldest first) for a stable walk while
        new VMs are being made.
        """
        offset = 0
        while True:
            page = self.list(limit=page_size, offset=offset, q=q, sort=sort)
            yield from page.items
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    def fork(
        self,
        source: str,
        *,
        name: str | None = None,
        is_public: bool = False,
        region: str | None = None,
        idempotency_key: str | None = None,
        ttl: int | None = None,
    ) -> ForkResult:
        """Create a copy-on-write child of ``source`` in constant time.

        The result is a context manager that deletes the new VM when the block ends::

            with client.vms.fork("arkuntu", ttl=3600) as vm:
                client.runs.create(vm.vm_id, "make test")

        Args:
            source: A VM id, a public image alias (``"arkuntu"``) or a VM name.
            name: Name for the new VM.
            is_public: Let other organisations fork the new VM.
            region: Region for the new VM (server default when omitted).
            idempotency_key: Makes the fork exactly-once across retries and calls;
                one is minted per call when omitted.
            ttl: Seconds until the server deletes the new VM (an extension of
                ``arker serve``; `touch` extends it). Whole seconds, 1 to one year.

        Returns:
            The new VM (``expires_at`` set when it has a TTL).
        """
        resolved = resolve_source(source)
        key = idempotency_key or new_ulid()
        _check_ttl(ttl)
        body = build_request(ForkRequest, is_public=is_public, name=name, region=region, ttl=ttl)
        if looks_like_vm_id(resolved):
            wire = self._client.call(
                "POST", vm_path(resolved, "/fork"), ForkResponse, body=body, idempotency_key=key
            )
        else:
            # A name, not an id: only the control host can resolve it.
            body = body.model_copy(update={"from_": source})
            wire = self._client.call(
                "POST",
                "/api/v1/vms/fork",
                ForkResponse,
                host="control",
                body=body,
                idempotency_key=key,
            )
        return ForkResult.from_wire(wire, self.delete)

    def diff(self, vm_id: str, *, path: str = "/home/user") -> ForkDiff:
        """What the VM changed under ``path`` relative to the VM it was forked from, as
        of the fork (an extension of ``arker serve``).

        Args:
            vm_id: The VM (a fork).
            path: The absolute directory to compare.

        Returns:
            ``added``, ``modified`` and ``deleted`` entries, each sorted by path.

        Raises:
            UnsupportedError: ``unsupported_operation``: the server has no fork diffs.
            BadRequestError: a bad path, or a VM that was not forked.
        """
        if not isinstance(path, str) or not path.startswith("/"):
            raise refused_before_sending(f"path must be an absolute path, got {path!r}")
        try:
            wire = self._client.call(
                "GET", vm_path(vm_id, "/diff"), ForkDiffResponse, params={"path": path}
            )
        except NotFoundError as exc:
            raise _unsupported_if_no_route(exc, "fork diffs") from None
        return ForkDiff.from_wire(wire)

    def touch(self, vm_id: str, *, ttl: int) -> datetime:
        """Make the server delete the VM ``ttl`` seconds from now (extending or
        shortening its TTL, or giving it one).

        Returns:
            The new expiry, timezone-aware.

        Raises:
            UnsupportedError: ``unsupported_operation``: the server keeps no TTLs.
            NotFoundError: the VM is gone (its TTL may have run out already).
        """
        _check_ttl(ttl)
        body = build_request(TouchRequest, ttl=ttl)
        try:
            wire = self._client.call("POST", vm_path(vm_id, "/touch"), TouchResponse, body=body)
        except NotFoundError as exc:
            raise _unsupported_if_no_route(exc, "VM TTLs") from None
        return wire.expires_at

    def get(self, vm_id: str) -> VmDetails:
        """One VM of your organisation: name, description, state, sessions.

        Raises:
            NotFoundError: No such VM, or another organisation's.
        """
        wire = self._client.call("GET", vm_path(vm_id), PlatformVm)
        return VmDetails.from_wire(wire)

    def update(
        self, vm_id: str, *, name: str | None = None, description: str | None = None
    ) -> VmDetails:
        """Rename a VM or change its description; ``None`` leaves a field as it is.

        Args:
            vm_id: The VM.
            name: Its new name (the rules of a fork's ``name``: unique in your
                organisation, not a reserved name).
            description: Its new description; ``""`` clears it.

        Returns:
            The VM as it is now.
        """
        body = build_request(PatchVmRequest, name=name, description=description)
        wire = self._client.call("PATCH", vm_path(vm_id), PlatformVm, body=body)
        return VmDetails.from_wire(wire)

    def delete(self, vm_id: str) -> None:
        """Delete a VM. Its forks keep working."""
        self._client.call(
            "DELETE", vm_path(vm_id), DeleteResponse, absent_after_retry=DeleteResponse()
        )

    def expose(self, vm_id: str, port: int) -> ExposedPort:
        """Make a TCP port inside the VM reachable at a URL of the server.

        Requests to the URL (and to paths under it, WebSocket upgrades included) go to
        ``127.0.0.1:port`` inside the VM. The URL carries a secret; without it the
        server refuses. Exposing an exposed port again gives the same URL.

        Args:
            vm_id: The VM.
            port: A TCP port, 1-65535; nothing needs to listen on it yet.

        Returns:
            The exposed port, with its `url`.
        """
        body = build_request(ExposePortRequest, port=port)
        wire = self._client.call(
            "POST",
            vm_path(vm_id, "/ports"),
            ExposedPortWire,
            body=body,
            acts=False,  # exposing an exposed port is a no-op: safe to repeat
        )
        return ExposedPort.from_wire(wire)

    def list_ports(self, vm_id: str) -> builtins.list[ExposedPort]:
        """The VM's exposed ports, by port number."""
        wire = self._client.call("GET", vm_path(vm_id, "/ports"), ListPortsResponse)
        return [ExposedPort.from_wire(p) for p in wire.ports]

    def unexpose(self, vm_id: str, port: int) -> None:
        """Withdraw an exposed port: its URL stops working (open connections end).

        Unexposing a port that is not exposed does nothing.
        """
        self._client.call("DELETE", _port_path(vm_id, port), UnexposePortResponse)
