"""Base of the resource classes, and request-model construction with SDK errors."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .._base_client import BaseClient
from .._exceptions import refused_before_sending
from .._response import validation_message

M = TypeVar("M", bound=BaseModel)


def build_request(model: type[M], **fields: Any) -> M:
    """Validate arguments into a request model; bad input is a `BadRequestError`,
    raised before anything is sent."""
    try:
        return model(**fields)
    except ValidationError as exc:
        raise refused_before_sending(validation_message(exc, model.__name__)) from None


class Resource:
    """A group of routes (``vms``, ``runs``, ``sync``) sharing one client."""

    def __init__(self, client: BaseClient) -> None:
        self._client = client
