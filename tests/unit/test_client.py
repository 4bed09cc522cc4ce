"""Client construction, lifecycle, with_options, logging and secret hygiene."""

from __future__ import annotations

import logging
import pickle

import pytest
import requests

from arker import (
    APIConnectionError,
    Arker,
    ArkerError,
    AuthenticationError,
    ConfigurationError,
    ResponseValidationError,
)

VM = "01HZZZZZZZZZZZZZZZZZZZZZZZ_abc1"
LIST_OK = {"ok": True, "items": [], "total": 0}


def test_env_fallbacks(monkeypatch, rsps) -> None:
    monkeypatch.setenv("ARKER_API_KEY", "env-key-1")
    monkeypatch.setenv("ARKER_BASE_URL", "http://env-base.test/")
    monkeypatch.setenv("ARKER_CONTROL_URL", "http://env-control.test")
    with Arker() as client:
        assert client.base_url == "http://env-base.test"
        assert client.control_url == "http://env-control.test"
        rsps.get("http://env-control.test/api/v1/vms/list", json=LIST_OK)
        rsps.delete(f"http://env-base.test/api/v1/vms/{VM}", json={"ok": True})
        client.list()
        client.vm(VM).delete()
    assert [c.request.headers["Authorization"] for c in rsps.calls] == ["Bearer env-key-1"] * 2


def test_arguments_beat_env(monkeypatch) -> None:
    monkeypatch.setenv("ARKER_API_KEY", "env-key")
    monkeypatch.setenv("ARKER_BASE_URL", "http://env-base.test")
    monkeypatch.setenv("ARKER_CONTROL_URL", "http://env-control.test")
    client = Arker("arg-key", "http://arg-base.test", control_url="http://arg-control.test")
    assert (client.base_url, client.control_url) == (
        "http://arg-base.test",
        "http://arg-control.test",
    )
    assert client._config.api_key == "arg-key"


def test_production_defaults() -> None:
    client = Arker(api_key="k")
    assert client.base_url == "https://aws-us-west-2.burst.arker.ai"
    assert client.control_url == "https://arker.ai"


@pytest.mark.parametrize("key", [None, "", "   "])
def test_missing_key_is_configuration_error(key) -> None:
    with pytest.raises(ConfigurationError) as info:
        Arker(api_key=key)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, ArkerError)
    assert "ARKER_API_KEY" in str(err) and "api_key" in str(err)
    assert err.code and err.message and err.status == 0


def test_bad_url_is_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        Arker(api_key="k", base_url="ftp://nope")
    with pytest.raises(ConfigurationError):
        Arker(api_key="k", control_url="arker.ai")


def test_context_manager_closes_owned_session(make_client, monkeypatch) -> None:
    client = make_client()
    closed = []
    monkeypatch.setattr(client._session, "close", lambda: closed.append(True))
    with client as entered:
        assert entered is client
    assert closed == [True]


def test_borrowed_session_is_not_closed(make_client, monkeypatch) -> None:
    session = requests.Session()
    closed = []
    monkeypatch.setattr(session, "close", lambda: closed.append(True))
    with make_client(session=session) as client:
        assert client._session is session
    assert closed == []


def test_with_options_shares_session_and_closing_copy_keeps_it(make_client, monkeypatch) -> None:
    client = make_client()
    copy = client.with_options(max_retries=0, timeout=(1, 2), default_headers={"X-A": "1"})
    assert copy._session is client._session
    assert copy is not client
    closed = []
    monkeypatch.setattr(client._session, "close", lambda: closed.append(True))
    copy.close()
    assert closed == []
    client.close()
    assert closed == [True]


def test_with_options_changes_only_what_it_is_given(make_client) -> None:
    client = make_client(max_retries=4, timeout=(1, 2))
    copy = client.with_options(max_retries=1)
    assert copy._config.retry.max_retries == 1
    assert copy._config.timeout == client._config.timeout
    assert client._config.retry.max_retries == 4
    assert (copy.base_url, copy.control_url) == (client.base_url, client.control_url)


# --- logging ----------------------------------------------------------------------------


def _attempt_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "arker" and hasattr(r, "arker_method")]


def test_one_log_record_per_attempt(client: Arker, rsps, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="arker")
    url = f"{client.control_url}/api/v1/vms/list"
    rsps.get(url, status=503, body="")
    rsps.get(url, body=requests.ConnectionError("reset"))
    rsps.get(url, json=LIST_OK)
    client.vms.list(limit=5)
    records = _attempt_records(caplog)
    assert [r.arker_attempt for r in records] == [1, 2, 3]
    assert [r.arker_status for r in records] == [503, None, 200]
    for r in records:
        assert r.arker_method == "GET"
        assert r.arker_url.startswith(url)
        assert isinstance(r.arker_duration_ms, float) and r.arker_duration_ms >= 0


def test_presigned_url_signature_not_logged(client: Arker, rsps, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="arker")
    url = "http://uploads.arker.test/get/f?sig=TOPSECRETSIG"
    rsps.post(f"{client.base_url}/api/v1/vms/{VM}/sync", json={"ok": True, "presigned_url": url})
    rsps.get(url, body=b"x")
    client.sync.read(VM, "/home/user/f")
    assert len(_attempt_records(caplog)) == 2
    assert "TOPSECRETSIG" not in caplog.text
    assert all("TOPSECRETSIG" not in str(r.__dict__) for r in caplog.records)


def test_presigned_signature_hidden_from_errors_too(client: Arker, rsps, caplog) -> None:
    url = "http://uploads.arker.test/get/f?sig=TOPSECRETSIG"
    rsps.post(f"{client.base_url}/api/v1/vms/{VM}/sync", json={"ok": True, "presigned_url": url})
    rsps.get(url, body=requests.ConnectionError(f"reset while reading {url}"))
    with pytest.raises(APIConnectionError) as info:
        client.with_options(max_retries=0).sync.read(VM, "/home/user/f")
    assert "TOPSECRETSIG" not in str(info.value) and "/get/f" in str(info.value)


def test_api_query_parameters_are_shown_in_logs_and_errors_alike(make_client, rsps, caplog) -> None:
    caplog.set_level(logging.INFO, logger="arker")
    client = make_client(max_retries=0)
    url = f"{client.control_url}/api/v1/vms/list"
    rsps.get(url, body=requests.ConnectionError("refused"))
    with pytest.raises(APIConnectionError) as info:
        client.vms.list(q="needle")
    assert "q=needle" in str(info.value)
    assert all("q=needle" in r.arker_url for r in _attempt_records(caplog))


def _everything_said(caplog, errors) -> str:
    parts = [caplog.text]
    for r in caplog.records:
        parts.append(r.getMessage())
        parts.append(str(r.__dict__))
    for e in errors:
        parts += [str(e), repr(e), str(e.args), repr(pickle.loads(pickle.dumps(e)))]
    return "\n".join(parts)


def test_api_key_never_logged_nor_in_errors(make_client, rsps, caplog, api_key) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(max_retries=1)
    errors: list[BaseException] = []
    list_url = f"{client.control_url}/api/v1/vms/list"
    run_url = f"{client.base_url}/api/v1/vms/{VM}/run"
    scenarios = [
        (
            list_url,
            {
                "status": 401,
                "json": {"ok": False, "error": {"code": "unauthorized", "message": "bad key"}},
            },
        ),
        (list_url, {"status": 503, "body": "down"}),
        (list_url, {"body": requests.ConnectionError("connection reset by peer")}),
        (list_url, {"body": requests.ReadTimeout("slow")}),
        (list_url, {"status": 200, "body": "<html>"}),
        (run_url, {"status": 200, "json": {"ok": True}}),
    ]
    for url, kwargs in scenarios:
        method = "GET" if url == list_url else "POST"
        rsps.upsert(method, url, **kwargs)
        try:
            if url == list_url:
                client.vms.list()
            else:
                client.runs.create(VM, "echo hi")
        except ArkerError as exc:
            errors.append(exc)
    assert len(errors) == len(scenarios)
    assert any(isinstance(e, AuthenticationError) for e in errors)
    assert any(isinstance(e, APIConnectionError) for e in errors)
    assert any(isinstance(e, ResponseValidationError) for e in errors)
    assert len(_attempt_records(caplog)) >= len(scenarios)
    said = _everything_said(caplog, errors)
    assert api_key not in said
    assert api_key not in repr(client) and api_key not in repr(client._config)
    assert api_key not in repr(vars(client._transport))
    assert api_key not in repr(client.with_options(max_retries=0).__dict__)


def test_arker_log_env_attaches_one_handler(monkeypatch, make_client) -> None:
    log = logging.getLogger("arker")
    before = list(log.handlers)
    level = log.level
    monkeypatch.setenv("ARKER_LOG", "debug")
    try:
        make_client()
        make_client()
        added = [h for h in log.handlers if h not in before]
        assert len(added) == 1
        assert log.level == logging.DEBUG
    finally:
        for h in log.handlers[:]:
            if h not in before:
                log.removeHandler(h)
        log.setLevel(level)
