"""Presigned transfers: raw bytes to and from a URL that carries its own signature.

The API key is never sent to such a URL. Each transfer is retried under the client's
policy like an API call, with one difference: a transfer resumes, so an attempt that
moved it forward spends none of the retry budget (`arker._retry.transfer_gives_up`).
The body of each attempt is prepared afresh from where the transfer stands: an upload
from the offset the server holds, a download with ``Range: bytes=N-`` from the bytes
already written (`body_start` tells whether the answer really starts there).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Literal, TypeVar

import requests

from ._config import ClientConfig
from ._exceptions import APIConnectionError, ArkerError
from ._logging import redact_text, redact_url
from ._response import error_from_response
from ._retry import TransferProgress, build_retrying, build_transfer_retrying, should_retry
from ._transport import USER_AGENT, Body, Transport

__all__ = ["PresignedTransfer", "body_start"]

T = TypeVar("T")

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def body_start(status: int, content_range: str | None, asked: int) -> int | None:
    """Where in the file a download answer's body starts, or `None` if it is unusable.

    ``asked`` is the offset a ``Range: bytes=N-`` header asked for (0 for none). A
    ``200`` (or any other success but ``206``) carries the whole file, from 0: a server
    may ignore ``Range``. A ``206`` is used only when its ``Content-Range`` starts
    exactly at ``asked`` and runs to the end of the file (``bytes N-(size-1)/size``);
    any other partial answer is unusable.
    """
    if status != 206:
        return 0
    if content_range is None:
        return None
    match = _CONTENT_RANGE.fullmatch(content_range.strip())
    if match is None or match.group(3) == "*":
        return None
    first, last, size = int(match.group(1)), int(match.group(2)), int(match.group(3))
    return asked if first == asked and last == size - 1 else None


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
        position: Callable[[], int] | None = None,
    ) -> T:
        """Move raw bytes to or from a presigned URL, resuming while it makes progress.

        Args:
            method: ``GET`` (download) or ``PUT`` (upload).
            url: The presigned URL; it carries its own signature, so the API key is
                never sent to it.
            consume: Reads the successful response inside the attempt, so a connection
                dropped mid-body is retried too.
            prepare: Called before each attempt with the position to resume from (0
                first, then the last ``position``); returns that attempt's body and
                extra headers. A stream can be read once, so each attempt gets its own.
            position: Asked after each failed attempt that will be retried: how many
                bytes the receiving side now holds. An attempt after which it grew made
                progress and spends none of the retry budget. Without it, every failed
                attempt counts.
        """
        attempts = 0
        progress = TransferProgress()

        def attempt_once() -> T:
            nonlocal attempts
            attempts += 1
            started_at = progress.position
            try:
                return self._attempt(method, url, attempts, started_at, consume, prepare)
            except ArkerError as exc:
                if should_retry(exc, self._config.retry):
                    now_at = position() if position is not None else started_at
                    progress.record(started_at, now_at)
                raise

        retrying = build_transfer_retrying(self._config.retry, self._sleep, progress)
        return retrying(attempt_once)

    def _attempt(
        self,
        method: str,
        url: str,
        attempt: int,
        started_at: int,
        consume: Callable[[requests.Response], T],
        prepare: Callable[[int], tuple[Body | None, Mapping[str, str]]] | None,
    ) -> T:
        body, extra = prepare(started_at) if prepare is not None else (None, {})
        headers = {"User-Agent": USER_AGENT, **extra}
        try:
            response = self._transport.send(
                method,
                url,
                headers=headers,
                timeout=self._config.timeout,
                attempt=attempt,
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

    def head(self, url: str) -> requests.Response | None:
        """A ``HEAD`` to a presigned URL, retried like a call; `None` when it fails.

        Used to ask a server how much of an interrupted upload it holds. The network
        that broke the upload may break this question too, and an unanswered one would
        make the upload start over, so it is retried (it is read-only). A server that
        cannot say (an error status) simply makes the client start over.
        """
        attempts = 0

        def attempt_once() -> requests.Response:
            nonlocal attempts
            attempts += 1
            response = self._transport.send(
                "HEAD",
                url,
                headers={"User-Agent": USER_AGENT},
                timeout=self._config.timeout,
                attempt=attempts,
                authenticated=False,
            )
            response.close()
            if response.status_code >= 400:
                raise error_from_response(response)
            return response

        try:
            return build_retrying(self._config.retry, self._sleep)(attempt_once)
        except ArkerError:
            return None
