"""The slice of the sandbox engine's facade that the HTTP layer relies on.

Typed as a `Protocol` so the routes can be checked (and exercised with a stand-in)
independently of `arker.local.sandbox`, which is built separately.
"""

from __future__ import annotations

from typing import BinaryIO, Protocol


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


class EngineLike(Protocol):
    """Blocking VM operations; every method may raise ``SandboxError(code, message)``."""

    def ensure_base(self, vm_id: str) -> None: ...

    def exists(self, vm_id: str) -> bool: ...

    def vm_ids(self) -> set[str]: ...

    def fork(self, parent_id: str, child_id: str) -> None: ...

    def delete(self, vm_id: str) -> None: ...

    def run(
        self, vm_id: str, command: str, *, session: str, timeout: float | None
    ) -> RunOutcomeLike: ...

    def open_read(self, vm_id: str, path: str) -> tuple[BinaryIO, int]: ...

    def write_file(
        self, vm_id: str, path: str, src: BinaryIO, size: int, mode: int = 0o644
    ) -> None: ...

    def gc(self, live_vm_ids: set[str]) -> None: ...

    def close(self) -> None: ...


def sandbox_error_parts(exc: BaseException) -> tuple[str, str] | None:
    """``(code, message)`` of a ``SandboxError``, or None for any other exception.

    Duck-typed so this module does not import the engine package.
    """
    if not any(cls.__name__ == "SandboxError" for cls in type(exc).__mro__):
        return None
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None) or str(exc)
    return (str(code) if code else "internal", str(message))


__all__ = ["EngineLike", "RunOutcomeLike", "sandbox_error_parts"]
