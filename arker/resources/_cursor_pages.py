"""Iterating a list route that pages with ``cursor`` / ``next_cursor``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

__all__ = ["iterate_pages"]

T = TypeVar("T")


def iterate_pages(fetch: Callable[[str | None], tuple[list[T], str | None]]) -> Iterator[T]:
    """Every item of every page: ``fetch(cursor)`` returns one page's items and the
    next page's cursor (``None`` after the last page). Pages are fetched as the
    iteration reaches them."""
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        items, cursor = fetch(cursor)
        yield from items
        if not cursor:
            return
        if cursor in seen:  # a server handing back a cursor twice would loop forever
            return
        seen.add(cursor)
