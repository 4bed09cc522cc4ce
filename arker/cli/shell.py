"""``arker shell``: an interactive terminal in a VM, over the server's PTY WebSocket
route, where the server offers one."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import shutil
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from .._exceptions import APIStatusError, error_for
from .context import CliError, Context
from .parsing import command
from .websocket import BINARY, CLOSE, TEXT, HandshakeRefused, WebSocket

if TYPE_CHECKING:
    from .parsing import Parser

__all__ = ["register"]


def register(actions: argparse._SubParsersAction[Parser]) -> None:
    shell = command(
        actions,
        "shell",
        "open an interactive terminal in a VM (servers with a PTY route)",
        "  arker shell scratch\n  arker shell scratch --session work   # reattach later",
    )
    shell.add_argument("vm", help="VM id or name")
    shell.add_argument(
        "--session", "-s", default="shell", help="session of the terminal (default: shell)"
    )
    shell.set_defaults(func=open_shell)


def open_shell(ctx: Context, args: argparse.Namespace) -> int:
    vm_id = ctx.vm_id(args.vm)
    client = ctx.client
    cols, rows = shutil.get_terminal_size()
    path = f"/api/v1/vms/{quote(vm_id, safe='')}/sessions/{quote(args.session, safe='')}/pty"
    url = f"{client.base_url}{path}?{urlencode({'cols': cols, 'rows': rows})}"
    api_key = client._config.api_key
    try:
        ws = WebSocket.connect(url, {"Authorization": f"Bearer {api_key}"})
    except HandshakeRefused as refused:
        raise _refusal(refused, client.base_url, args.vm) from None
    with ws_closed(ws), raw_terminal():
        _pump(ws)
    return 0


def _refusal(refused: HandshakeRefused, base_url: str, vm: str) -> Exception:
    """What a refused upgrade means: no terminal on this server, or the server's error."""
    code, message = "", refused.body.decode("utf-8", "replace")
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        error = json.loads(refused.body)["error"]
        code, message = str(error["code"]), str(error["message"])
    no_route = refused.status in (404, 405, 501) and message.strip().lower() in (
        "not found",
        "method not allowed",
        "not implemented",
    )
    # A server with a WebSocket stack but no terminal route closes the upgrade before
    # accepting it, which uvicorn answers as a bare 403 with no error envelope.
    no_route = no_route or (refused.status == 403 and not code and not message.strip())
    if no_route:
        return CliError(
            "unsupported_operation",
            f"the server at {base_url} offers no interactive terminal; "
            f"run commands with: arker run {vm} -- CMD",
        )
    if code:
        err: APIStatusError = error_for(code, message, refused.status)
        return err
    answer = f"HTTP {refused.status}" if refused.status else message
    return CliError("bad_response", f"the terminal could not open: {answer}")


def _pump(ws: WebSocket) -> None:
    """Keys to the VM, its terminal's output to stdout, window sizes as they change,
    until the server closes the terminal (or stdin ends)."""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.buffer
    selector = selectors.DefaultSelector()
    selector.register(ws.sock, selectors.EVENT_READ)
    selector.register(stdin, selectors.EVENT_READ)
    resized: list[bool] = []
    previous = signal.signal(signal.SIGWINCH, lambda *_: resized.append(True))
    try:
        messages = ws.pending()
        while True:
            for opcode, payload in messages:
                if opcode in (BINARY, TEXT):
                    stdout.write(payload)
                    stdout.flush()
                elif opcode == CLOSE:
                    return
            if ws.closed:
                return
            messages = []
            if resized:
                resized.clear()
                cols, rows = shutil.get_terminal_size()
                control = {"type": "resize", "cols": cols, "rows": rows}
                ws.send(json.dumps(control).encode(), TEXT)
            for key, _ in selector.select(timeout=1):
                if key.fileobj is ws.sock:
                    messages += ws.receive()
                else:
                    data = os.read(stdin, 65536)
                    if not data:
                        # Piped input ended: end it for the terminal too (Ctrl-D, as
                        # a keyboard would), then show what follows until it closes.
                        selector.unregister(stdin)
                        data = b"\x04"
                    ws.send(data, BINARY)
    finally:
        signal.signal(signal.SIGWINCH, previous)
        selector.close()


@contextlib.contextmanager
def ws_closed(ws: WebSocket) -> Iterator[WebSocket]:
    try:
        yield ws
    finally:
        ws.close()


@contextlib.contextmanager
def raw_terminal() -> Iterator[None]:
    """Keys go to the VM unprocessed (Ctrl-C included) while stdin is a terminal."""
    if not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved: Any = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
