"""Who is at the other end of a loopback connection: the uid owning the peer socket.

VMs on the default network share the host's network namespace, so their connections
come from ``127.0.0.1`` like the user's own SDK. The peer socket's owner tells them
apart (each VM runs as a uid of its own, never the user's). The kernel answers one
exact lookup through ``sock_diag`` (netlink), whatever the number of sockets, without
privileges.
"""

from __future__ import annotations

import socket
import struct

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_HDR = struct.Struct("=IHHII")
_NO_COOKIE = 0xFFFFFFFF
_UID_OFFSET = _NLMSG_HDR.size + 64  # inet_diag_msg: 4 bytes, sockid (48), 3 u32, uid


def _packed(family: int, ip: str) -> bytes:
    raw = socket.inet_pton(family, ip)
    return raw + b"\0" * (16 - len(raw))


def peer_uid(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The uid owning the socket at ``client`` connected to ``server``, or None.

    None when the lookup fails (the peer is in another network namespace or on another
    host, or already gone).
    """
    family = socket.AF_INET6 if ":" in client[0] else socket.AF_INET
    try:
        sockid = (
            struct.pack("!HH", client[1], server[1])
            + _packed(family, client[0])
            + _packed(family, server[0])
            + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
        )
    except (OSError, ValueError):
        return None
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    header = _NLMSG_HDR.pack(
        _NLMSG_HDR.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0
    )
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.sendto(header + request, (0, 0))
            answer = nl.recv(8192)
    except OSError:
        return None
    if len(answer) < _UID_OFFSET + 4:
        return None
    _, kind, _, _, _ = _NLMSG_HDR.unpack_from(answer)
    if kind != _SOCK_DIAG_BY_FAMILY:
        return None  # NLMSG_ERROR: no such socket
    uid: int = struct.unpack_from("=I", answer, _UID_OFFSET)[0]
    return uid
