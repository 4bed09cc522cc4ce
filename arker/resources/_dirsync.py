"""Directory sync: send only what differs, found through the server's manifest.

`DirSync.push` walks a local tree, asks the VM for a manifest of the remote tree (path,
size, mode, sha256 of every regular file) and sends only the files whose content or
mode differ. Small files travel many to a request; large ones stream one by one.
`DirSync.pull` is the mirror image. Symbolic links are never followed, on either side
(see `arker.resources._local_tree`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

from .._exceptions import ArkerError, ResponseValidationError, refused_before_sending
from .._models import DirSyncResult
from .._paths import dir_problem
from .._streams import file_sha256
from .._wire import ManifestEntry, WriteEntry
from ._file_transfer import FileTransfer
from ._local_tree import Ignore, matcher, safe_local_target, walk_local
from ._sync_route import SyncRoute, inline_entry

__all__ = ["DirSync", "Ignore"]

# Files up to this size are batched, many to one request; larger ones stream alone.
_BATCH_FILE_MAX = 1024 * 1024
_BATCH_BYTES = 8 * 1024 * 1024
_BATCH_ENTRIES = 64
_DELETE_BATCH = 1000


def _remote_root(remote_dir: str) -> str:
    problem = dir_problem(remote_dir)
    if problem is not None:
        raise refused_before_sending(problem)
    return remote_dir.rstrip("/") + "/"


def _same(entry: ManifestEntry | None, size: int, mode: int, sha256: Callable[[], str]) -> bool:
    if entry is None or entry.size != size or stat.S_IMODE(entry.mode) & 0o777 != mode & 0o777:
        return False
    return entry.sha256 == sha256()


class DirSync:
    """Push and pull whole directories.

    Args:
        route: The sync route (manifests, batched writes, deletes).
        files: Single-file transfers, for files too large to batch and for downloads.
    """

    def __init__(self, route: SyncRoute, files: FileTransfer) -> None:
        self._route = route
        self._files = files

    def _manifest(self, vm_id: str, remote_root: str) -> dict[str, ManifestEntry]:
        """The remote tree's files by path relative to ``remote_root``."""
        wire = self._route.manifest(vm_id, remote_root.rstrip("/") or "/")
        if wire.truncated:
            raise ArkerError(
                "manifest_truncated",
                f"{remote_root} holds more files than the server lists in one manifest",
                0,
            )
        entries: dict[str, ManifestEntry] = {}
        for entry in wire.entries:
            if not entry.path.startswith(remote_root):
                raise ResponseValidationError(f"manifest entry outside {remote_root}: {entry.path}")
            entries[entry.path[len(remote_root) :]] = entry
        return entries

    def push(
        self,
        vm_id: str,
        local_dir: str | os.PathLike[str],
        remote_dir: str,
        *,
        delete: bool,
        ignore: Ignore,
    ) -> DirSyncResult:
        """Make ``remote_dir`` hold the files of ``local_dir``; see `SyncResource.push_dir`."""
        root = Path(local_dir)
        if not root.is_dir():
            raise refused_before_sending(f"not a local directory: {root}")
        remote_root = _remote_root(remote_dir)
        ignored = matcher(ignore)
        links: list[str] = []
        remote = self._manifest(vm_id, remote_root)
        sent: list[str] = []
        skipped: list[str] = []
        seen: set[str] = set()
        bytes_sent = 0
        batch: list[WriteEntry] = []
        batch_names: list[str] = []
        batch_bytes = 0

        def flush() -> None:
            nonlocal batch_bytes
            if batch:
                self._route.write(vm_id, list(batch))
                sent.extend(batch_names)
                batch.clear()
                batch_names.clear()
                batch_bytes = 0

        for f in walk_local(root, ignored, links):
            seen.add(f.rel)
            digest: list[str] = []

            def sha(path: Path = f.path, memo: list[str] = digest) -> str:
                if not memo:
                    memo.append(file_sha256(path))
                return memo[0]

            if _same(remote.get(f.rel), f.size, f.mode, sha):
                skipped.append(f.rel)
                continue
            target = remote_root + f.rel
            if f.size <= _BATCH_FILE_MAX:
                payload = f.path.read_bytes()
                if batch_bytes + len(payload) > _BATCH_BYTES or len(batch) >= _BATCH_ENTRIES:
                    flush()
                sha256 = hashlib.sha256(payload).hexdigest()
                batch.append(inline_entry(target, payload, sha256, f.mode))
                batch_names.append(f.rel)
                batch_bytes += len(payload)
            else:
                flush()
                self._files.write(vm_id, target, f.path, f.mode, None)
                sent.append(f.rel)
            bytes_sent += f.size
        flush()
        deleted: list[str] = []
        if delete:
            stale = sorted(rel for rel in remote if rel not in seen and not ignored(rel))
            for i in range(0, len(stale), _DELETE_BATCH):
                chunk = stale[i : i + _DELETE_BATCH]
                self._route.delete(vm_id, [remote_root + rel for rel in chunk])
                deleted.extend(chunk)
        return DirSyncResult(
            transferred=sent,
            skipped=skipped,
            deleted=deleted,
            bytes_transferred=bytes_sent,
            symlinks_skipped=links,
        )

    def pull(
        self,
        vm_id: str,
        remote_dir: str,
        local_dir: str | os.PathLike[str],
        *,
        delete: bool,
        ignore: Ignore,
        durable: bool,
    ) -> DirSyncResult:
        """Make ``local_dir`` hold the files of ``remote_dir``; see `SyncResource.pull_dir`."""
        root = Path(local_dir)
        root.mkdir(parents=True, exist_ok=True)
        remote_root = _remote_root(remote_dir)
        ignored = matcher(ignore)
        remote = self._manifest(vm_id, remote_root)
        received: list[str] = []
        skipped: list[str] = []
        bytes_received = 0
        for rel, entry in sorted(remote.items()):
            if ignored(rel):
                continue
            target = safe_local_target(root, rel)
            mode = stat.S_IMODE(entry.mode) & 0o777
            if target.is_file():
                st = target.stat()
                local_sha = functools.partial(file_sha256, target)
                if _same(entry, st.st_size, stat.S_IMODE(st.st_mode), local_sha):
                    skipped.append(rel)
                    continue
            target.parent.mkdir(parents=True, exist_ok=True)
            bytes_received += self._files.read_to(vm_id, remote_root + rel, target, None, durable)
            os.chmod(target, mode)
            received.append(rel)
        links: list[str] = []
        deleted: list[str] = []
        if delete:
            for f in list(walk_local(root, ignored, links)):
                if f.rel not in remote:
                    f.path.unlink()
                    deleted.append(f.rel)
        return DirSyncResult(
            transferred=received,
            skipped=skipped,
            deleted=deleted,
            bytes_transferred=bytes_received,
            symlinks_skipped=links,
        )
