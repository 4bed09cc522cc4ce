"""Exposed ports on the wire: one definition for client and server.

An extension of this code base (``docs/wire-extensions.md``, "Exposed ports"):
``POST /api/v1/vms/{id}/ports`` ``{port}`` exposes a TCP port listening inside the VM
at a URL on the server's address; ``GET …/ports`` lists the VM's exposed ports;
``DELETE …/ports/{port}`` withdraws one. The rules of `arker._wire` hold here too.
"""

from __future__ import annotations

from pydantic import Field

from ._wire import Envelope, RequestModel, UtcDatetime

__all__ = [
    "PORT_MAX",
    "PORT_MIN",
    "ExposePortRequest",
    "ExposedPortWire",
    "ListPortsResponse",
    "UnexposePortResponse",
]

PORT_MIN = 1
PORT_MAX = 65535


class ExposePortRequest(RequestModel):
    """The body of ``POST …/ports``: the TCP port inside the VM."""

    port: int = Field(ge=PORT_MIN, le=PORT_MAX)


class ExposedPortWire(Envelope):
    """One exposed port: the answer of ``POST …/ports`` and an item of ``GET …/ports``.

    ``url`` carries an unguessable secret: whoever holds it reaches the port.
    """

    port: int
    url: str
    created_at: UtcDatetime


class ListPortsResponse(Envelope):
    """``GET …/ports``: the VM's exposed ports, by port number."""

    ports: list[ExposedPortWire] = Field(default_factory=list)


class UnexposePortResponse(Envelope):
    """``DELETE …/ports/{port}``: the port is no longer exposed (also when it was not)."""
