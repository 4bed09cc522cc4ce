"""Checks on request bodies that the shared wire models cannot express."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from .errors import ApiError


async def reject_lone_surrogates(request: Request) -> None:
    """FastAPI dependency: 400 for a JSON body with a lone surrogate (``"\\ud800"``).

    Such a string is valid JSON and passes validation as ``str``, but it cannot be
    encoded as UTF-8, so it would blow up (500) wherever a command, path or name
    meets the OS or the database. FastAPI has parsed the body already (cached on the
    request); this walks it iteratively (a deeply nested body must not recurse).

    Raises:
        ApiError: ``bad_request`` naming the problem.
    """
    try:
        body = await request.json()
    except ValueError:
        return  # not JSON: the route's own validation answers
    stack: list[Any] = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(
                    "bad_request", "request body has a string that is not valid Unicode"
                ) from None
