"""``arker shell``: an interactive terminal in a VM, where the server offers one."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING
from urllib.parse import quote

from .._exceptions import ArkerError
from .context import CliError, Context, route_missing
from .parsing import command

if TYPE_CHECKING:
    from .parsing import Parser

__all__ = ["register"]


def register(actions: argparse._SubParsersAction[Parser]) -> None:
    shell = command(
        actions,
        "shell",
        "open an interactive terminal in a VM (servers with a PTY route only)",
        "  arker shell scratch\n  arker run scratch -- 'cd src && make'   # where it has none",
    )
    shell.add_argument("vm", help="VM id or name")
    shell.add_argument("--session", "-s", default="shell", help="session to open it in")
    shell.set_defaults(func=open_shell)


def open_shell(ctx: Context, args: argparse.Namespace) -> int:
    from pydantic import RootModel

    vm_id = ctx.vm_id(args.vm)
    client = ctx.client
    path = f"/api/v1/vms/{quote(vm_id, safe='')}/sessions/{quote(args.session, safe='')}/pty"
    hint = f"run commands with: arker run {args.vm} -- CMD"
    # Ask without upgrading to a WebSocket: a server without the route answers that
    # no such route exists; one with it refuses the plain request some other way.
    try:
        client.call("GET", path, RootModel[object], params={"cols": "80", "rows": "24"})
    except ArkerError as exc:
        if route_missing(exc) or exc.status in (405, 501):
            raise CliError(
                "unsupported_operation",
                f"the server at {client.base_url} offers no interactive terminal; {hint}",
            ) from None
        if exc.status in (401, 403, 404):
            raise
    raise CliError(
        "unsupported_operation",
        f"the server offers a terminal, but this version of arker cannot open it yet; {hint}",
    )
