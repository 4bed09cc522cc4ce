"""Directory sync: send only what differs, found through the server's manifest.

`push_dir` walks a local tree, asks the VM for a manifest of the remote tree (path,
size, mode, sha256 of every regular file) and sends only the files whose content or
mode differ. Small files travel many to a request; large ones stream one by one.
`pull_dir` is the mirror image. Symbolic links are never followed, on either side: a
link in the local tree is skipped, and nothing is ever written through a link that
leaves the destination tree.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from .._exceptions import ArkerError, ResponseValidationError, refused_before_sending
from .._models import DirSyncResult
from .._paths import dir_problem
from .._streams import file_sha256
from .._wire import (
    ManifestEntry,
    SyncDeleteRequest,
    SyncDeleteResponse,
    SyncManifestRequest,
    SyncManifestResponse,
    WriteEntry,
)
from .vms import vm_path

if TYPE_CHECKING:
    from .sync import SyncResource

__all__ = ["Ignore", "pull_dir", "push_dir"]

Ignore = Union[Iterable[str], Callable[[str], bool], None]
"""Glob patterns matched against each relative path and its last component (e.g.
``[".git", "*.pyc"]``; a matching directory is skipped whole), or a predicate taking
the relative POSIX path."""

# Files up to this size are batched, many to one request; larger ones stream alone.
_BATCH_FILE_MAX = 1024 * 1024
_BATCH_BYTES = 8 * 1024 * 1024
_BATCH_ENTRIES = 64
_DELETE_BATCH = 1000


@dataclass(frozen=True)
class _LocalFile:
    rel: str
    path: Path
    size: int
    mode: int


def _matcher(ignore: Ignore) -> Callable[[str], bool]:
    if ignore is None:
        return lambda rel: False
    if callable(ignore):
        return ignore
    patterns = [ignore] if isinstance(ignore, str) else list(ignore)

    def ignored(rel: str) -> bool:
        name = rel.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)

    return ignored


def _remote_root(remote_dir: str) -> str:
    problem = dir_problem(remote_dir)
    if problem is not None:
        raise refused_before_sending(problem)
    return remote_dir.rstrip("/") + "/"


def _walk_local(
    root: Path, ignored: Callable[[str], bool], links: list[str]
) -> Iterator[_LocalFile]:
    """Regular files under ``root``, sorted; links are recorded in ``links``, not followed."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        rel_base = base.relative_to(root).as_posix()
        prefix = "" if rel_base == "." else rel_base + "/"
        keep = []
        for d in sorted(dirnames):
            rel = prefix + d
            if (base / d).is_symlink():
                links.append(rel)
            elif not ignored(rel):
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = prefix + name
            if ignored(rel):
                continue
            st = os.lstat(base / name)
            if stat.S_ISLNK(st.st_mode):
                links.append(rel)
            elif stat.S_ISREG(st.st_mode):
                yield _LocalFile(rel, base / name, st.st_size, stat.S_IMODE(st.st_mode))


def _manifest(sync: SyncResource, vm_id: str, remote_root: str) -> dict[str, ManifestEntry]:
    wire = sync._client.call(
        "POST",
        vm_path(vm_id, "/sync"),
        SyncManifestResponse,
        body=SyncManifestRequest(path=remote_root.rstrip("/") or "/"),
    )
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


def _same(entry: ManifestEntry | None, size: int, mode: int, sha256: Callable[[], str]) -> bool:
    if entry is None or entry.size != size or stat.S_IMODE(entry.mode) & 0o777 != mode & 0o777:
        return False
    return entry.sha256 == sha256()


def push_dir(
    sync: SyncResource,
    vm_id: str,
    local_dir: str | os.PathLike[str],
    remote_dir: str,
    *,
    delete: bool,
    ignore: Ignore,
) -> DirSyncResult:
    from .sync import inline_entry

    root = Path(local_dir)
    if not root.is_dir():
        raise refused_before_sending(f"not a local directory: {root}")
    remote_root = _remote_root(remote_dir)
    ignored = _matcher(ignore)
    links: list[str] = []
    remote = _manifest(sync, vm_id, remote_root)
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
            sync._write_entries(vm_id, list(batch))
            sent.extend(batch_names)
            batch.clear()
            batch_names.clear()
            batch_bytes = 0

    for f in _walk_local(root, ignored, links):
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
            batch.append(inline_entry(target, payload, hashlib.sha256(payload).hexdigest(), f.mode))
            batch_names.append(f.rel)
            batch_bytes += len(payload)
        else:
            flush()
            sync.write(vm_id, target, f.path, mode=f.mode)
            sent.append(f.rel)
        bytes_sent += f.size
    flush()
    deleted: list[str] = []
    if delete:
        stale = sorted(rel for rel in remote if rel not in seen and not ignored(rel))
        for i in range(0, len(stale), _DELETE_BATCH):
            chunk = stale[i : i + _DELETE_BATCH]
            sync._client.call(
                "POST",
                vm_path(vm_id, "/sync"),
                SyncDeleteResponse,
                body=SyncDeleteRequest(paths=[remote_root + rel for rel in chunk]),
            )
            deleted.extend(chunk)
    return DirSyncResult(
        sent=sent, skipped=skipped, deleted=deleted, bytes_sent=bytes_sent, symlinks_skipped=links
    )


def _safe_local_target(root: Path, rel: str) -> Path:
    """``root/rel``, refusing anything that would land outside ``root`` (``..``, absolute
    names, or a parent directory that is a symbolic link)."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ResponseValidationError(f"unsafe path in manifest: {rel!r}")
    current = root
    for part in parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise refused_before_sending(f"refusing to write through the symbolic link {current}")
    target = current / parts[-1]
    if target.is_symlink():
        raise refused_before_sending(f"refusing to replace the symbolic link {target}")
    return target


def pull_dir(
    sync: SyncResource,
    vm_id: str,
    remote_dir: str,
    local_dir: str | os.PathLike[str],
    *,
    delete: bool,
    ignore: Ignore,
    durable: bool = False,
) -> DirSyncResult:
    root = Path(local_dir)
    root.mkdir(parents=True, exist_ok=True)
    remote_root = _remote_root(remote_dir)
    ignored = _matcher(ignore)
    remote = _manifest(sync, vm_id, remote_root)
    sent: list[str] = []
    skipped: list[str] = []
    bytes_sent = 0
    for rel, entry in sorted(remote.items()):
        if ignored(rel):
            continue
        target = _safe_local_target(root, rel)
        mode = stat.S_IMODE(entry.mode) & 0o777
        if target.is_file():
            st = target.stat()
            local_sha = functools.partial(file_sha256, target)
            if _same(entry, st.st_size, stat.S_IMODE(st.st_mode), local_sha):
                skipped.append(rel)
                continue
        target.parent.mkdir(parents=True, exist_ok=True)
        bytes_sent += sync.read_to(vm_id, remote_root + rel, target, durable=durable)
        os.chmod(target, mode)
        sent.append(rel)
    links: list[str] = []
    deleted: list[str] = []
    if delete:
        for f in list(_walk_local(root, ignored, links)):
            if f.rel not in remote:
                f.path.unlink()
                deleted.append(f.rel)
    return DirSyncResult(
        sent=sent, skipped=skipped, deleted=deleted, bytes_sent=bytes_sent, symlinks_skipped=links
    )
