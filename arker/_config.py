"""Client settings: timeouts, and the configuration a client and its copies share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Union

from ._retry import RetryPolicy

__all__ = ["DEFAULT_TIMEOUT", "ClientConfig", "Timeout", "TimeoutTypes", "to_timeout"]


@dataclass(frozen=True)
class Timeout:
    """Seconds to wait for a connection, and for each read from the socket."""

    connect: float
    read: float

    def with_read_at_least(self, seconds: float) -> Timeout:
        return self if self.read >= seconds else replace(self, read=seconds)


TimeoutTypes = Union[float, tuple[float, float], Timeout]
DEFAULT_TIMEOUT = Timeout(connect=10.0, read=120.0)


def to_timeout(value: TimeoutTypes) -> Timeout:
    """Normalise a user-supplied timeout; one number sets both parts."""
    if isinstance(value, Timeout):
        return value
    if isinstance(value, tuple):
        return Timeout(float(value[0]), float(value[1]))
    return Timeout(float(value), float(value))


@dataclass(frozen=True)
class ClientConfig:
    """Everything that can differ between a client and its `with_options` copies."""

    api_key: str
    base_url: str
    control_url: str
    timeout: Timeout
    retry: RetryPolicy
    default_headers: Mapping[str, str]

    def __repr__(self) -> str:  # keep the key out of reprs, tracebacks and logs
        return (
            f"ClientConfig(base_url={self.base_url!r}, control_url={self.control_url!r}, "
            f"timeout={self.timeout!r}, retry={self.retry!r})"
        )
