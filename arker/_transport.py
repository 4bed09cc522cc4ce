"""Sending: one HTTP attempt over a pooled `requests.Session`, nothing more.

`Transport.send` sends exactly one attempt, turns transport failures into
`APIConnectionError` / `APITimeoutError` (noting whether the request may have left), and
logs one record per attempt. Retries, envelopes and models live elsewhere: see the map
in `arker._base_client`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from typing import IO, Any, Union
from urllib.parse import urlencode, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_environ_proxies
from urllib3.exceptions import NewConnectionError

from ._config import Timeout
from ._exceptions import APIConnectionError, APITimeoutError
from ._logging import log, redact_text, redact_url
from ._version import __version__

__all__ = ["USER_AGENT", "Body", "PooledSession", "Transport", "new_session", "possibly_sent"]

USER_AGENT = f"arker-python/{__version__}"
"""Sent with every request, API calls and presigned transfers alike."""

Body = Union[bytes, IO[bytes], Iterable[bytes]]
"""A request body: bytes, a file-like object, or an iterable of byte chunks."""


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
    6,400 Python round trips through the stack, against 100 at 1 MiB
    (``benchmarks/transfer.py`` measures upload throughput against curl's).
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


def possibly_sent(exc: APIConnectionError) -> bool:
    """Whether the failed attempt behind ``exc`` may have reached the server."""
    return exc._possibly_sent


class Transport:
    """One session, the API key, and the single-attempt `send` every request goes through.

    Args:
        session: The connection pool (the SDK's `PooledSession`, or the user's own).
        api_key: Sent as a bearer token to API hosts, never to presigned URLs.
        owns_session: Close the session on `close` (only when the SDK created it).
    """

    def __init__(self, session: requests.Session, api_key: str, owns_session: bool) -> None:
        self.session = session
        self._owns_session = owns_session
        self._auth = _BearerAuth(api_key)
        self._fast = isinstance(session, PooledSession)

    def send(
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
                response = self.session.request(
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
                f"{method} {_shown_url(url, authenticated)} timed out: "
                f"{_shown_text(str(exc), authenticated)}"
            )
            err._possibly_sent = not _never_sent(exc)
            raise err from None
        except requests.RequestException as exc:
            err = APIConnectionError(
                f"{method} {_shown_url(url, authenticated)} failed: "
                f"{_shown_text(str(exc), authenticated)}"
            )
            err._possibly_sent = not _never_sent(exc)
            raise err from None
        finally:
            if log.isEnabledFor(logging.INFO):
                _log_attempt(method, url, authenticated, status, started, attempt)

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
        settings = self.session.merge_environment_settings(url, {}, stream, None, None)
        adapter = self.session.get_adapter(url)
        return adapter.send(
            prepared,
            stream=stream,
            timeout=(timeout.connect, timeout.read),
            verify=settings["verify"] if settings["verify"] is not None else True,
            cert=settings["cert"],
            proxies=settings["proxies"],
        )

    def close(self) -> None:
        """Close the pooled connections (only if the SDK created the session)."""
        if self._owns_session:
            self.session.close()


def _shown_url(url: str, authenticated: bool) -> str:
    """A URL as logs and error messages show it. Only credentials are hidden: a presigned
    URL's query string is its signature, while an API URL's query holds plain parameters
    (``limit``, ``q``…; the API key travels in a header)."""
    return url if authenticated else redact_url(url)


def _shown_text(text: str, authenticated: bool) -> str:
    """An exception's text, which quotes the URL, under the same rule as `_shown_url`."""
    return text if authenticated else redact_text(text)


def _log_attempt(
    method: str,
    url: str,
    authenticated: bool,
    status: int | None,
    started: float,
    attempt: int,
) -> None:
    elapsed_ms = (time.perf_counter() - started) * 1000
    shown_url = _shown_url(url, authenticated)
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
