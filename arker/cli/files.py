"""``arker cp``: files and directories in and out of a VM (``VM:/path`` on one side).

Single files stream through the SDK (presigned transfers, resumed, sha256-verified by
the side that receives them); directories go through the SDK's dir sync, which sends
only the files that differ.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import posixpath
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._exceptions import BadRequestError, ConfigurationError, ResponseValidationError
from .context import CliError, Context
from .output import human_size, print_json
from .parsing import command

if TYPE_CHECKING:
    from .._streams import ProgressCallback
    from .parsing import Parser

__all__ = ["Location", "parse_location", "register"]

HOME = "/home/user"


@dataclass(frozen=True)
class Location:
    """One side of a copy: a local path, or ``vm`` and an absolute path in it."""

    path: str
    vm: str | None = None

    def __str__(self) -> str:
        return f"{self.vm}:{self.path}" if self.vm else self.path


def parse_location(text: str) -> Location:
    """``VM:/path`` (``VM:rel`` is under /home/user) or a local path. A local name with
    a colon before any slash must be written ``./a:b``."""
    head, sep, tail = text.partition(":")
    if not sep or not head or "/" in head:
        return Location(text)
    if not tail.startswith("/"):
        tail = f"{HOME}/{tail}" if tail else f"{HOME}/"
    return Location(tail, head)


def register(actions: argparse._SubParsersAction[Parser]) -> None:
    cp = command(
        actions,
        "cp",
        "copy files or directories between this machine and a VM",
        "  arker cp ./data.csv scratch:/home/user/data.csv\n"
        "  arker cp scratch:/home/user/out.tar.gz .\n"
        "  arker cp -r ./project scratch:/home/user/project   # only changed files move",
    )
    cp.add_argument("source", help="local path or VM:/path")
    cp.add_argument("dest", help="local path, VM:/path, or - (stdout) for a VM file")
    cp.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="copy a directory: DEST ends up holding SOURCE's files",
    )
    cp.add_argument(
        "--delete", action="store_true", help="with -r: delete files DEST has and SOURCE lacks"
    )
    cp.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    cp.set_defaults(func=copy)


def copy(ctx: Context, args: argparse.Namespace) -> int:
    src, dst = parse_location(args.source), parse_location(args.dest)
    if (src.vm is None) == (dst.vm is None):
        raise CliError("usage", "exactly one side of cp must be VM:/path")
    if args.delete and not args.recursive:
        raise CliError("usage", "--delete goes with -r")
    if src.vm is None:
        return _upload(ctx, args, Path(src.path), dst)
    return _download(ctx, args, src, dst.path)


def _upload(ctx: Context, args: argparse.Namespace, local: Path, dst: Location) -> int:
    st = local.stat()  # a missing file is a one-line local_error
    vm_id = ctx.vm_id(str(dst.vm))
    if stat.S_ISDIR(st.st_mode):
        if not args.recursive:
            raise CliError("usage", f"{local} is a directory: use cp -r")
        result = ctx.client.sync.push_dir(vm_id, local, dst.path, delete=args.delete)
        return _dir_report(ctx, result, f"{dst.vm}:{dst.path}")
    remote = dst.path + local.name if dst.path.endswith("/") else dst.path
    with _progress(ctx, args, f"{local.name}") as bar:
        ctx.client.sync.write(vm_id, remote, local, mode=stat.S_IMODE(st.st_mode), progress=bar)
    return _file_report(ctx, local, st.st_size, f"{dst.vm}:{remote}")


def _download(ctx: Context, args: argparse.Namespace, src: Location, dest: str) -> int:
    vm_id = ctx.vm_id(str(src.vm))
    sync = ctx.client.sync
    if args.recursive:
        if dest == "-":
            raise CliError("usage", "a directory cannot go to stdout")
        try:
            result = sync.pull_dir(vm_id, src.path, dest, delete=args.delete)
        except ResponseValidationError as exc:
            # The dir sync lists a file given as the directory as lying outside it.
            if "outside" not in exc.message:
                raise
            raise CliError("usage", f"{src} is a file: copy it without -r") from None
        if not result.transferred and not result.skipped:
            _check_is_directory(ctx, vm_id, src)
        return _dir_report(ctx, result, dest)
    if dest == "-":
        sync.read_to(vm_id, src.path, sys.stdout.buffer)
        sys.stdout.flush()
        return 0
    target = Path(dest)
    if dest.endswith(("/", os.sep)) or target.is_dir():
        target = target / posixpath.basename(src.path.rstrip("/"))
    if not target.parent.is_dir():
        raise CliError("local_error", f"no such directory: {target.parent}")
    with _progress(ctx, args, posixpath.basename(src.path)) as bar:
        try:
            size = sync.read_to(vm_id, src.path, target, progress=bar)
        except BadRequestError as exc:
            if _is_directory(exc):
                raise CliError(exc.code, f"{exc.message} (use cp -r)", exc.status) from None
            raise
    return _file_report(ctx, target, size, str(target))


def _is_directory(exc: BadRequestError) -> bool:
    return "is a directory" in exc.message


def _check_is_directory(ctx: Context, vm_id: str, src: Location) -> None:
    """An empty pull: say so if ``src`` is no directory at all (the dir sync finds no
    files either way). Reading a directory is refused at once, without a transfer."""
    try:
        ctx.client.sync.read(vm_id, src.path)
    except BadRequestError as exc:
        if _is_directory(exc):
            return
        raise
    raise CliError("usage", f"{src} is a file: copy it without -r")


@contextmanager
def _progress(
    ctx: Context, args: argparse.Namespace, label: str
) -> Iterator[ProgressCallback | None]:
    """A progress bar on stderr when it is a terminal (and tqdm is installed)."""
    if args.quiet or ctx.json or not ctx.stderr_is_terminal:
        yield None
        return
    from ..progress import progress_bar

    try:
        bar = progress_bar(label, leave=False)
    except ConfigurationError:
        yield None
        return
    with bar:
        yield bar


def _file_report(ctx: Context, local: Path, size: int, where: str) -> int:
    if ctx.json:
        print_json({"path": where, "bytes": size, "sha256": _sha256(local)})
    else:
        ctx.out(f"{where}  {human_size(size)}")
    return 0


def _dir_report(ctx: Context, result: Any, where: str) -> int:
    if ctx.json:
        print_json(result)
    else:
        moved = human_size(result.bytes_transferred)
        ctx.out(
            f"{where}  {result.files_transferred} copied ({moved}), "
            f"{result.files_skipped} unchanged, {len(result.deleted)} deleted"
        )
        for link in result.symlinks_skipped:
            ctx.note(f"arker: skipped symbolic link {link}")
    return 0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
