"""Bytes as wire text: a run's output and an inline file read travel as JSON strings."""

from __future__ import annotations

import base64


def decode_output(data: bytes) -> tuple[str, str]:
    """``(text, encoding)``: UTF-8 text when the bytes are valid UTF-8, else base64."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"
