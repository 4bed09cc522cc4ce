"""What every command shares: the client made from flags and environment, naming VMs
by id or by name, and asking before destructive work."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from .._exceptions import ArkerError, NotFoundError
from .._ids import looks_like_vm_id

if TYPE_CHECKING:
    from .._client import Arker

__all__ = ["CliError", "Context", "route_missing"]


class CliError(ArkerError):
    """A failure the command line finds itself (bad input, an ambiguous name...)."""


def route_missing(exc: BaseException) -> bool:
    """True when the server answered that it has no such route at all (an older
    ``arker serve``), as opposed to an answer about a VM or run that does not exist."""
    return isinstance(exc, NotFoundError) and exc.message.strip().lower() == "not found"


class Context:
    """One invocation: its parsed flags and, made on first use, its client."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json: bool = bool(getattr(args, "json", False))
        self._client: Arker | None = None

    @property
    def client(self) -> Arker:
        if self._client is None:
            from .._client import Arker

            self._client = Arker(
                api_key=self.args.api_key,
                base_url=self.args.base_url,
                control_url=self.args.control_url,
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def vm_id(self, ref: str) -> str:
        """A VM named by its id or by its exact name."""
        if looks_like_vm_id(ref):
            return ref
        matches = [vm for vm in self.client.vms.list_all(q=ref) if vm.name == ref]
        if not matches:
            raise CliError("not_found", f"no VM has the id or name {ref!r}", 404)
        if len(matches) > 1:
            ids = ", ".join(vm.vm_id for vm in matches)
            raise CliError("ambiguous", f"{len(matches)} VMs are named {ref!r}: {ids}; use an id")
        return matches[0].vm_id

    def confirm(self, question: str) -> bool:
        """Ask on stderr, read one answer line from stdin; only ``y``/``yes`` agree."""
        sys.stderr.write(f"{question} [y/N] ")
        sys.stderr.flush()
        answer = sys.stdin.readline()
        if not answer:
            sys.stderr.write("\n")
        return answer.strip().lower() in ("y", "yes")

    def out(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def note(self, text: str) -> None:
        """Progress and hints for people: on stderr, so stdout stays data."""
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    @property
    def stderr_is_terminal(self) -> bool:
        return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
