"""The request pipeline: build → send (one attempt) → decode, wrapped in tenacity retries.

Where things happen:

* `BaseClient.call` builds an API request (URL, headers, JSON body from a wire model)
  and runs it under the retry policy;
* `BaseClient._send` sends exactly one attempt and turns transport failures into
  `APIConnectionError` / `APITimeoutError`, logging one record per attempt;
* `arker._response.decode_response` validates the answer into a wire model;
* `arker._retry` decides what is retried and how long to wait.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import IO, Any, Literal, TypeVar, Union
from urllib.parse import urlencode, urlsplit

import requests
from pydantic import BaseModel
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_environ_proxies
from urllib3.exceptions import NewConnectionError

from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    NotFoundError,
    OutcomeUnknownError,
)
from ._logging import log, redact_text, redact_url
from ._response import decode_response, error_from_response
from ._retry import (
    RetryPolicy,
    build_retrying,
    is_transient_envelope_error,
    is_transient_status,
)
from ._version import __version__

__all__ = ["DEFAULT_TIMEOUT", "BaseClient", "ClientConfig", "Timeout", "TimeoutTypes"]

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

Host = Literal["base", "control"]
Body = Union[bytes, IO[bytes], Iterable[bytes]]
"""A request body: bytes, a file-like object, or an iterable of byte chunks."""


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


class _BearerAuth(requests.auth.AuthBase):
    """Set ``Authorization`` per request. Unlike a plain header, an explicit auth object
    is not overridden by credentials from ``~/.netrc``."""

    def __init__(self, api_key: str) -> None:
        self.header = f"Bearer {api_key}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self.header
        return request

    def __repr__(self) -> str:  # never show the key
        return "_BearerAuth(<redacted>)"


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


class PooledSession(requests.Session):
    """A `requests.Session` that reads the proxy environment once per host.

    requests scans every environment variable on every call to find proxy settings
    (``HTTP_PROXY``, ``NO_PROXY``…) and the CA bundle; with a typical environment that
    is most of the per-call cost on a fast network. The result only depends on the
    host and the environment, so it is computed once per ``scheme://host`` and kept.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[str, tuple[dict[str, str], str | None]] = {}

    def merge_environment_settings(  # type: ignore[override]
        self,
        url: str,
        proxies: dict[str, str] | None,
        stream: bool | None,
        verify: Any,
        cert: Any,
    ) -> Any:
        if not self.trust_env or proxies:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        found = self._environment.get(key)
        if found is None:
            found = (
                get_environ_proxies(url),
                os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE"),
            )
            if len(self._environment) < 64:
                self._environment[key] = found
        env_proxies, ca_bundle = found
        if ca_bundle and (verify is True or verify is None):
            verify = ca_bundle
        # The same precedence as requests' merge_setting: per-call beats the session.
        return {
            "proxies": {**self.proxies, **env_proxies},
            "stream": self.stream if stream is None else stream,
            "verify": self.verify if verify is None else verify,
            "cert": self.cert if cert is None else cert,
        }


class _BulkAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections send file bodies in 1 MiB blocks.

    http.client reads a file-like body in ``blocksize`` pieces and makes one
    ``sendall`` per piece; urllib3's default of 16 KiB made a 100 MiB upload cost
    6,400 Python round trips through the stack (2.4x slower than curl here).
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("blocksize", 1024 * 1024)
        super().init_poolmanager(*args, **kwargs)


def new_session(pool_maxsize: int) -> requests.Session:
    """One pooled session; the adapter never retries (tenacity is the only retry layer)."""
    session = PooledSession()
    adapter = _BulkAdapter(pool_connections=4, pool_maxsize=pool_maxsize, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _never_sent(exc: requests.RequestException) -> bool:
    """Whether a transport failure happened before any byte of the request left.

    Only a failure to connect proves that: a connect timeout (`requests.ConnectTimeout`)
    or a refused / unresolvable connection (urllib3's ``NewConnectionError``, which
    requests wraps in a `requests.ConnectionError` around a ``MaxRetryError``). Anything
    later — a read timeout, a reset after sending, a short or broken response body —
    may have reached the server, which may have acted on it.
    """
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if not isinstance(exc, requests.ConnectionError):
        return False
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        cause = todo.pop()
        if cause is None or id(cause) in seen:
            continue
        seen.add(id(cause))
        if isinstance(cause, NewConnectionError):
            return True
        if isinstance(cause, BaseException):
            todo.extend(cause.args[:1])
            todo.append(getattr(cause, "reason", None))
            todo.append(cause.__cause__)
            todo.append(cause.__context__)
    return False


def _is_transient(exc: APIStatusError) -> bool:
    """An error a gateway or throttle may have produced without reaching the server."""
    return is_transient_status(exc.status) or is_transient_envelope_error(exc.code, exc.message)


def possibly_sent(exc: APIConnectionError) -> bool:
    """Whether the failed attempt behind ``exc`` may have reached the server."""
    return exc._possibly_sent


class BaseClient:
    """Holds the session and configuration; resources call `call` and `transfer`."""

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
        self._owns_session = owns_session
        self._auth = _BearerAuth(config.api_key)
        self._fast = isinstance(session, PooledSession)

    # -- building ---------------------------------------------------------------------

    def _url(self, host: Host, path: str) -> str:
        root = self._config.control_url if host == "control" else self._config.base_url
        return root + path

    def _headers(self, idempotency_key: str | None, json_body: bool) -> dict[str, str]:
        headers = {
            "User-Agent": f"arker-python/{__version__}",
            "Accept": "application/json",
            **self._config.default_headers,
        }
        if json_body:
            headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    # -- sending ----------------------------------------------------------------------

    def _send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        timeout: Timeout,
        attempt: int,
        data: Body | None = None,
        params: Mapping[str, str] | None = None,
        authenticated: bool = True,
        stream: bool = False,
    ) -> requests.Response:
        """Send one attempt. Transport failures become `APIConnectionError`s."""
        started = time.perf_counter()
        status: int | None = None
        if params:
            url = f"{url}?{urlencode(params)}"
        try:
            if authenticated and self._fast and (data is None or isinstance(data, bytes)):
                response = self._send_prepared(method, url, headers, data, timeout, stream)
            else:
                response = self._session.request(
                    method,
                    url,
                    data=data,
                    headers=headers,
                    # Presigned URLs carry their own signature: never send them the API key.
                    auth=self._auth if authenticated else None,
                    timeout=(timeout.connect, timeout.read),
                    stream=stream,
                    allow_redirects=False,
                )
            status = response.status_code
            if not stream:
                # Read the body here, so that a reset or a short body (fewer bytes than
                # Content-Length) is a transport failure of this attempt, like any other.
                response.content  # noqa: B018
            return response
        except requests.Timeout as exc:
            err: APIConnectionError = APITimeoutError(
                f"{method} {redact_url(url)} timed out: {redact_text(str(exc))}"
            )
            err._possibly_sent = not _never_sent(exc)
            raise err from None
        except requests.RequestException as exc:
            err = APIConnectionError(f"{method} {redact_url(url)} failed: {redact_text(str(exc))}")
            err._possibly_sent = not _never_sent(exc)
            raise err from None
        finally:
            if log.isEnabledFor(logging.INFO):
                self._log_attempt(method, url, authenticated, status, started, attempt)

    @staticmethod
    def _log_attempt(
        method: str,
        url: str,
        authenticated: bool,
        status: int | None,
        started: float,
        attempt: int,
    ) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        # API query strings are plain parameters; presigned ones hold a signature.
        shown_url = url if authenticated else redact_url(url)
        log.info(
            "%s %s -> %s (%.1f ms, attempt %d)",
            method,
            shown_url,
            status if status is not None else "no response",
            elapsed_ms,
            attempt,
            extra={
                "arker_method": method,
                "arker_url": shown_url,
                "arker_status": status,
                "arker_duration_ms": round(elapsed_ms, 3),
                "arker_attempt": attempt,
            },
        )

    def _send_prepared(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        data: bytes | None,
        timeout: Timeout,
        stream: bool,
    ) -> requests.Response:
        """An API call straight to the session's pooled adapter.

        `requests.Session.request` re-derives cookies, hooks, auth, proxies and URL
        encoding on every call — about twice the cost of the HTTP exchange itself on a
        fast network. SDK API calls need none of that: the URL is already encoded, the
        body is bytes, the key goes in a header, and the environment's proxy and CA
        settings are read once per host (`PooledSession`). Used only with the SDK's own
        session; a session the user brings gets the full `requests` path.
        """
        prepared = requests.PreparedRequest()
        prepared.method = method
        prepared.url = url
        prepared.headers = CaseInsensitiveDict(headers)
        prepared.headers["Authorization"] = self._auth.header
        prepared.headers["Content-Length"] = str(len(data) if data is not None else 0)
        prepared.body = data
        settings = self._session.merge_environment_settings(url, {}, stream, None, None)
        adapter = self._session.get_adapter(url)
        return adapter.send(
            prepared,
            stream=stream,
            timeout=(timeout.connect, timeout.read),
            verify=settings["verify"] if settings["verify"] is not None else True,
            cert=settings["cert"],
            proxies=settings["proxies"],
        )

    # -- the two entry points resources use --------------------------------------------

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
        timeout: Timeout | None = None,
        check: Callable[[M], None] | None = None,
        absent_after_retry: M | None = None,
    ) -> M:
        """Make one API call, retried under the client's policy.

        Args:
            method: HTTP method.
            path: Route path, e.g. ``/api/v1/vms/list``.
            model: Wire model the success envelope validates into.
            host: ``"base"`` (regional) or ``"control"`` (list, fork by name).
            body: Request wire model, serialised once and resent as-is on retries.
            params: Query parameters.
            idempotency_key: Sent as ``Idempotency-Key`` on every attempt. When the
                retries run out and some attempt may have reached the server without
                its answer coming back, the call raises `OutcomeUnknownError` carrying
                this key instead of the last transport error.
            timeout: Overrides the client's timeout for this call.
            check: Runs on the decoded model inside the attempt; an `ArkerError` it
                raises is retried like any other (used for per-entry write errors).
            absent_after_retry: For deletes: what to return when a retry gets 404
                after an attempt whose outcome is unknown (the connection broke, or a
                gateway failed) — that attempt most likely did the deleting.
        """
        url = self._url(host, path)
        data = None if body is None else body.model_dump_json(by_alias=True, exclude_none=True)
        payload = None if data is None else data.encode("utf-8")
        headers = self._headers(idempotency_key, json_body=payload is not None)
        effective_timeout = timeout or self._config.timeout

        attempts = 0
        # Some attempt may have been acted on without its answer reaching us: for
        # deletes, a gateway's 502/504 counts; for `OutcomeUnknownError`, only an
        # attempt lost in transport after it was (possibly) sent.
        outcome_unknown = False
        lost_after_send = False

        def attempt_once() -> M:
            nonlocal attempts, outcome_unknown, lost_after_send
            attempts += 1
            try:
                response = self._send(
                    method,
                    url,
                    headers=headers,
                    timeout=effective_timeout,
                    attempt=attempts,
                    data=payload,
                    params=params,
                )
                with response:
                    result = decode_response(response, model)
            except NotFoundError:
                if outcome_unknown and absent_after_retry is not None:
                    return absent_after_retry
                raise
            except APIConnectionError as exc:
                lost_after_send = lost_after_send or possibly_sent(exc)
                outcome_unknown = outcome_unknown or lost_after_send
                raise
            except APIStatusError as exc:
                outcome_unknown = outcome_unknown or exc.status in (502, 504)
                raise
            if check is not None:
                check(result)
            return result

        try:
            return build_retrying(self._config.retry, self._sleep)(attempt_once)
        except (APIConnectionError, APIStatusError) as exc:
            # A keyed request (fork, run: not idempotent by nature) that gave up on a
            # transient failure after some attempt was lost in transport once sent may
            # have been carried out: say so rather than let "it failed" be assumed. An
            # answer the server itself gave (404, 409, a non-transient 500…) is
            # definitive: with the key, a retry after a success replays that success.
            # A 502/504 alone stays a `ServiceUnavailableError`, as documented.
            if idempotency_key is None or isinstance(exc, OutcomeUnknownError):
                raise
            unknown = lost_after_send and (
                isinstance(exc, APIConnectionError) or _is_transient(exc)
            )
            if not unknown:
                raise
            raise OutcomeUnknownError(
                f"{method} {redact_url(url)}: no answer after {attempts} attempt(s), "
                f"last: {exc.message}",
                idempotency_key,
            ) from exc

    def transfer(
        self,
        method: Literal["GET", "PUT"],
        url: str,
        *,
        consume: Callable[[requests.Response], T],
        prepare: Callable[[int], tuple[Body | None, Mapping[str, str]]] | None = None,
        timeout: Timeout | None = None,
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
            timeout: Overrides the client's timeout.
        """
        effective_timeout = timeout or self._config.timeout
        attempts = 0

        def attempt_once() -> T:
            nonlocal attempts
            attempts += 1
            body, extra = prepare(attempts) if prepare is not None else (None, {})
            headers = {"User-Agent": f"arker-python/{__version__}", **extra}
            try:
                response = self._send(
                    method,
                    url,
                    headers=headers,
                    timeout=effective_timeout,
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
            response = self._send(
                "HEAD",
                url,
                headers={"User-Agent": f"arker-python/{__version__}"},
                timeout=self._config.timeout,
                attempt=1,
                authenticated=False,
            )
        except APIConnectionError:
            return None
        response.close()
        return response if response.status_code < 400 else None

    def close(self) -> None:
        """Close the pooled connections (only if this client created the session)."""
        if self._owns_session:
            self._session.close()
