"""(ext) Resuming a presigned PUT: ``HEAD`` counts what the broken PUT delivered.

Raw sockets against a real `arker serve`: a PUT cut off mid-body, then at once the
``HEAD`` a client asks before resuming.
"""

from __future__ import annotations

import array
import fcntl
import os
import socket
import struct
import termios
import time
from urllib.parse import urlsplit

import pytest
import requests

from tests.kit.server import Api

pytestmark = pytest.mark.usefixtures("no_unhandled_errors")

KiB = 1024
MiB = 1024 * KiB
SLACK = 128 * KiB


def _cut_put(url: str, data: bytes, send: int, *, reset: bool) -> None:
    """A PUT announcing all of ``data`` that delivers ``send`` bytes, then hangs up."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80))
    head = (
        f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data[:send])
    if reset:
        _wait_sent(sock)  # a reset discards what the socket has not sent yet
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        sock.shutdown(socket.SHUT_WR)
    sock.close()


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_head_right_after_a_cut_put_counts_what_it_delivered(
    api: Api, vm: str, reset: bool
) -> None:
    data = os.urandom(6 * MiB)
    entry = {"path": "/home/user/resumed.bin", "size": len(data)}
    upload = api.write(vm, {**entry, "presigned": True})[0]
    url = upload["presigned_url"]
    sent = 0
    # Cuts off the server's 1 MiB write blocks, below its 16 MiB checkpoint interval.
    for cut in (3 * MiB + 300 * KiB, 5 * MiB + 700 * KiB):
        if sent:
            _cut_put_from(url, data, sent, cut)
        else:
            _cut_put(url, data, cut, reset=reset)
        held = int(requests.head(url, timeout=60).headers["Upload-Offset"])
        # What reached the server's socket before the hang-up is held, the part of a
        # write block included (a reset may lose what was still in flight: a little).
        assert cut - SLACK <= held <= cut, (cut, held)
        sent = held
    rest = requests.put(
        url,
        data=data[sent:],
        headers={"Content-Range": f"bytes {sent}-{len(data) - 1}/{len(data)}"},
        timeout=60,
    )
    assert rest.status_code == 200, rest.text
    done = api.write(vm, {**entry, "upload_id": upload["upload_id"]})[0]
    assert done["complete"] and done["written"], done
    back = api.sync(vm, {"op": "read", "path": entry["path"]}).json()["presigned_url"]
    assert requests.get(back, timeout=60).content == data


def _wait_sent(sock: socket.socket) -> None:
    """Wait until the peer has acknowledged every byte written to ``sock`` (Linux)."""
    unsent = array.array("i", [0])
    for _ in range(10_000):
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, unsent)
        if unsent[0] == 0:
            return
        time.sleep(0.001)


def _cut_put_from(url: str, data: bytes, start: int, cut: int) -> None:
    """A resuming PUT (``Content-Range`` from ``start``) closed after byte ``cut``."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80))
    head = (
        f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Length: {len(data) - start}\r\n"
        f"Content-Range: bytes {start}-{len(data) - 1}/{len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data[start:cut])
    sock.shutdown(socket.SHUT_WR)
    sock.close()
