"""One `Arker` client shared by many threads, against a real loopback HTTP/1.1 server.

Every answer echoes something only its own request carries (a token in the path or the
query, and the per-call ``Idempotency-Key``), so a response handed to the wrong thread
fails the check. TCP connections are counted by the server's accept loop.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from arker import Arker
from arker._transport import PooledSession

THREADS = 16
CALLS = 40


def echo(loopback) -> Callable[[BaseHTTPRequestHandler], None]:
    """Answer runs with ``<vm id from the path>|<Idempotency-Key>`` as stdout, and lists
    with one VM named after ``q``; after a random 0–2 ms so that threads interleave."""

    def behaviour(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(random.random() / 500)
        url = urlsplit(handler.path)
        if url.path.endswith("/run"):
            vm_id = unquote(url.path.split("/")[-2])
            key = handler.headers.get("Idempotency-Key", "")
            body = {"ok": True, "stdout": f"{vm_id}|{key}", "exit_code": 0}
        else:
            q = parse_qs(url.query)["q"][0]
            vm = {"vm_id": q, "name": q, "base_image": "b", "region": "r"}
            body = {"ok": True, "items": [{**vm, "created_at": "2026-01-01T00:00:00Z"}]}
            body["total"] = int(parse_qs(url.query)["offset"][0])
        loopback.send_json(handler, 200, body)

    return behaviour


def serve_many(loopback) -> None:
    """Echo answers, and a listen backlog for 16 simultaneous connects (socketserver's
    default of 5 overflows and the kernel resets the surplus: not what is tested here)."""
    loopback.server.socket.listen(64)
    loopback.behaviour = echo(loopback)


def hammer(client: Arker, thread: int) -> list[str]:
    """``CALLS`` calls from one thread, alternating run and list; every answer checked.
    Returns the idempotency keys its runs were sent with (as echoed back)."""
    keys = []
    for call in range(CALLS):
        token = f"t{thread}-c{call}"
        if call % 2:
            page = client.vms.list(q=token, offset=thread * 1000 + call)
            assert [vm.name for vm in page] == [token]
            assert page.total == thread * 1000 + call
        else:
            stdout = client.runs.create(token, "true").stdout_text
            echoed, _, key = stdout.partition("|")
            assert echoed == token
            keys.append(key)
    return keys


def run_threads(client: Arker, threads: int) -> list[str]:
    barrier = threading.Barrier(threads)

    def one(thread: int) -> list[str]:
        barrier.wait()  # all threads start together
        return hammer(client, thread)

    with ThreadPoolExecutor(threads) as pool:
        return [key for keys in pool.map(one, range(threads)) for key in keys]


def test_one_client_many_threads_no_mixups_bounded_connections(
    loopback, make_client, caplog: pytest.LogCaptureFixture
) -> None:
    serve_many(loopback)
    client = make_client(base_url=loopback.url, control_url=loopback.url, max_retries=0)
    caplog.set_level(logging.DEBUG, logger="urllib3")
    caplog.set_level(logging.INFO, logger="arker")

    keys = run_threads(client, THREADS)

    assert len(loopback.requests) == THREADS * CALLS  # no retries, no lost calls
    assert len(keys) == len(set(keys)) == THREADS * CALLS // 2  # one key per call
    assert loopback.connections <= THREADS  # never more than one per busy thread
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # The SDK's own per-attempt log records, written from 16 threads, are all there.
    attempts = [r for r in caplog.records if getattr(r, "arker_method", None)]
    assert len(attempts) == THREADS * CALLS


def test_with_options_copies_in_threads_share_one_pool(loopback, make_client) -> None:
    serve_many(loopback)
    client = make_client(base_url=loopback.url, control_url=loopback.url)
    barrier = threading.Barrier(THREADS)

    def one(thread: int) -> None:
        copy = client.with_options(timeout=30, default_headers={"X-Thread": str(thread)})
        barrier.wait()
        hammer(copy, thread)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, range(THREADS)))
    assert loopback.connections <= THREADS
    for _, path, headers in loopback.requests:  # each copy's headers stay its own
        token = path.split("/")[-2] if path.endswith("/run") else parse_qs(path)["q"][0]
        assert token.startswith(f"t{headers['X-Thread']}-")


def test_more_threads_than_the_pool_opens_and_discards_connections(
    loopback, make_client, caplog: pytest.LogCaptureFixture
) -> None:
    """The rule the docs state: size ``pool_maxsize`` to the number of threads. With
    fewer, calls still succeed, but connections beyond the pool are closed after use
    (urllib3 warns "Connection pool is full") and new ones keep being opened."""
    serve_many(loopback)
    client = make_client(base_url=loopback.url, control_url=loopback.url, pool_maxsize=2)
    caplog.set_level(logging.WARNING, logger="urllib3")

    run_threads(client, THREADS)

    assert len(loopback.requests) == THREADS * CALLS
    assert loopback.connections > THREADS
    assert any("pool is full" in r.getMessage() for r in caplog.records)


def test_environment_cache_is_safe_under_concurrent_misses(monkeypatch) -> None:
    """`PooledSession._environment` is filled from many threads at once: every thread
    gets the right settings, and the cache stays bounded."""
    for name in ("NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.test:3128")
    session = PooledSession()
    barrier = threading.Barrier(THREADS)

    def one(thread: int) -> None:
        barrier.wait()
        for host in range(100):
            url = f"http://h{(host + thread) % 100}.test/x"
            settings = session.merge_environment_settings(url, {}, None, None, None)
            assert settings["proxies"]["http"] == "http://proxy.test:3128"
            assert settings["verify"] is True

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, range(THREADS)))
    # The size check and the insert are not atomic together, so the bound of 64 may be
    # overshot by at most one entry per racing thread: a memory guard, not correctness.
    assert len(session._environment) <= 64 + THREADS
