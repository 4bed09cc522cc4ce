"""`Arker`, the client users construct."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import TracebackType

import requests

from ._base_client import BaseClient
from ._computer import Computer
from ._config import DEFAULT_TIMEOUT, ClientConfig, TimeoutTypes, to_timeout
from ._constants import DEFAULT_BASE_URL, DEFAULT_CONTROL_URL
from ._exceptions import ConfigurationError
from ._logging import setup_from_env
from ._models import VmList
from ._retry import RetryPolicy
from ._transport import new_session
from ._wire import SortOrder
from .resources import RunsResource, SessionsResource, SyncResource, VmsResource

__all__ = ["Arker"]


def _clean_url(url: str, what: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"{what} must start with http:// or https://: {url!r}")
    return url


class Arker(BaseClient):
    """Client for the Arker API.

    One client may be shared by many threads: each call builds its own request and
    retry state, and the connection pool is thread-safe. Set ``pool_maxsize`` to at
    least the number of threads calling at once.

    Args:
        api_key: Your key; defaults to ``ARKER_API_KEY``.
        base_url: Regional API host; defaults to ``ARKER_BASE_URL``, then the
            production region.
        control_url: Global host for list and fork-by-name; defaults to
            ``ARKER_CONTROL_URL``, then ``https://arker.ai``.
        timeout: Seconds: one number, a ``(connect, read)`` tuple or a `Timeout`.
        max_retries: Retries after the first attempt of each call.
        max_retry_after: Longest ``Retry-After`` the client honours, in seconds.
        retry_policy: Full control of retries and backoff; when given, it replaces
            ``max_retries`` and ``max_retry_after``.
        pool_maxsize: Connections kept per host, for use from many threads.
        default_headers: Extra headers sent with every API request.
        session: Bring your own `requests.Session` (you then close it yourself).
        sleep: The function used to wait between retries (tests pass a fake).

    Raises:
        ConfigurationError: No API key was given or found in the environment, or a
            URL is not http(s).

    Example:
        ```python
        with Arker() as client:
            vm = client.vms.fork("arkuntu", name="scratch")
            print(client.runs.create(vm.vm_id, "echo hi").stdout_text)
        ```
    """

    vms: VmsResource
    runs: RunsResource
    sessions: SessionsResource
    sync: SyncResource

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        control_url: str | None = None,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        max_retries: int = RetryPolicy.max_retries,
        max_retry_after: float = RetryPolicy.max_retry_after,
        retry_policy: RetryPolicy | None = None,
        pool_maxsize: int = 32,
        default_headers: Mapping[str, str] | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        setup_from_env()
        key = api_key if api_key is not None else os.environ.get("ARKER_API_KEY", "")
        if not key or not key.strip():
            raise ConfigurationError(
                "no API key: pass Arker(api_key=...) or set the ARKER_API_KEY environment variable"
            )
        retry = retry_policy or RetryPolicy(
            max_retries=max_retries, max_retry_after=max_retry_after
        )
        if retry.max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0, got {retry.max_retries}")
        config = ClientConfig(
            api_key=key.strip(),
            base_url=_clean_url(
                base_url or os.environ.get("ARKER_BASE_URL") or DEFAULT_BASE_URL, "base_url"
            ),
            control_url=_clean_url(
                control_url or os.environ.get("ARKER_CONTROL_URL") or DEFAULT_CONTROL_URL,
                "control_url",
            ),
            timeout=to_timeout(timeout),
            retry=retry,
            default_headers=dict(default_headers or {}),
        )
        owns = session is None
        super().__init__(config, session or new_session(pool_maxsize), sleep, owns)
        self._attach_resources()

    def _attach_resources(self) -> None:
        self.vms = VmsResource(self)
        self.runs = RunsResource(self)
        self.sessions = SessionsResource(self)
        self.sync = SyncResource(self)

    @property
    def base_url(self) -> str:
        """The regional API host in use."""
        return self._config.base_url

    @property
    def control_url(self) -> str:
        """The global host in use for list and fork-by-name."""
        return self._config.control_url

    def with_options(
        self,
        *,
        timeout: TimeoutTypes | None = None,
        max_retries: int | None = None,
        max_retry_after: float | None = None,
        retry_policy: RetryPolicy | None = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> Arker:
        """A copy of this client with some options changed, sharing its connection pool.

        Use it for per-call overrides:
        ``client.with_options(max_retries=0, timeout=5).vms.list(limit=1)``.
        Closing the copy does not close the shared pool.
        """
        retry = retry_policy or self._config.retry
        if max_retries is not None:
            retry = replace(retry, max_retries=max_retries)
        if max_retry_after is not None:
            retry = replace(retry, max_retry_after=max_retry_after)
        config = replace(
            self._config,
            timeout=to_timeout(timeout) if timeout is not None else self._config.timeout,
            retry=retry,
            default_headers={**self._config.default_headers, **(default_headers or {})},
        )
        clone = Arker.__new__(Arker)
        BaseClient.__init__(clone, config, self._session, self._sleep, owns_session=False)
        clone._attach_resources()
        return clone

    # -- the 0.1.0 surface ---------------------------------------------------------------

    def vm(self, vm_id: str) -> Computer:
        """A handle on a VM by id or image name (``"arkuntu"``). Makes no request."""
        return Computer(self, vm_id)

    def list(
        self,
        *,
        limit: int = 25,
        offset: int = 0,
        q: str | None = None,
        sort: SortOrder | None = None,
    ) -> VmList:
        """One page of your VMs; same as `client.vms.list`."""
        return self.vms.list(limit=limit, offset=offset, q=q, sort=sort)

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Arker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Arker(base_url={self.base_url!r}, control_url={self.control_url!r})"
