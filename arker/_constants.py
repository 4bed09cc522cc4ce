"""Protocol constants shared by the SDK and `arker serve` (values the wire protocol fixes)."""

from __future__ import annotations

DEFAULT_BASE_URL = "https://aws-us-west-2.burst.arker.ai"
"""Regional API host: fork by id, run, sync, delete."""

DEFAULT_CONTROL_URL = "https://arker.ai"
"""Global (control) host: list, fork by name."""

ARKUNTU_ID = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"
"""The public base image every VM descends from."""

SOURCE_ALIASES: dict[str, str] = {"arkuntu": ARKUNTU_ID}
"""Public image names the client resolves without a round trip."""

HOME_PREFIX = "/home/user/"
MAX_PATH_BYTES = 4096
MAX_FILE_BYTES = 100 * 1024 * 1024
"""Files above this are refused with ``payload_too_large``."""

INLINE_WRITE_MAX = 4 * 1024 * 1024
"""Writes up to this size travel inline as one chunk; larger ones go presigned."""

PRESIGN_TTL_S = 900
"""Lifetime of a presigned URL."""
