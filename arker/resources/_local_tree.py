"""The local side of directory sync: walking a tree, ignore patterns, safe targets.

Symbolic links are never followed: a link found while walking is reported, not entered,
and nothing is written through a link on the way to a target.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from .._exceptions import ResponseValidationError, refused_before_sending

__all__ = ["Ignore", "LocalFile", "matcher", "safe_local_target", "walk_local"]

Ignore = Union[Iterable[str], Callable[[str], bool], None]
"""Glob patterns matched against each relative path and its last component (e.g.
``[".git", "*.pyc"]``; a matching directory is skipped whole), or a predicate taking
the relative POSIX path."""


@dataclass(frozen=True)
class LocalFile:
    """A regular file under the walked root."""

    rel: str  # relative POSIX path
    path: Path
    size: int
    mode: int  # permission bits


def matcher(ignore: Ignore) -> Callable[[str], bool]:
    """A predicate on relative paths from what the user passed as ``ignore``."""
    if ignore is None:
        return lambda rel: False
    if callable(ignore):
        return ignore
    patterns = [ignore] if isinstance(ignore, str) else list(ignore)

    def ignored(rel: str) -> bool:
        name = rel.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)

    return ignored


def walk_local(root: Path, ignored: Callable[[str], bool], links: list[str]) -> Iterator[LocalFile]:
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
                yield LocalFile(rel, base / name, st.st_size, stat.S_IMODE(st.st_mode))


def safe_local_target(root: Path, rel: str) -> Path:
    """``root/rel``, refusing anything that would land outside ``root`` (``..``, absolute
    names, or a parent directory that is a symbolic link).

    Raises:
        ResponseValidationError: ``rel`` (from the server's manifest) is not a plain
            relative path.
        BadRequestError: The way to the target goes through a symbolic link (status 0:
            nothing was sent).
    """
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
