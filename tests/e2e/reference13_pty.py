"""Run by the published ``arker==1.3.0`` client's interpreter: its `connect_pty` against
`arker serve` (environment: ARKER_BASE_URL, ARKER_API_KEY, VM_ID). Prints one line per
check and ``reference 1.3.0 pty: ok`` at the end; any failure raises."""

from __future__ import annotations

import os
import re
import threading
import time

from arker import Arker

_WAIT_S = 30.0

client = Arker(
    api_key=os.environ["ARKER_API_KEY"],
    base_url=os.environ["ARKER_BASE_URL"] + "/api",
    control_base_url=os.environ["ARKER_BASE_URL"] + "/api",
    retry=False,
)
vm = client.vm(os.environ["VM_ID"])
seen = bytearray()
lock = threading.Lock()
closed: list[object] = []


def on_data(chunk: bytes) -> None:
    with lock:
        seen.extend(chunk)


def expect(pattern: bytes) -> None:
    deadline = time.monotonic() + _WAIT_S
    while True:
        with lock:
            found = re.search(pattern, seen)
            if found is not None:
                del seen[: found.end()]
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"no {pattern!r} in {bytes(seen)[-1000:]!r}")
        time.sleep(0.05)


pty = vm.connect_pty(on_data=on_data, cols=90, rows=20, on_close=closed.append)
pty.send_input("echo plain-$TERM\n")
expect(rb"[\r\n]plain-dumb")
print("connect_pty: a session in plain mode, a command's output")
pty.send_input("stty size\n")
expect(rb"[\r\n]20 90")
pty.resize(132, 43)
time.sleep(0.3)
pty.send_input("stty size\n")
expect(rb"[\r\n]43 132")
print("resize: stty size follows")
pty.ping()
pty.send_input("exit\n")
deadline = time.monotonic() + _WAIT_S
while not closed:
    assert time.monotonic() < deadline, "the socket never closed"
    time.sleep(0.05)
print("exit: the socket closes")
print("reference 1.3.0 pty: ok")
