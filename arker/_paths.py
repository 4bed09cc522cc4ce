"""Sync path rules, checked before any request is made (and again by the server)."""

from __future__ import annotations

from ._constants import HOME_PREFIX, MAX_PATH_BYTES

HOME_ROOTS: tuple[str, ...] = (HOME_PREFIX,)
"""Where the 0.1.0 wire lets sync paths point."""
PLATFORM_ROOTS: tuple[str, ...] = (HOME_PREFIX, "/tmp/")
"""Where the platform's API lets them point: its client's ``sync_dir`` stages its
tarball under ``/tmp``."""


def path_problem(path: object, roots: tuple[str, ...] = HOME_ROOTS) -> str | None:
    """Why ``path`` is not a valid VM file path, or `None` when it is.

    The wire protocol's rules: a string, absolute, under ``/home/user/`` (or another of
    ``roots``), no ``..`` segment, no NUL byte, at most 4096 bytes in UTF-8.
    """
    if not isinstance(path, str):
        return f"path must be a string, not {type(path).__name__}"
    if "\x00" in path:
        return "path must not contain NUL bytes"
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        return "path must be valid UTF-8"
    if len(encoded) > MAX_PATH_BYTES:
        return f"path is {len(encoded)} bytes; the limit is {MAX_PATH_BYTES}"
    if not path.startswith(roots):
        return f"path must be absolute and under {' or '.join(roots)}: {path!r}"
    segments = path.split("/")
    if ".." in segments:
        return f"path must not contain '..' segments: {path!r}"
    if path.rstrip("/") + "/" in roots or path.endswith("/"):
        return f"path must name a file, not a directory: {path!r}"
    return None


def dir_problem(path: object) -> str | None:
    """Why ``path`` is not a valid VM directory (``/home/user`` itself is allowed)."""
    if not isinstance(path, str):
        return f"path must be a string, not {type(path).__name__}"
    if path.rstrip("/") + "/" == HOME_PREFIX:
        return None
    return path_problem(path.rstrip("/"))
