"""Retry decisions (table tests of `arker._retry`) and retry behaviour on the wire."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
import requests
import tenacity

from arker import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    Arker,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    QuotaExceededError,
    RateLimitError,
    RetryPolicy,
    ServiceUnavailableError,
)
from arker._exceptions import error_for
from arker._retry import (
    TRANSIENT_HINTS,
    is_transient,
    is_transient_envelope_error,
    is_transient_status,
    parse_retry_after,
    should_retry,
)

VM = "01HZZZZZZZZZZZZZZZZZZZZZZZ_abc1"
LIST_OK = {"ok": True, "items": [], "total": 0}
RUN_OK = {"ok": True, "stdout": "ok", "stderr": "", "exit_code": 0}

# --- named decisions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "transient"),
    [
        (429, True),
        (502, True),
        (503, True),
        (504, True),
        (200, False),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (409, False),
        (413, False),
        (500, False),
        (501, False),
    ],
)
def test_is_transient_status(status, transient) -> None:
    assert is_transient_status(status) is transient


@pytest.mark.parametrize(
    ("code", "message", "transient"),
    [
        ("internal", "upstream said 503", True),
        ("internal", "S3: Service Unavailable", True),
        ("internal", "request throttled: throttle", True),
        ("internal", "SlowDown: reduce your request rate", True),
        ("internal", "ThrottlingException: rate exceeded", True),
        ("internal", "disk exploded", False),
        ("internal", "", False),
        ("internal", "service unavailable", False),  # hints are matched verbatim
        ("bad_request", "503 Service Unavailable", False),
        ("not_found", "SlowDown", False),
    ],
)
def test_is_transient_envelope_error(code, message, transient) -> None:
    assert is_transient_envelope_error(code, message) is transient


def test_every_wire_hint_is_transient() -> None:
    assert set(TRANSIENT_HINTS) == {
        "503",
        "Service Unavailable",
        "throttle",
        "SlowDown",
        "ThrottlingException",
    }
    for hint in TRANSIENT_HINTS:
        assert is_transient_envelope_error("internal", f"x {hint} y")


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("0", 0.0),
        ("7", 7.0),
        (" 12 ", 12.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("soon", None),
        ("nan", None),
        (format_datetime(datetime.fromtimestamp(NOW + 30, timezone.utc), usegmt=True), 30.0),
        (format_datetime(datetime.fromtimestamp(NOW - 30, timezone.utc), usegmt=True), 0.0),
    ],
)
def test_parse_retry_after(value, expected) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_http_date_against_real_clock() -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=120)
    seconds = parse_retry_after(format_datetime(when, usegmt=True))
    assert seconds is not None and 100 < seconds <= 120


POLICY = RetryPolicy(max_retries=3, max_retry_after=60.0)


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (APIConnectionError("reset"), True),
        (APITimeoutError("slow"), True),
        (error_for("rate_limited", "slow down", 429), True),
        (error_for("unavailable", "", 502), True),
        (error_for("unavailable", "", 503), True),
        (error_for("unavailable", "", 504), True),
        (error_for("internal", "503 Service Unavailable", 200), True),
        (error_for("internal", "SlowDown", 500), True),
        (error_for("rate_limited", "", 429, retry_after=60.0), True),
        (error_for("rate_limited", "", 429, retry_after=61.0), False),
        (error_for("quota_exceeded", "runs of this org", 429), True),
        (error_for("quota_exceeded", "", 429, retry_after=1.0), True),
        (error_for("quota_exceeded", "", 429, retry_after=61.0), False),
        (error_for("internal", "boom", 500), False),
        (error_for("bad_request", "503", 400), False),
        (error_for("unauthorized", "", 401), False),
        (error_for("not_found", "", 404), False),
        (error_for("conflict", "", 409), False),
        (error_for("payload_too_large", "", 413), False),
        (error_for("not_implemented", "", 501), False),
        (ValueError("not ours"), False),
        (KeyboardInterrupt(), False),
    ],
)
def test_should_retry(exc, retry) -> None:
    assert should_retry(exc, POLICY) is retry


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (error_for("rate_limited", "", 429, retry_after=600.0), True),  # policy aside
        (error_for("quota_exceeded", "", 429, retry_after=600.0), True),
        (error_for("unavailable", "", 504), True),
        (error_for("internal", "ThrottlingException", 200), True),
        (error_for("vm_busy", "throttle", 409), False),  # hints count for internal only
        (error_for("internal", "boom", 500), False),
    ],
)
def test_is_transient(exc, transient) -> None:
    assert is_transient(exc) is transient


# --- behaviour on the wire ------------------------------------------------------------------


def _err(code: str, message: str) -> dict:
    return {"ok": False, "error": {"code": code, "message": message}}


TRANSIENT = [
    pytest.param({"status": 429, "json": _err("rate_limited", "slow")}, id="429"),
    pytest.param({"status": 502, "body": "bad gateway"}, id="502"),
    pytest.param({"status": 503, "json": _err("unavailable", "down")}, id="503"),
    pytest.param({"status": 504, "body": ""}, id="504"),
    pytest.param({"body": requests.ConnectionError("connection reset")}, id="connection"),
    pytest.param({"body": requests.ReadTimeout("read timed out")}, id="read-timeout"),
    pytest.param({"status": 200, "json": _err("internal", "S3 SlowDown")}, id="internal-200"),
    pytest.param(
        {"status": 500, "json": _err("internal", "503 Service Unavailable")}, id="internal-500"
    ),
]


@pytest.mark.parametrize("failure", TRANSIENT)
def test_transient_failure_is_retried(client: Arker, rsps, sleeps, failure) -> None:
    url = f"{client.control_url}/api/v1/vms/list"
    rsps.get(url, **failure)
    rsps.get(url, json={"ok": True, "items": [], "total": 3})
    assert client.vms.list().total == 3
    assert len(rsps.calls) == 2
    assert len(sleeps) == 1


PERMANENT = [
    pytest.param(400, _err("bad_request", "no"), BadRequestError, id="400"),
    pytest.param(401, _err("unauthorized", "who"), AuthenticationError, id="401"),
    pytest.param(404, _err("not_found", "gone"), NotFoundError, id="404"),
    pytest.param(409, _err("conflict", "503"), ConflictError, id="409"),
    pytest.param(413, _err("payload_too_large", "big"), PayloadTooLargeError, id="413"),
    pytest.param(500, _err("internal", "disk on fire"), InternalServerError, id="internal"),
    pytest.param(200, _err("internal", "disk on fire"), InternalServerError, id="internal-200"),
]


@pytest.mark.parametrize(("status", "body", "cls"), PERMANENT)
def test_permanent_failure_is_not_retried(client: Arker, rsps, sleeps, status, body, cls) -> None:
    url = f"{client.control_url}/api/v1/vms/list"
    rsps.get(url, status=status, json=body)
    rsps.get(url, json=LIST_OK)  # would be reached by a wrong retry
    with pytest.raises(cls):
        client.vms.list()
    assert len(rsps.calls) == 1
    assert sleeps == []


def test_exhaustion_raises_the_last_real_error(make_client, rsps, sleeps) -> None:
    client = make_client(max_retries=2)
    url = f"{client.control_url}/api/v1/vms/list"
    rsps.get(url, status=502, json=_err("unavailable", "first"))
    rsps.get(url, status=503, json=_err("unavailable", "second"))
    rsps.get(url, status=429, json=_err("rate_limited", "third and last"))
    with pytest.raises(APIStatusError) as info:
        client.vms.list()
    assert not isinstance(info.value, tenacity.RetryError)
    assert type(info.value) is RateLimitError
    assert (info.value.status, info.value.message) == (429, "third and last")
    assert len(rsps.calls) == 3
    assert len(sleeps) == 2


def test_exhaustion_on_connection_errors(make_client, rsps) -> None:
    client = make_client(max_retries=1)
    rsps.get(f"{client.control_url}/api/v1/vms/list", body=requests.ConnectionError("refused"))
    with pytest.raises(APIConnectionError) as info:
        client.vms.list()
    assert "refused" in str(info.value)
    assert len(rsps.calls) == 2


def test_retry_after_is_honoured(client: Arker, rsps, sleeps) -> None:
    url = f"{client.control_url}/api/v1/vms/list"
    rsps.get(url, status=429, headers={"Retry-After": "7"}, json=_err("rate_limited", "x"))
    rsps.get(url, status=503, headers={"Retry-After": "2.5"}, body="")
    rsps.get(url, json=LIST_OK)
    client.vms.list()
    assert sleeps == [7.0, 2.5]


def test_retry_after_beyond_cap_raises_without_sleeping(make_client, rsps, sleeps) -> None:
    client = make_client(max_retry_after=30)
    url = f"{client.control_url}/api/v1/vms/list"
    rsps.get(url, status=429, headers={"Retry-After": "31"}, json=_err("rate_limited", "later"))
    rsps.get(url, json=LIST_OK)
    with pytest.raises(RateLimitError) as info:
        client.vms.list()
    assert info.value.retry_after == 31.0
    assert sleeps == []
    assert len(rsps.calls) == 1


def test_run_refused_for_concurrency_is_sent_again_after_retry_after(
    client: Arker, rsps, sleeps
) -> None:
    url = f"{client.base_url}/api/v1/vms/{VM}/run"
    full = _err("quota_exceeded", "the organisation runs 16 commands already")
    rsps.post(url, status=429, headers={"Retry-After": "3"}, json=full)
    rsps.post(url, json=RUN_OK)
    assert client.runs.create(VM, "true").stdout == b"ok"
    assert sleeps == [3.0]
    assert len(rsps.calls) == 2


def test_run_refused_for_concurrency_past_the_budget_is_a_quota_error(
    make_client, rsps, sleeps
) -> None:
    client = make_client(max_retries=1)
    url = f"{client.base_url}/api/v1/vms/{VM}/run"
    full = _err("quota_exceeded", "this VM runs 8 commands already")
    rsps.post(url, status=429, headers={"Retry-After": "1"}, json=full)
    rsps.post(url, status=429, headers={"Retry-After": "1"}, json=full)
    with pytest.raises(QuotaExceededError) as info:
        client.runs.create(VM, "true")
    assert isinstance(info.value, RateLimitError)
    assert (info.value.status, info.value.retry_after) == (429, 1.0)
    assert sleeps == [1.0]


@pytest.mark.parametrize("budget", [0, 1, 4])
def test_budget_on_client(make_client, rsps, sleeps, budget) -> None:
    client = make_client(max_retries=budget)
    rsps.get(f"{client.control_url}/api/v1/vms/list", status=503, body="")
    with pytest.raises(ServiceUnavailableError):
        client.vms.list()
    assert len(rsps.calls) == 1 + budget
    assert len(sleeps) == budget


@pytest.mark.parametrize("budget", [0, 2, 5])
def test_budget_per_call_with_options(make_client, rsps, sleeps, budget) -> None:
    client = make_client(max_retries=1)
    rsps.get(f"{client.control_url}/api/v1/vms/list", status=503, body="")
    with pytest.raises(ServiceUnavailableError):
        client.with_options(max_retries=budget).vms.list()
    assert len(rsps.calls) == 1 + budget
    rsps.calls.reset()
    with pytest.raises(ServiceUnavailableError):
        client.vms.list()  # the original client keeps its own budget
    assert len(rsps.calls) == 2


def test_negative_budget_is_a_configuration_error(make_client) -> None:
    with pytest.raises(ValueError):
        make_client(max_retries=-1)


def test_sleeps_are_exponential_and_bounded(make_client, rsps, sleeps) -> None:
    policy = RetryPolicy()
    client = make_client(max_retries=8)
    rsps.get(f"{client.control_url}/api/v1/vms/list", status=503, body="")
    with pytest.raises(ServiceUnavailableError):
        client.vms.list()
    assert len(sleeps) == 8
    jitter = policy.initial_backoff
    for n, slept in enumerate(sleeps):
        base = policy.initial_backoff * 2**n
        assert min(base, policy.max_backoff) <= slept <= min(base + jitter, policy.max_backoff)
    assert sleeps[-1] == policy.max_backoff  # 0.5 * 2**7 = 64 s is capped
    assert sleeps[1] > sleeps[0] * 1.3 or sleeps[2] > sleeps[1] * 1.3


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_sleeps_carry_jitter(make_client, rsps, sleeps, monkeypatch, fraction) -> None:
    policy = RetryPolicy()
    monkeypatch.setattr(random, "uniform", lambda a, b: a + (b - a) * fraction)
    client = make_client(max_retries=2)
    rsps.get(f"{client.control_url}/api/v1/vms/list", status=503, body="")
    with pytest.raises(ServiceUnavailableError):
        client.vms.list()
    jitter = policy.initial_backoff * fraction
    assert sleeps == [
        pytest.approx(policy.initial_backoff + jitter),
        pytest.approx(policy.initial_backoff * 2 + jitter),
    ]


# --- idempotency keys -------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["fork", "run"])
def test_same_idempotency_key_on_every_attempt(client: Arker, rsps, route) -> None:
    url = f"{client.base_url}/api/v1/vms/{VM}/{route}"
    ok = {"ok": True, "vm_id": VM} if route == "fork" else RUN_OK
    rsps.post(url, status=503, body="")
    rsps.post(url, body=requests.ConnectionError("reset"))
    rsps.post(url, status=200, json=_err("internal", "ThrottlingException"))
    rsps.post(url, json=ok)
    call = client.vms.fork if route == "fork" else lambda v: client.runs.create(v, "true")
    call(VM)
    keys = {c.request.headers["Idempotency-Key"] for c in rsps.calls}
    bodies = {c.request.body for c in rsps.calls}
    assert len(rsps.calls) == 4
    assert len(keys) == 1 and len(bodies) == 1
    (key,) = keys
    assert 1 <= len(key) <= 64 and key.isascii() and key.isprintable()


@pytest.mark.parametrize("route", ["fork", "run"])
def test_different_calls_get_different_keys(client: Arker, rsps, route) -> None:
    url = f"{client.base_url}/api/v1/vms/{VM}/{route}"
    rsps.post(url, json={"ok": True, "vm_id": VM} if route == "fork" else RUN_OK)
    for _ in range(2):
        if route == "fork":
            client.vm(VM).fork(name="same")
        else:
            client.vm(VM).run("same")
    first, second = (c.request.headers["Idempotency-Key"] for c in rsps.calls)
    assert first != second
    assert json.loads(rsps.calls[0].request.body) == json.loads(rsps.calls[1].request.body)


def test_explicit_idempotency_key_sent_as_is(client: Arker, rsps) -> None:
    rsps.post(f"{client.base_url}/api/v1/vms/{VM}/fork", json={"ok": True, "vm_id": VM})
    rsps.post(f"{client.base_url}/api/v1/vms/{VM}/run", json=RUN_OK)
    client.vms.fork(VM, idempotency_key="my-key-1")
    client.runs.create(VM, "true", idempotency_key="run key/2")
    client.vm(VM).fork(idempotency_key="my-key-1")
    keys = [c.request.headers["Idempotency-Key"] for c in rsps.calls]
    assert keys == ["my-key-1", "run key/2", "my-key-1"]


def test_adapters_never_retry(client: Arker) -> None:
    adapters = client._session.adapters
    assert {"http://", "https://"} <= set(adapters)
    for adapter in adapters.values():
        assert adapter.max_retries.total == 0
