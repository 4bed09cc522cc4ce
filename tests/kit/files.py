"""Local files for the transfer tests: their sha256, computed independently of the SDK."""

from __future__ import annotations

import hashlib
from pathlib import Path

MiB = 1024 * 1024


def sha256_of(path: Path) -> str:
    """The sha256 of a whole local file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()
