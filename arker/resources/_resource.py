"""Base of the resource classes: request-model construction with SDK errors, route paths."""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ValidationError

from .._base_client import BaseClient
from .._exceptions import refused_before_sending
from .._response import validation_message

__all__ = ["Resource", "build_request", "vm_path"]

M = TypeVar("M", bound=BaseModel)


def build_request(model: type[M], **fields: Any) -> M:
    """Validate arguments into a request model; bad input is a `BadRequestError`,
    raised before anything is sent."""
    try:
        return model(**fields)
    except ValidationError as exc:
        raise refused_before_sending(validation_message(exc, model.__name__)) from None


def vm_path(vm_id: str, suffix: str = "") -> str:
    """``/api/v1/vms/<id><suffix>`` with the id percent-encoded (ids come from users)."""
    if not vm_id or not isinstance(vm_id, str):
        raise refused_before_sending(f"vm_id must be a non-empty string: {vm_id!r}")
    return f"/api/v1/vms/{quote(vm_id, safe='')}{suffix}"


class Resource:
    """A group of routes (``vms``, ``runs``, ``sync``) sharing one client."""

    def __init__(self, client: BaseClient) -> None:
        self._client = client
