"""(ext) Sync ops ``manifest`` and ``delete``, carried out inside the VM's sandbox.

The engine's facade has no listing or unlink call, so these run a small Python
program in the VM itself (as the VM user, in a private session). Running inside the
sandbox is what makes them safe: a symbolic link in the VM can only ever resolve
within the VM.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from .._constants import HOME_PREFIX
from .._paths import path_problem
from .._wire import ManifestEntry, SyncDeleteResponse, SyncManifestResponse
from .engine_api import EngineLike
from .engine_errors import engine_errors
from .errors import ApiError

MANIFEST_CAP = 10_000
"""Most entries one manifest lists; beyond it the response says ``truncated``."""

_SESSION = "__arker_sync"
_DELETE_BATCH = 200  # keeps each command line far below ARG_MAX
_TIMEOUT_S = 600.0

_MANIFEST_PY = r"""
import hashlib, json, os, stat, sys
root, cap = sys.argv[1], int(sys.argv[2])
out, truncated = [], False
def add(p):
    global truncated
    st = os.lstat(p)
    if not stat.S_ISREG(st.st_mode):
        return
    if len(out) >= cap:
        truncated = True
        return
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    out.append([p, st.st_size, stat.S_IMODE(st.st_mode), h.hexdigest()])
real = os.path.realpath(root)
if os.path.islink(root) or not (real == "/home/user" or real.startswith("/home/user/")):
    pass  # links are never followed: not the root, nor a parent leading out of home
elif os.path.isfile(root):
    add(root)
else:
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            try:
                add(os.path.join(d, name))
            except OSError:
                pass
print(json.dumps({"entries": out, "truncated": truncated}))
"""

_DELETE_PY = r"""
import json, os, sys
deleted = []
for p in sys.argv[1:]:
    try:
        os.unlink(p)
        deleted.append(p)
    except FileNotFoundError:
        pass
    except (IsADirectoryError, PermissionError):
        pass
print(json.dumps(deleted))
"""


def _check_tree(path: str) -> None:
    if path.rstrip("/") + "/" == HOME_PREFIX:
        return
    problem = path_problem(path)
    if problem:
        raise ApiError("bad_request", problem)


class VmFiles:
    """Listing and deleting files of a VM via a program run inside it.

    Args:
        engine: Runs the helper programs.
    """

    def __init__(self, engine: EngineLike) -> None:
        self._engine = engine

    def manifest(self, vm_id: str, path: str) -> SyncManifestResponse:
        """Every regular file under ``path`` with size, permission bits and sha256."""
        _check_tree(path)
        data = self._python(vm_id, _MANIFEST_PY, [path.rstrip("/"), str(MANIFEST_CAP)])
        entries = [
            ManifestEntry(path=p, size=size, mode=mode, sha256=digest)
            for p, size, mode, digest in data["entries"]
        ]
        return SyncManifestResponse(entries=entries, truncated=bool(data["truncated"]))

    def delete(self, vm_id: str, paths: list[str]) -> SyncDeleteResponse:
        """Unlink files; paths already absent are not an error and are not listed."""
        for path in paths:
            problem = path_problem(path)
            if problem:
                raise ApiError("bad_request", problem)
        deleted: list[str] = []
        for i in range(0, len(paths), _DELETE_BATCH):
            deleted.extend(self._python(vm_id, _DELETE_PY, paths[i : i + _DELETE_BATCH]))
        return SyncDeleteResponse(deleted=deleted)

    def _python(self, vm_id: str, program: str, args: list[str]) -> Any:
        command = shlex.join(["python3", "-c", program, *args])
        with engine_errors():
            outcome = self._engine.run(vm_id, command, session=_SESSION, timeout=_TIMEOUT_S)
        if outcome.exit_code != 0 or outcome.stdout_truncated or outcome.timed_out:
            detail = outcome.stderr.decode(errors="replace").strip().splitlines()[-1:]
            raise ApiError("internal", f"in-VM file helper failed: {' '.join(detail)}")
        return json.loads(outcome.stdout)
