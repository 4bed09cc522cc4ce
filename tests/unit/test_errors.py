"""Every wire error code maps to its class and status (the shared table in `arker._error_codes`)."""

from __future__ import annotations

import pickle
import re

import pytest

import arker._exceptions as exc_mod
from arker import (
    APIStatusError,
    Arker,
    ArkerError,
    AuthenticationError,
    BadRequestError,
    CommandNotFoundError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    NotImplementedByServerError,
    PayloadTooLargeError,
    PaymentRequiredError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    ServiceUnavailableError,
    UnsupportedError,
    VmBusyError,
)
from arker._error_codes import STATUS_BY_CODE, code_for_status, status_for_code

VM = "01HZZZZZZZZZZZZZZZZZZZZZZZ_abc1"

# (wire code, HTTP status, class): the protocol's envelope table, written out independently
# of arker._error_codes so that a change to either shows here.
ENVELOPE_CASES = [
    ("bad_request", 400, BadRequestError),
    ("unauthorized", 401, AuthenticationError),
    ("payment_required", 402, PaymentRequiredError),
    ("forbidden", 403, PermissionDeniedError),
    ("not_found", 404, NotFoundError),
    ("conflict", 409, ConflictError),
    ("vm_busy", 409, VmBusyError),
    ("payload_too_large", 413, PayloadTooLargeError),
    ("unsupported_region", 400, UnsupportedError),
    ("unsupported_operation", 400, UnsupportedError),
    ("command_not_found", 404, CommandNotFoundError),
    ("internal", 500, InternalServerError),
    ("not_implemented", 501, NotImplementedByServerError),
    # 429 and 5xx gateways are the transient statuses; the protocol gives them no
    # envelope codes, so the SDK names them itself.
    ("rate_limited", 429, RateLimitError),
    ("quota_exceeded", 429, QuotaExceededError),
    ("unavailable", 503, ServiceUnavailableError),
]


def _all_status_subclasses() -> set[type]:
    found: set[type] = set()
    todo = [APIStatusError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__ == exc_mod.__name__:
                found.add(sub)
                todo.append(sub)
    return found


def test_table_covers_every_error_class() -> None:
    assert _all_status_subclasses() == {cls for _, _, cls in ENVELOPE_CASES}


@pytest.fixture
def client0(make_client) -> Arker:
    return make_client(max_retries=0)


def _run_error(client: Arker, rsps, status: int, **kwargs) -> ArkerError:
    rsps.post(f"{client.base_url}/api/v1/vms/{VM}/run", status=status, **kwargs)
    with pytest.raises(ArkerError) as info:
        client.runs.create(VM, "true")
    return info.value


@pytest.mark.parametrize(("code", "status", "cls"), ENVELOPE_CASES)
def test_envelope_code_maps_to_class(client0, rsps, code, status, cls) -> None:
    message = f"something about {code}"
    err = _run_error(
        client0, rsps, status, json={"ok": False, "error": {"code": code, "message": message}}
    )
    assert type(err) is cls
    assert isinstance(err, APIStatusError)
    assert (err.code, err.message, err.status) == (code, message, status)
    assert message in str(err)


def test_unknown_code_is_generic_status_error_with_that_code(client0, rsps) -> None:
    err = _run_error(
        client0, rsps, 418, json={"ok": False, "error": {"code": "teapot", "message": "short"}}
    )
    assert type(err) is APIStatusError
    assert (err.code, err.message, err.status) == ("teapot", "short", 418)


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (502, "<html>Bad Gateway</html>", ServiceUnavailableError),
        (503, "", ServiceUnavailableError),
        (500, "Traceback (most recent call last)", InternalServerError),
        (404, "no route", NotFoundError),
        (401, "nope", AuthenticationError),
        (400, "<h1>bad</h1>", BadRequestError),
        (418, "teapot", BadRequestError),
    ],
)
def test_non_json_error_body_maps_by_status(client0, rsps, status, body, cls) -> None:
    err = _run_error(client0, rsps, status, body=body, content_type="text/html")
    assert type(err) is cls
    assert err.status == status
    assert err.code and isinstance(err.code, str)
    assert str(status) in err.message
    if body:
        assert body[:20] in err.message


def test_ok_false_with_http_200_is_an_error(client0, rsps) -> None:
    err = _run_error(
        client0, rsps, 200, json={"ok": False, "error": {"code": "vm_busy", "message": "busy"}}
    )
    assert type(err) is VmBusyError
    assert err.code == "vm_busy"


@pytest.mark.parametrize("code", [c for c, _, _ in ENVELOPE_CASES])
def test_errors_are_arker_errors_and_pickle(code) -> None:
    err = exc_mod.error_for(code, "msg", 400)
    assert isinstance(err, ArkerError)
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is type(err)
    assert (clone.code, clone.message, clone.status) == (err.code, err.message, err.status)


def test_one_except_catches_everything(client0, rsps) -> None:
    for code, status, _ in ENVELOPE_CASES:
        rsps.upsert(
            "POST",
            f"{client0.base_url}/api/v1/vms/{VM}/run",
            status=status,
            json={"ok": False, "error": {"code": code, "message": "m"}},
        )
        try:
            client0.runs.create(VM, "true")
        except ArkerError as err:
            assert err.code == code
        else:
            pytest.fail(f"{code} did not raise")


# --- one table: codes, statuses and classes agree -------------------------------------------


def test_every_code_of_the_shared_table_has_its_class_and_back() -> None:
    classes = {cls.wire_code for cls in _all_status_subclasses() if "wire_code" in vars(cls)}
    assert classes == set(STATUS_BY_CODE)


@pytest.mark.parametrize(("code", "status", "cls"), ENVELOPE_CASES)
def test_shared_table_gives_the_status_of_each_code(code, status, cls) -> None:
    assert status_for_code(code) == status


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (502, "unavailable"),
        (504, "unavailable"),
        (404, "not_found"),
        (409, "conflict"),
        (405, "bad_request"),
        (422, "bad_request"),
        (418, "bad_request"),
        (599, "internal"),
    ],
)
def test_a_status_without_envelope_stands_for_its_general_code(status, code) -> None:
    assert code_for_status(status) == code


def test_the_class_tree_in_the_docstring_matches_the_table() -> None:
    rows = re.findall(r"(\w+Error)\s+([\d/]+) (\w+\*?)", exc_mod.__doc__ or "")
    assert len(rows) == len(ENVELOPE_CASES) - 1  # unsupported_* is one row
    for name, statuses, code in rows:
        sent = code.replace("*", "region")  # unsupported_* stands for unsupported_region…
        assert str(status_for_code(sent)) in statuses.split("/")
        assert type(exc_mod.error_for(sent, "", 0)) is getattr(exc_mod, name)


# --- refused before sending: the server's class, but no HTTP status -------------------------


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c: c.vms.list(limit=0), id="limit"),
        pytest.param(lambda c: c.vms.list(sort="name"), id="sort"),
        pytest.param(lambda c: c.runs.create(VM, "true", timeout=0), id="run-timeout"),
        pytest.param(lambda c: c.runs.create("", "true"), id="vm-id"),
        pytest.param(lambda c: c.sync.write(VM, "/home/user/x", b"", mode=0o17777), id="mode"),
        pytest.param(lambda c: c.vms.fork("arkuntu", name="x" * 300), id="fork-name"),
    ],
)
def test_arguments_refused_before_sending_have_status_0(client0, rsps, call) -> None:
    with pytest.raises(BadRequestError) as info:
        call(client0)
    assert (info.value.code, info.value.status) == ("bad_request", 0)
    assert len(rsps.calls) == 0
