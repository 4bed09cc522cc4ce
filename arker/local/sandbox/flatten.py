"""Flattening: merge a stack of frozen layers into one, with overlay's semantics.

A chain of layers grows by one at every fork; past `layers.FLATTEN_THRESHOLD` the
store merges the frozen layers into a new one so that mounts stay cheap and the
overlay option string stays short. Files are hard links to the originals (layers are
immutable, so sharing inodes is safe); directories are recreated. Whiteouts and
opaque markers (``user.overlay.*``, the ``userxattr`` form) are kept only where they
still hide something in the base image below the merged layer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path

from .volume import clone_file

__all__ = ["merge_layers"]

_OPAQUE = "user.overlay.opaque"


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, _OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _lexists(path: Path) -> bool:
    try:
        os.lstat(path)
    except OSError:
        return False
    return True


def _isdir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _copy_user_xattrs(src: str, dst: str) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        # Overlay's own markers are recomputed; anything else the VM set is kept.
        if name.startswith(("user.overlay.", "trusted.overlay.")):
            continue
        with contextlib.suppress(OSError):
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False))


def _link(src: str, dst: str, copies: dict[tuple[int, int], str]) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EMLINK, errno.EXDEV):
            raise
        # The inode hit the filesystem's link limit, or (btrfs storage) lives in
        # another subvolume: copy it instead, a reflink when possible; once per inode
        # (``copies``: source inode -> its copy), its other names link to the copy.
        st = os.lstat(src)
        key = (st.st_dev, st.st_ino)
        first = copies.get(key) if st.st_nlink > 1 else None
        if first is not None:
            try:
                os.link(first, dst, follow_symlinks=False)
                return
            except OSError as again:
                if again.errno != errno.EMLINK:
                    raise
        if st.st_nlink > 1:
            copies[key] = dst
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
        elif not stat.S_ISREG(st.st_mode):
            os.mknod(dst, st.st_mode, st.st_rdev)
        else:
            try:
                clone_file(src, dst)
            except OSError:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(dst)
                shutil.copy2(src, dst, follow_symlinks=False)
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)


def _merge_dir(
    srcs: list[str],
    out: str,
    base: Path | None,
    base_visible: bool,
    copies: dict[tuple[int, int], str],
) -> None:
    """Merge directory ``srcs`` (topmost first) into ``out`` with overlay semantics.

    ``base_visible`` says whether the base layer's directory at this path will be
    merged under ``out`` at mount time. Whiteouts are emitted only then and only for
    names the base has: in a directory nothing below contributes to, overlay lists
    the directory raw and a whiteout would show up as a broken ``c?????????`` entry.
    """
    seen: set[str] = set()
    for i, src in enumerate(srcs):
        with os.scandir(src) as it:
            entries = list(it)
        for entry in entries:
            name = entry.name
            if name in seen:
                continue
            seen.add(name)
            st = entry.stat(follow_symlinks=False)
            dst = os.path.join(out, name)
            below = base / name if base is not None else None
            if _is_whiteout(st):
                if base_visible and below is not None and _lexists(below):
                    os.mknod(dst, stat.S_IFCHR | 0o000, 0)
                continue
            if not stat.S_ISDIR(st.st_mode):
                _link(entry.path, dst, copies)
                continue
            chain = [entry.path]
            hides = _is_opaque(entry.path)
            if not hides:
                for lower in srcs[i + 1 :]:
                    p = os.path.join(lower, name)
                    try:
                        lst = os.lstat(p)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(lst.st_mode):
                        chain.append(p)
                        if _is_opaque(p):
                            hides = True
                            break
                    else:  # a file or whiteout ends the directory's history
                        hides = True
                        break
            os.mkdir(dst, 0o700)
            child_base_visible = base_visible and not hides and below is not None and _isdir(below)
            if base_visible and hides and below is not None and _lexists(below):
                os.setxattr(dst, _OPAQUE, b"y")
            _merge_dir(chain, dst, below, child_base_visible, copies)
            os.chown(dst, st.st_uid, st.st_gid)
            os.chmod(dst, stat.S_IMODE(st.st_mode))
            _copy_user_xattrs(entry.path, dst)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def merge_layers(srcs_top_first: list[Path], base_dir: Path | None, out: Path) -> None:
    """Flatten layers into ``out`` (an existing empty directory).

    Regular files, symlinks and special files are hard links to the originals (layers
    are immutable, so sharing inodes is safe); where that cannot be (btrfs: another
    subvolume) each inode is cloned once and its other names are links to the clone.
    Directories are recreated with their owner, mode, times and non-overlay xattrs.
    """
    srcs = [str(p) for p in srcs_top_first]
    _merge_dir(srcs, str(out), base_dir, base_dir is not None, {})
