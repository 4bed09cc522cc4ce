"""Sync path rules, checked before any request is made (and again by the server)."""

from __future__ import annotations

from ._constants import HOME_PREFIX, MAX_PATH_BYTES


def path_problem(path: object) -> str | None:
    """Why ``path`` is not a valid VM file path, or `None` when it is.

    The wire protocol's rules: a string, absolute, under ``/home/user/``, no ``..`` segment,
    no NUL byte, at most 4096 bytes in UTF-8.
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
    if not path.startswith(HOME_PREFIX):
        return f"path must be absolute and under {HOME_PREFIX}: {path!r}"
    segments = path.split("/")
    if ".." in segments:
        return f"path must not contain '..' segments: {path!r}"
    if path.rstrip("/") + "/" == HOME_PREFIX or path.endswith("/"):
        return f"path must name a file, not a directory: {path!r}"
    return None


def dir_problem(path: object) -> str | None:
    """Why ``path`` is not a valid VM directory (``/home/user`` itself is allowed)."""
    if not isinstance(path, str):
        return f"path must be a string, not {type(path).__name__}"
    if path.rstrip("/") + "/" == HOME_PREFIX:
        return None
    return path_problem(path.rstrip("/"))
