"""(ext) Sync ops ``manifest`` and ``delete``, carried out by the engine from the host.

Both run on the host side against the VM's root handle (``openat2``, as the VM user),
never as a program inside the VM: the VM's code could replace such a program and
forge its answer. See ``arker.local.sandbox.manifest`` for the walk's guarantees.
"""

from __future__ import annotations

from .._constants import HOME_PREFIX
from .._paths import path_problem
from .._wire import ManifestEntry, SyncDeleteResponse, SyncManifestResponse
from .engine_api import EngineLike
from .engine_errors import engine_errors
from .errors import ApiError

MANIFEST_CAP = 10_000
"""Most entries one manifest lists; beyond it the response says ``truncated``."""


def _check_tree(path: str) -> None:
    if path.rstrip("/") + "/" == HOME_PREFIX:
        return
    problem = path_problem(path)
    if problem:
        raise ApiError("bad_request", problem)


class VmFiles:
    """Listing and deleting files of a VM.

    Args:
        engine: Walks and unlinks inside the VM's tree.
    """

    def __init__(self, engine: EngineLike) -> None:
        self._engine = engine

    def manifest(self, vm_id: str, path: str) -> SyncManifestResponse:
        """Every regular file under ``path`` with size, permission bits and sha256."""
        _check_tree(path)
        with engine_errors():
            found, truncated = self._engine.manifest(vm_id, path.rstrip("/"), MANIFEST_CAP)
        entries = [
            ManifestEntry(path=p, size=size, mode=mode, sha256=digest)
            for p, size, mode, digest in found
        ]
        return SyncManifestResponse(entries=entries, truncated=truncated)

    def delete(self, vm_id: str, paths: list[str]) -> SyncDeleteResponse:
        """Unlink files in order; paths already absent are not an error and are not listed.

        The first path that cannot be deleted (a directory, a file in the way, a
        read-only place) ends the request with its error; the paths before it are gone,
        so a retry (absent paths being no error) finishes the rest.
        """
        for path in paths:
            problem = path_problem(path)
            if problem:
                raise ApiError("bad_request", problem)
        with engine_errors():
            deleted = self._engine.delete_files(vm_id, paths)
        return SyncDeleteResponse(deleted=deleted)
