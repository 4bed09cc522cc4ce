"""The request pipeline: build → send (one attempt) → decode, wrapped in tenacity retries.

Where things happen:

* `BaseClient.call` builds an API request (URL, headers, JSON body from a wire model)
  and runs it under the retry policy, raising `OutcomeUnknownError` when a request
  that acts may have been carried out without its answer arriving;
* `arker._transport.Transport.send` sends exactly one attempt over the pooled session
  and turns transport failures into `APIConnectionError` / `APITimeoutError`, logging
  one record per attempt;
* `arker._response.decode_response` validates the answer into a wire model (or raises
  the error its envelope carries, classes from `arker._exceptions`, statuses from the
  shared table in `arker._error_codes`);
* `arker._retry` decides what is retried and how long to wait;
* `arker._presigned.PresignedTransfer` moves raw bytes to and from presigned URLs
  (``client.presigned``), retried the same way;
* `arker._config` holds timeouts and the settings a client and its copies share.

The resources (`arker.resources`) turn user arguments into wire models and call these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, TypeVar

import requests
from pydantic import BaseModel

from ._config import ClientConfig
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    NotFoundError,
    OutcomeUnknownError,
)
from ._logging import redact_url
from ._presigned import PresignedTransfer
from ._response import decode_response
from ._retry import build_retrying, outcome_unknown
from ._transport import USER_AGENT, Transport, possibly_sent

__all__ = ["BaseClient"]

M = TypeVar("M", bound=BaseModel)

Host = Literal["base", "control"]


class BaseClient:
    """Holds the transport and configuration; resources call `call` and `presigned`.

    Attributes:
        presigned: Transfers to and from presigned URLs, under the same retry policy.
    """

    def __init__(
        self,
        config: ClientConfig,
        session: requests.Session,
        sleep: Callable[[float], None],
        owns_session: bool,
    ) -> None:
        self._config = config
        self._session = session
        self._sleep = sleep
        self._transport = Transport(session, config.api_key, owns_session)
        self.presigned = PresignedTransfer(self._transport, config, sleep)

    # -- building ---------------------------------------------------------------------

    def _url(self, host: Host, path: str) -> str:
        root = self._config.control_url if host == "control" else self._config.base_url
        return root + path

    def _headers(self, idempotency_key: str | None, json_body: bool) -> dict[str, str]:
        headers = {
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            **self._config.default_headers,
        }
        if json_body:
            headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    # -- the entry point resources use -------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        host: Host = "base",
        body: BaseModel | None = None,
        params: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        read_timeout_at_least: float | None = None,
        check: Callable[[M], None] | None = None,
        absent_after_retry: M | None = None,
        acts: bool | None = None,
    ) -> M:
        """Make one API call, retried under the client's policy.

        Args:
            method: HTTP method.
            path: Route path, e.g. ``/api/v1/vms/list``.
            model: Wire model the success envelope validates into.
            host: ``"base"`` (regional) or ``"control"`` (list, fork by name).
            body: Request wire model, serialised once and resent as-is on retries.
            params: Query parameters.
            idempotency_key: Sent as ``Idempotency-Key`` on every attempt, and carried
                by the `OutcomeUnknownError` the call may raise.
            read_timeout_at_least: Seconds this call's reads may need to wait (a run
                that lasts that long); the client's read timeout applies if longer.
            check: Runs on the decoded model inside the attempt; an `ArkerError` it
                raises is retried like any other (used for per-entry write errors).
            absent_after_retry: For deletes: what to return when a retry gets 404
                after an attempt whose outcome is unknown (the connection broke, or a
                gateway failed) — that attempt most likely did the deleting.
            acts: Whether the request changes anything (default: any method but
                ``GET``). When the retries of one that does run out and some attempt
                may have reached the server without its answer coming back (a reset
                after sending, a read timeout, a cut answer), the call raises
                `OutcomeUnknownError` instead of the last transport error.
        """
        if acts is None:
            acts = method != "GET"
        url = self._url(host, path)
        data = None if body is None else body.model_dump_json(by_alias=True, exclude_none=True)
        payload = None if data is None else data.encode("utf-8")
        headers = self._headers(idempotency_key, json_body=payload is not None)
        timeout = self._config.timeout
        if read_timeout_at_least is not None:
            timeout = timeout.with_read_at_least(read_timeout_at_least)

        attempts = 0
        # Some attempt may have been acted on without its answer reaching us: for
        # deletes, a gateway's 502/504 counts; for `OutcomeUnknownError`, only an
        # attempt lost in transport after it was (possibly) sent.
        may_have_acted = False
        lost_after_send = False

        def attempt_once() -> M:
            nonlocal attempts, may_have_acted, lost_after_send
            attempts += 1
            try:
                response = self._transport.send(
                    method,
                    url,
                    headers=headers,
                    timeout=timeout,
                    attempt=attempts,
                    data=payload,
                    params=params,
                )
                with response:
                    result = decode_response(response, model)
            except NotFoundError:
                if may_have_acted and absent_after_retry is not None:
                    return absent_after_retry
                raise
            except APIConnectionError as exc:
                lost_after_send = lost_after_send or possibly_sent(exc)
                may_have_acted = may_have_acted or lost_after_send
                raise
            except APIStatusError as exc:
                may_have_acted = may_have_acted or exc.status in (502, 504)
                raise
            if check is not None:
                check(result)
            return result

        try:
            return build_retrying(self._config.retry, self._sleep)(attempt_once)
        except (APIConnectionError, APIStatusError) as exc:
            # A request that acts and gave up after some attempt was lost once sent may
            # have been carried out: say so rather than let "it failed" be assumed. A
            # 502/504 alone stays a `ServiceUnavailableError`, as documented.
            if not outcome_unknown(exc, acts=acts, lost_after_send=lost_after_send):
                raise
            raise OutcomeUnknownError(
                f"{method} {redact_url(url)}: no answer after {attempts} attempt(s), "
                f"last: {exc.message}",
                idempotency_key,
            ) from exc

    def close(self) -> None:
        """Close the pooled connections (only if this client created the session)."""
        self._transport.close()
