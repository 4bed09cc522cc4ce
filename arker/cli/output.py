"""What the command line prints: aligned tables, relative times, sizes, JSON, error lines.

Pure functions of their arguments (the clock is a parameter), so they are unit-tested
without a terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import IO, Any

from pydantic import BaseModel

__all__ = [
    "error_line",
    "human_size",
    "print_json",
    "relative_time",
    "table",
    "to_jsonable",
]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_SPANS = (
    (86400 * 365, "year"),
    (86400 * 30, "month"),
    (86400, "day"),
    (3600, "hour"),
    (60, "minute"),
)


def relative_time(when: datetime | None, now: datetime | None = None) -> str:
    """``"3 minutes ago"``, ``"in 2 hours"``, ``"just now"``; ``"-"`` for no time."""
    if when is None:
        return "-"
    now = now or datetime.now(timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    seconds = (now - when).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 45:
        return "just now" if not future else "in a few seconds"
    count, unit = int(seconds), "second"
    for span, name in _SPANS:
        if seconds >= span:
            count, unit = int(seconds // span), name
            break
    text = f"{count} {unit}{'' if count == 1 else 's'}"
    return f"in {text}" if future else f"{text} ago"


def human_size(size: int | None) -> str:
    """``"512 B"``, ``"1.5 KiB"``, ``"100.0 MiB"``; ``"-"`` when unknown."""
    if size is None:
        return "-"
    value = float(size)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned on the widest cell, two spaces apart, no trailing blanks."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [headers, *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def to_jsonable(value: Any) -> Any:
    """Models (and lists of them) as plain JSON data."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    return value


def print_json(value: Any, stream: IO[str] | None = None) -> None:
    """One JSON document on stdout (indented: ``jq`` reads it, people too)."""
    out = stream or sys.stdout
    out.write(json.dumps(to_jsonable(value), indent=2, ensure_ascii=False) + "\n")
    out.flush()


def error_line(code: str, message: str) -> str:
    """``arker: not_found: no VM named 'x'``: one line whatever the message holds."""
    flat = " ".join(message.split())
    return f"arker: {code}: {flat}"
