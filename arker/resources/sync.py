"""``client.sync``: move files in and out of a VM, streaming, verified, resumable.

This class is the public face; the work is done by `FileTransfer` (one file, inline or
presigned: ``_file_transfer.py``), `DirSync` (whole directories through the server's
manifest: ``_dirsync.py``) and `SyncRoute` (the requests of the sync route:
``_sync_route.py``).
"""

from __future__ import annotations

import os
from typing import IO

from .._base_client import BaseClient
from .._models import DirSyncResult
from .._streams import DataSource, ProgressCallback
from ._dirsync import DirSync
from ._file_transfer import FileTransfer, check_path
from ._local_tree import Ignore
from ._resource import Resource
from ._sync_route import SyncRoute

__all__ = ["SyncResource", "check_path"]


class SyncResource(Resource):
    """File transfer for VMs. Paths must be absolute and under ``/home/user/``."""

    def __init__(self, client: BaseClient) -> None:
        super().__init__(client)
        self._route = SyncRoute(client)
        self._files = FileTransfer(self._route, client.presigned)
        self._dirs = DirSync(self._route, self._files)

    # -- reads -----------------------------------------------------------------------

    def read(self, vm_id: str, path: str, *, progress: ProgressCallback | None = None) -> bytes:
        """Return the bytes of the file at ``path`` in the VM.

        Args:
            vm_id: The VM.
            path: Absolute path under ``/home/user/``.
            progress: Called with ``(bytes_done, bytes_total)`` as bytes arrive.

        Raises:
            NotFoundError: No such file.
            BadRequestError: ``path`` breaks the path rules (no request is made).
            ResponseValidationError: The bytes do not match the size or sha256 the
                server announced.
        """
        return self._files.read(vm_id, path, progress)

    def read_to(
        self,
        vm_id: str,
        path: str,
        dest: str | os.PathLike[str] | IO[bytes],
        *,
        progress: ProgressCallback | None = None,
        durable: bool = False,
    ) -> int:
        """Stream the file at ``path`` into a local path or binary file; return its size.

        A download to a path lands atomically: the bytes go to a temporary file beside
        ``dest``, are verified, then renamed over it. An interrupted or corrupt download
        never leaves a truncated file under ``dest``, even if the process is killed.

        Args:
            vm_id: The VM.
            path: Absolute path under ``/home/user/``.
            dest: A local path, or a binary file object (written from its position).
            progress: Called with ``(bytes_done, bytes_total)`` as bytes arrive.
            durable: Also survive a power cut or kernel crash: fsync the file before
                the rename and its directory after it (as ``rsync --fsync`` does).
                Off by default, as in curl, wget and rsync: it about doubles the time
                of a large download to a fast disk. Ignored for file objects.

        Raises:
            NotFoundError: No such file.
            BadRequestError: ``path`` breaks the path rules (no request is made).
            ResponseValidationError: The bytes do not match the size or sha256 the
                server announced; nothing is left under ``dest``.
        """
        return self._files.read_to(vm_id, path, dest, progress, durable)

    # -- directories -----------------------------------------------------------------

    def push_dir(
        self,
        vm_id: str,
        local_dir: str | os.PathLike[str],
        remote_dir: str,
        *,
        delete: bool = False,
        ignore: Ignore = None,
    ) -> DirSyncResult:
        """Make ``remote_dir`` in the VM hold the files of ``local_dir``.

        Only files whose sha256 or mode differ from the VM's copy are sent (the VM's
        side is read from a server-side manifest). Modes are kept. Symbolic links in
        the local tree are skipped and reported, never followed.

        Args:
            vm_id: The VM.
            local_dir: The local directory to send.
            remote_dir: Destination under ``/home/user`` (created as needed).
            delete: Also delete files under ``remote_dir`` that ``local_dir`` lacks.
            ignore: Glob patterns (``[".git", "*.pyc"]``) or a predicate on relative
                paths; ignored files are neither sent nor deleted.

        Returns:
            What was sent, skipped and deleted, and how many bytes moved.
        """
        return self._dirs.push(vm_id, local_dir, remote_dir, delete=delete, ignore=ignore)

    def pull_dir(
        self,
        vm_id: str,
        remote_dir: str,
        local_dir: str | os.PathLike[str],
        *,
        delete: bool = False,
        ignore: Ignore = None,
        durable: bool = False,
    ) -> DirSyncResult:
        """Make ``local_dir`` hold the files of ``remote_dir`` in the VM.

        Only files whose sha256 or mode differ are downloaded, each landing
        atomically. Nothing is written through a symbolic link in ``local_dir``.

        Args:
            vm_id: The VM.
            remote_dir: Source directory under ``/home/user``.
            local_dir: Local destination (created as needed).
            delete: Also delete local files that ``remote_dir`` lacks.
            ignore: Glob patterns or a predicate on relative paths.
            durable: fsync each downloaded file, as `read_to` does with it.

        Returns:
            What was downloaded, skipped and deleted, and how many bytes moved.
        """
        return self._dirs.pull(
            vm_id, remote_dir, local_dir, delete=delete, ignore=ignore, durable=durable
        )

    # -- writes ----------------------------------------------------------------------

    def write(
        self,
        vm_id: str,
        path: str,
        data: DataSource,
        *,
        mode: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Write ``data`` to ``path`` in the VM, replacing the file atomically.

        Returns once the bytes are durably stored and their sha256 checked by the
        server. Paths and file objects are streamed, never read whole into memory.

        Args:
            vm_id: The VM.
            path: Absolute path under ``/home/user/``.
            data: ``bytes``; ``str`` (written as UTF-8 — it is content, not a file
                name); a local path as `os.PathLike` (e.g. `pathlib.Path`); or a binary
                file object, read from its current position. Empty files are allowed.
            mode: Permission bits for the file (e.g. ``0o755``); the server's default
                (``0o644``) when omitted.
            progress: Called with ``(bytes_done, bytes_total)`` as bytes are sent.

        Raises:
            BadRequestError: ``path`` breaks the path rules or ``data`` is unreadable
                (no request is made).
            PayloadTooLargeError: ``data`` exceeds 100 MiB (no request is made).
        """
        self._files.write(vm_id, path, data, mode, progress)
