"""One terminal's WebSocket and its pty master, pumped both ways on the event loop.

No thread per terminal: the master end is non-blocking and waited on with the loop's
``add_reader``/``add_writer``. Backpressure both ways: output is read from the pty
only after the previous frame was handed to the socket (``send`` waits while the
socket's buffer is full), so a slow reader stalls the shell's writes in the kernel's
pty buffer; input frames are taken one at a time and written completely (waiting
while the pty is full) before the next is received.

Frames: binary from the client = keystrokes; text from the client = one JSON control
(``{"type": "resize", "cols", "rows"}``, ``{"type": "kill"}``, ``{"type": "ping"}``);
binary from the server = terminal output. The server sends no text frames (the
published client hands every frame to its data callback).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from .engine_api import PtyShellLike

__all__ = ["CLOSE_BAD_CONTROL", "pump"]

_READ_BLOCK = 64 * 1024
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_BAD_CONTROL = 1003
"""A text frame that is not a known JSON control (the reason says what was wrong)."""


async def _ready(fd: int, add: Callable[..., None], remove: Callable[[int], Any]) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def fire() -> None:
        if not fut.done():
            fut.set_result(None)

    add(fd, fire)
    try:
        await fut
    finally:
        remove(fd)


class _BadControl(Exception):
    pass


def _control(text: str, shell: PtyShellLike) -> str | None:
    """Apply one control frame; ``"kill"`` when it asks for the shell's end."""
    try:
        message = json.loads(text)
    except ValueError:
        raise _BadControl("control frames are JSON objects") from None
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "resize":
        cols, rows = message.get("cols"), message.get("rows")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (cols, rows)):
            raise _BadControl("resize needs integer cols and rows")
        shell.resize(cols, rows)
        return None
    if kind == "kill":
        return "kill"
    if kind == "ping":
        return None  # activity: keeps an idle terminal open
    raise _BadControl(f"unknown control type: {kind!r} (resize, kill, ping)")


async def pump(ws: WebSocket, shell: PtyShellLike, idle_s: float) -> None:
    """Run the terminal until its shell ends, the client leaves or a limit closes it.

    Args:
        ws: The accepted WebSocket.
        shell: The terminal; the caller closes it afterwards.
        idle_s: Close after this long without input or output (0: never).
    """
    loop = asyncio.get_running_loop()
    fd = shell.master_fd
    last = [loop.time()]

    async def output() -> tuple[int, str]:
        while True:
            try:
                chunk = os.read(fd, _READ_BLOCK)
            except BlockingIOError:
                await _ready(fd, loop.add_reader, loop.remove_reader)
                continue
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO: every process of the terminal is gone
                    raise
                chunk = b""
            if not chunk:
                return CLOSE_NORMAL, "shell exited"
            last[0] = loop.time()
            await ws.send_bytes(_more(fd, chunk))

    async def write_all(data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                await _ready(fd, loop.add_writer, loop.remove_writer)

    async def keys() -> tuple[int, str] | None:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return None
            last[0] = loop.time()
            if message.get("bytes") is not None:
                await write_all(message["bytes"])
            elif message.get("text") is not None:
                try:
                    if _control(message["text"], shell) == "kill":
                        return CLOSE_NORMAL, "killed"
                except _BadControl as exc:
                    return CLOSE_BAD_CONTROL, str(exc)

    async def stopped() -> tuple[int, str]:
        await _ready(shell.stop.wake_fd, loop.add_reader, loop.remove_reader)
        return CLOSE_GOING_AWAY, "the VM was deleted or the server is stopping"

    async def idle() -> tuple[int, str]:
        while True:
            left = last[0] + idle_s - loop.time()
            if left <= 0:
                return CLOSE_NORMAL, f"idle for {idle_s:g} s"
            await asyncio.sleep(left)

    tasks = [asyncio.ensure_future(c) for c in (output(), keys(), stopped())]
    if idle_s > 0:
        tasks.append(asyncio.ensure_future(idle()))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    first = next(iter(done))
    try:
        outcome = first.result()
    except (WebSocketDisconnect, ConnectionError, RuntimeError):
        return  # the client is gone: nothing to say
    if outcome is None:
        return
    code, reason = outcome
    with contextlib.suppress(RuntimeError, ConnectionError, WebSocketDisconnect):
        await ws.close(code=code, reason=reason[:120])


def _more(fd: int, chunk: bytes) -> bytes:
    """``chunk`` and what else the pty holds now, up to a frame's worth.

    A pty hands out its output a few KiB per read: one frame per read would cost
    a frame's overhead for every few KiB of a fast writer's output.
    """
    if len(chunk) >= _READ_BLOCK:
        return chunk
    parts = [chunk]
    size = len(chunk)
    while size < _READ_BLOCK:
        try:
            more = os.read(fd, _READ_BLOCK - size)
        except OSError:  # EAGAIN: that was all for now; EIO: the next read says so
            break
        if not more:
            break
        parts.append(more)
        size += len(more)
    return b"".join(parts)
