"""Helpers shared by the sandbox engine tests."""

from __future__ import annotations

import contextlib
import secrets

from arker.local.sandbox import Engine, SandboxError


def put_file(eng: Engine, vm_id: str, path: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` the way the server does: room check, staged, committed."""
    eng.check_room(vm_id, len(data))
    name = secrets.token_hex(20)
    try:
        with eng.staged_file(vm_id, name) as staged:
            staged.truncate(0)
            staged.pwrite([data], 0)
            staged.fsync()
        eng.commit_staged(vm_id, name, path, len(data), mode)
    except BaseException:
        with contextlib.suppress(SandboxError):
            eng.discard_staged(vm_id, name)
        raise
