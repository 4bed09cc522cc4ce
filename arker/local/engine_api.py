"""The slice of the sandbox engine's facade that the HTTP layer relies on.

Typed as a `Protocol` so the routes can be checked (and exercised with a stand-in)
independently of `arker.local.sandbox`, which is built separately. The error the
engine raises lives here too, so the HTTP layer can recognise it with `isinstance`
without importing the engine package.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO, Protocol


class SandboxError(Exception):
    """A request-level failure with a wire error code.

    The server maps the codes one-to-one onto wire error codes.

    Attributes:
        code: One of ``not_found``, ``vm_busy``, ``bad_request``, ``payload_too_large``,
            ``internal``.
        message: Human-readable text, safe to show to the API caller.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RunOutcomeLike(Protocol):
    """What `engine.run` returns (read-only: the engine's is a frozen dataclass)."""

    @property
    def stdout(self) -> bytes: ...
    @property
    def stderr(self) -> bytes: ...
    @property
    def exit_code(self) -> int: ...
    @property
    def duration_ms(self) -> float: ...
    @property
    def cwd(self) -> str: ...
    @property
    def timed_out(self) -> bool: ...
    @property
    def stdout_truncated(self) -> bool: ...
    @property
    def stderr_truncated(self) -> bool: ...


class LiveSinkLike(Protocol):
    """A live run's output files and stop button (``arker.local.sandbox.live.LiveSink``)."""

    @property
    def started(self) -> bool: ...
    @property
    def cancelled(self) -> bool: ...
    @property
    def sizes(self) -> dict[str, int]: ...
    @property
    def truncated(self) -> dict[str, bool]: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...


class StagedFileLike(Protocol):
    """An upload being staged inside a VM (see ``arker.local.sandbox.staging``)."""

    def pwrite(self, blocks: Sequence[bytes], offset: int) -> None: ...
    def truncate(self, length: int) -> None: ...
    def fsync(self) -> None: ...
    def read_blocks(self, length: int) -> Iterator[bytes]: ...
    def close(self) -> None: ...
    def __enter__(self) -> StagedFileLike: ...
    def __exit__(self, *exc: object) -> None: ...


class StopButtonLike(Protocol):
    """A terminal's stop button: readable `wake_fd` once delete or close stopped it."""

    @property
    def wake_fd(self) -> int: ...


class PtyShellLike(Protocol):
    """A terminal `engine.open_pty` started (sandbox/pty.py)."""

    @property
    def master_fd(self) -> int: ...
    @property
    def stop(self) -> StopButtonLike: ...
    def resize(self, cols: int, rows: int) -> None: ...
    def kill(self) -> None: ...
    def close(self) -> None: ...


class DiffChangeLike(Protocol):
    """One changed path of a fork diff (the sandbox's ``diff.Change``)."""

    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def mode(self) -> int: ...
    @property
    def sha256(self) -> str | None: ...


class DiffLike(Protocol):
    """A fork diff (the sandbox's ``diff.DiffResult``)."""

    @property
    def added(self) -> Sequence[DiffChangeLike]: ...
    @property
    def modified(self) -> Sequence[DiffChangeLike]: ...
    @property
    def deleted(self) -> Sequence[DiffChangeLike]: ...
    @property
    def truncated(self) -> bool: ...


class EngineLike(Protocol):
    """Blocking VM operations; every method may raise ``SandboxError(code, message)``."""

    def ensure_base(self, vm_id: str) -> None: ...

    def exists(self, vm_id: str) -> bool: ...

    def vm_ids(self) -> set[str]: ...

    def fork(self, parent_id: str, child_id: str) -> None: ...

    def delete(self, vm_id: str) -> None: ...

    def run(
        self,
        vm_id: str,
        command: str,
        *,
        session: str,
        timeout: float,
        sink: Any = None,  # a live run's LiveSink (made by the sandbox package)
    ) -> RunOutcomeLike: ...

    def open_pty(
        self, vm_id: str, *, session: str, command: str | None, cols: int, rows: int
    ) -> PtyShellLike: ...

    def open_read(self, vm_id: str, path: str) -> tuple[BinaryIO, int]: ...

    def open_connection(self, vm_id: str, port: int) -> socket.socket: ...

    def manifest(
        self, vm_id: str, path: str, cap: int
    ) -> tuple[list[tuple[str, int, int, str]], bool]: ...

    def delete_files(self, vm_id: str, paths: list[str]) -> list[str]: ...

    def diff(self, vm_id: str, path: str) -> DiffLike: ...

    def check_room(self, vm_id: str, size: int) -> None: ...

    def staged_file(self, vm_id: str, name: str) -> StagedFileLike: ...

    def commit_staged(
        self, vm_id: str, name: str, path: str, size: int, mode: int = 0o644
    ) -> None: ...

    def discard_staged(self, vm_id: str, name: str) -> None: ...

    def gc(self, live_vm_ids: set[str]) -> None: ...

    def close(self) -> None: ...


def sandbox_error_parts(exc: BaseException) -> tuple[str, str] | None:
    """``(code, message)`` of a `SandboxError`, or None for any other exception."""
    if not isinstance(exc, SandboxError):
        return None
    return (exc.code or "internal", exc.message or str(exc))


__all__ = [
    "EngineLike",
    "LiveSinkLike",
    "RunOutcomeLike",
    "SandboxError",
    "StagedFileLike",
    "sandbox_error_parts",
]
