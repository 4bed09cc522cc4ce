"""Presigned transfers: raw bytes to and from a URL that carries its own signature.

The API key is never sent to such a URL. Each transfer is retried under the client's
policy like an API call; the body of each attempt is prepared afresh, so a retried
upload can resume from another offset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, TypeVar

import requests

from ._config import ClientConfig
from ._exceptions import APIConnectionError
from ._logging import redact_text, redact_url
from ._response import error_from_response
from ._retry import build_retrying
from ._transport import USER_AGENT, Body, Transport

__all__ = ["PresignedTransfer"]

T = TypeVar("T")


class PresignedTransfer:
    """GET and PUT to presigned URLs, and the ``HEAD`` that asks how much arrived.

    Args:
        transport: Sends each attempt (unauthenticated).
        config: The retry policy and timeout to use.
        sleep: Waits between retries.
    """

    def __init__(
        self, transport: Transport, config: ClientConfig, sleep: Callable[[float], None]
    ) -> None:
        self._transport = transport
        self._config = config
        self._sleep = sleep

    def transfer(
        self,
        method: Literal["GET", "PUT"],
        url: str,
        *,
        consume: Callable[[requests.Response], T],
        prepare: Callable[[int], tuple[Body | None, Mapping[str, str]]] | None = None,
    ) -> T:
        """Move raw bytes to or from a presigned URL, retried like an API call.

        Args:
            method: ``GET`` (download) or ``PUT`` (upload).
            url: The presigned URL; it carries its own signature, so the API key is
                never sent to it.
            consume: Reads the successful response inside the attempt, so a connection
                dropped mid-body is retried too.
            prepare: Called with the attempt number (1, 2, …) before each attempt;
                returns that attempt's body and extra headers. A stream can be read
                once, and a retry may resume from another offset.
        """
        attempts = 0

        def attempt_once() -> T:
            nonlocal attempts
            attempts += 1
            body, extra = prepare(attempts) if prepare is not None else (None, {})
            headers = {"User-Agent": USER_AGENT, **extra}
            try:
                response = self._transport.send(
                    method,
                    url,
                    headers=headers,
                    timeout=self._config.timeout,
                    attempt=attempts,
                    data=body,
                    authenticated=False,
                    stream=True,
                )
                with response:
                    if response.status_code >= 400:
                        raise error_from_response(response)
                    try:
                        return consume(response)
                    except requests.RequestException as exc:
                        raise APIConnectionError(
                            f"{method} {redact_url(url)} broke mid-body: {redact_text(str(exc))}"
                        ) from None
            finally:
                close = getattr(body, "close", None)
                if callable(close):
                    close()

        return build_retrying(self._config.retry, self._sleep)(attempt_once)

    def head(self, url: str) -> requests.Response | None:
        """One unretried ``HEAD`` to a presigned URL; `None` when it fails in any way.

        Used to ask a server how much of an interrupted upload it holds: a server that
        cannot say simply makes the client start over.
        """
        try:
            response = self._transport.send(
                "HEAD",
                url,
                headers={"User-Agent": USER_AGENT},
                timeout=self._config.timeout,
                attempt=1,
                authenticated=False,
            )
        except APIConnectionError:
            return None
        response.close()
        return response if response.status_code < 400 else None
