"""What a fork changed, read from its own overlay layers on the host.

A VM is an overlay of layers; the layers it had when it was forked are its parent's
view as of the fork (``VmMeta.fork_point``). Everything the VM wrote since is in the
layers above them (frozen by its own later forks) and its upper. The diff walks only
those "own" layers: whiteouts (``c 0 0``) are deletions, an opaque directory
(``user.overlay.opaque``, the ``userxattr`` form) hides everything the parent had under
it, and every other non-directory is added, or compared with what the parent's view
holds at that path (type, permission bits, then size and content) so a file merely
copied up, or changed and changed back, is not reported. The work is proportional to
what the VM wrote (plus reading the parent's version of each file it rewrote), not to
the size of the VM.

Safety: each layer's root is opened once; every other name is opened relative to it
with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | …)`` and examined with ``lstat``
on its parent's handle, so no link the VM made is followed and nothing outside the
layers is read. Names the VM chose (``.wh.x``, ``.wh..wh..opq``…) are names, never
markers: only the kernel's own markers (a 0/0 character device; an xattr a VM cannot
set through the overlay) mean anything. Work is bounded by `DIFF_CAP` entries.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SandboxError
from .files import RESOLVE_NO_SYMLINKS_BENEATH, as_fs_user, openat2
from .layers import LayerStore, VmMeta

DIFF_CAP = 100_000
"""Most entries one diff examines (or reports); past it the answer is ``truncated``."""

_OPAQUE = "user.overlay.opaque"
_BLOCK = 1 << 20
_GONE = (
    errno.ENOENT,
    errno.ENOTDIR,
    errno.ELOOP,
    errno.EXDEV,
    errno.EACCES,
    errno.EPERM,
    errno.ENAMETOOLONG,
)


@dataclass(frozen=True)
class Change:
    """One changed path: ``size`` and ``sha256`` describe what is there now (for a
    deleted path: what the parent had, without a digest)."""

    path: str
    size: int
    mode: int
    sha256: str | None


@dataclass
class DiffResult:
    """``added``, ``modified``, ``deleted`` (each sorted by path) and ``truncated``."""

    added: list[Change] = field(default_factory=list)
    modified: list[Change] = field(default_factory=list)
    deleted: list[Change] = field(default_factory=list)
    truncated: bool = False


class _Capped(Exception):
    pass


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _lstat(root: int, rel: str) -> os.stat_result | None:
    """``lstat`` of ``rel`` under the layer root ``root``, no link followed; None if absent."""
    parent, _, name = rel.rpartition("/")
    try:
        fd = openat2(
            root,
            parent or ".",
            os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW,
            resolve=RESOLVE_NO_SYMLINKS_BENEATH,
        )
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        raise
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        raise
    finally:
        os.close(fd)


def _open_dir(root: int, rel: str) -> int | None:
    try:
        return openat2(
            root,
            rel or ".",
            os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
            resolve=RESOLVE_NO_SYMLINKS_BENEATH,
        )
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        raise


def _is_opaque(root: int, rel: str) -> bool:
    """Whether directory ``rel`` of one layer hides the layers below (no listing)."""
    fd = _open_dir(root, rel)
    if fd is None:
        return False
    try:
        return os.getxattr(fd, _OPAQUE) == b"y"
    except OSError:
        return False
    finally:
        os.close(fd)


def _digest(root: int, rel: str) -> tuple[str, int] | None:
    """sha256 and size of the regular file ``rel`` of one layer (None: gone, unreadable)."""
    try:
        fd = openat2(
            root,
            rel,
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY,
            resolve=RESOLVE_NO_SYMLINKS_BENEATH,
        )
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        h, size = hashlib.sha256(), 0
        while block := os.read(fd, _BLOCK):
            h.update(block)
            size += len(block)
        return h.hexdigest(), size
    finally:
        os.close(fd)


def _readlink(root: int, rel: str) -> str | None:
    parent, _, name = rel.rpartition("/")
    fd = _open_dir(root, parent)
    if fd is None:
        return None
    try:
        return os.readlink(name, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)


_Found = tuple[int, os.stat_result]
"""A non-directory entry: the layer root it lives in and its ``lstat``."""


class _View:
    """The merged view of some layers (top first): lookups and listings, overlay rules."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self._dirs: dict[str, tuple[list[int], bool]] = {}  # the last few dir_layers

    def dir_layers(self, rel: str) -> tuple[list[int], bool]:
        """The layers whose directory ``rel`` is part of the view, and whether the view
        is cut there (a whiteout, an opaque directory or a file on the way down):
        below a cut, layers under these ones (another view) are hidden."""
        known = self._dirs.get(rel)
        if known is None:
            if len(self._dirs) >= 64:  # siblings are looked up together: a small memo
                self._dirs.clear()
            known = self._dirs[rel] = self._dir_layers(rel)
        return list(known[0]), known[1]

    def _dir_layers(self, rel: str) -> tuple[list[int], bool]:
        layers, cut = list(self.roots), False
        parts = [p for p in rel.split("/") if p]
        for i in range(len(parts)):
            prefix = "/".join(parts[: i + 1])
            nxt: list[int] = []
            for root in layers:
                st = _lstat(root, prefix)
                if st is None:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    cut = True
                    break
                nxt.append(root)
                if _is_opaque(root, prefix):
                    cut = True
                    break
            layers = nxt
        return layers, cut

    def lookup(self, rel: str) -> _Found | str | None:
        """What the view holds at ``rel``: a non-directory, ``"dir"``, or None."""
        parent = rel.rpartition("/")[0]
        for root in self.dir_layers(parent)[0]:
            st = _lstat(root, rel)
            if st is None:
                continue
            if _is_whiteout(st):
                return None
            return "dir" if stat.S_ISDIR(st.st_mode) else (root, st)
        return None

    def listing(self, layers: list[int], rel: str) -> tuple[dict[str, _Found | str], set[str]]:
        """The merged entries of directory ``rel`` held by ``layers`` (top first), and
        the names a whiteout in them hides."""
        out: dict[str, _Found | str] = {}
        hidden: set[str] = set()
        for root in layers:
            fd = _open_dir(root, rel)
            if fd is None:
                continue
            try:
                try:
                    opaque = os.getxattr(fd, _OPAQUE) == b"y"
                except OSError:
                    opaque = False
                for name in os.listdir(fd):
                    if name in out or name in hidden:
                        continue
                    try:  # relative to the open directory: no path walked, no link followed
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except OSError as exc:
                        if exc.errno in _GONE:
                            continue
                        raise
                    if _is_whiteout(st):
                        hidden.add(name)
                    elif stat.S_ISDIR(st.st_mode):
                        out[name] = "dir"
                    else:
                        out[name] = (root, st)
            finally:
                os.close(fd)
            if opaque:
                break
        return out, hidden - set(out)


class _Differ:
    def __init__(self, own: _View, lower: _View, cap: int) -> None:
        self.own, self.lower, self.cap = own, lower, cap
        self.result = DiffResult()
        self.examined = 0
        self.present: set[str] = set()  # non-directories in the VM's view, by rel path
        self.replaced: list[str] = []  # directories whose lower contents the VM hid

    def count(self) -> None:
        self.examined += 1
        if self.examined > self.cap:
            raise _Capped

    def run(self, rel: str) -> None:
        layers, cut = self.own.dir_layers(rel)
        if cut:
            self.replaced.append(rel)
        pending = [(rel, layers)] if layers else []
        while pending:
            d, dl = pending.pop()
            entries, hidden = self.own.listing(dl, d)
            for name, found in sorted(entries.items()):
                self.count()
                child = f"{d}/{name}" if d else name
                if found == "dir":
                    sub, opaque = self.own.dir_layers(child)
                    lower = self.lower.lookup(child)
                    if opaque or (lower is not None and lower != "dir"):
                        self.replaced.append(child)
                    pending.append((child, sub))
                else:
                    assert not isinstance(found, str)
                    self.present.add(child)
                    self.file(child, found)
            # whiteouts in the VM's layers hide the parent's entries
            self.replaced.extend(f"{d}/{name}" if d else name for name in sorted(hidden))
        for top in self.replaced:
            self.gone(top)

    def file(self, rel: str, found: _Found) -> None:
        root, st = found
        now = self.describe(root, rel, st)
        before = self.lower.lookup(rel)
        if before is None or isinstance(before, str):
            if before == "dir":
                self.gone(rel)
            self.result.added.append(now)
            return
        lroot, lst = before
        if stat.S_IFMT(st.st_mode) != stat.S_IFMT(lst.st_mode) or (
            stat.S_IMODE(st.st_mode) != stat.S_IMODE(lst.st_mode)
        ):
            self.result.modified.append(now)
            return
        if stat.S_ISREG(st.st_mode):
            if st.st_size != lst.st_size:
                self.result.modified.append(now)
            elif (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino):
                old = _digest(lroot, rel)
                if old is None or now.sha256 is None or old[0] != now.sha256:
                    self.result.modified.append(now)
        elif stat.S_ISLNK(st.st_mode):
            if _readlink(root, rel) != _readlink(lroot, rel):
                self.result.modified.append(now)
        elif st.st_rdev != lst.st_rdev:
            self.result.modified.append(now)

    def describe(self, root: int, rel: str, st: os.stat_result) -> Change:
        path, mode = "/" + rel, stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            got = _digest(root, rel)
            if got is not None:
                return Change(path, got[1], mode, got[0])
            return Change(path, st.st_size, mode, None)
        return Change(path, st.st_size if stat.S_ISLNK(st.st_mode) else 0, mode, None)

    def gone(self, rel: str) -> None:
        """Report what the parent had at or under ``rel`` that the VM no longer has."""
        found = self.lower.lookup(rel)
        if found is None:
            return
        if found != "dir":
            assert not isinstance(found, str)
            if rel not in self.present:
                self.deleted(rel, found[1])
            return
        pending = [rel]
        while pending:
            d = pending.pop()
            for name, entry in self.lower.listing(self.lower.dir_layers(d)[0], d)[0].items():
                self.count()
                child = f"{d}/{name}" if d else name
                if entry == "dir":
                    pending.append(child)
                elif child not in self.present:
                    assert not isinstance(entry, str)
                    self.deleted(child, entry[1])

    def deleted(self, rel: str, st: os.stat_result) -> None:
        size = st.st_size if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode) else 0
        self.result.deleted.append(Change("/" + rel, size, stat.S_IMODE(st.st_mode), None))


def diff(own: list[int], lower: list[int], path: str, cap: int = DIFF_CAP) -> DiffResult:
    """What the layers ``own`` (top first) changed over ``lower`` (top first, base last),
    under the absolute ``path``.

    Args:
        own: Handles on the roots of the VM's own layers (its upper first).
        lower: Handles on the roots of the layers it was forked onto, then its base.
        path: The directory to compare (``/`` for everything).
        cap: Most entries examined; past it the result is ``truncated``.
    """
    differ = _Differ(_View(own), _View(lower), cap)
    try:
        differ.run(path.strip("/"))
    except _Capped:
        differ.result.truncated = True
    res = differ.result
    deleted = {c.path: c for c in res.deleted if c.path[1:] not in differ.present}
    return DiffResult(
        added=sorted(res.added, key=lambda c: c.path),
        modified=sorted(res.modified, key=lambda c: c.path),
        deleted=sorted(deleted.values(), key=lambda c: c.path),
        truncated=res.truncated,
    )


def vm_diff(store: LayerStore, meta: VmMeta, base_dir: Path, path: str, uid: int) -> DiffResult:
    """What the VM ``meta`` changed under ``path`` since it was forked, read with the
    VM user's file-system identity ``uid`` (what it cannot read is left out).

    Raises:
        SandboxError: ``bad_request`` for a VM that was not forked (a base image) or
            whose fork point is unknown (forked by an older server, or its layers were
            merged since).
    """
    point = meta.fork_point
    if point is None:
        raise SandboxError(
            "bad_request", f"vm {meta.vm_id} has no recorded fork point: nothing to compare"
        )
    if meta.layers[: len(point)] != point:
        raise SandboxError("bad_request", f"vm {meta.vm_id}: its layers were merged since the fork")
    own_ids = [meta.upper, *reversed(meta.layers[len(point) :])]
    roots: list[int] = []
    try:
        for p in [
            *(store.layer_path(x) for x in own_ids),
            *(store.layer_path(x) for x in reversed(point)),
            base_dir,
        ]:
            roots.append(os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC))
        with as_fs_user(uid, uid):
            return diff(roots[: len(own_ids)], roots[len(own_ids) :], path)
    finally:
        for fd in roots:
            os.close(fd)
