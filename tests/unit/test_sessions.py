"""``client.sessions`` on the wire: create, get, list (cursor pages), delete."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from arker import BadRequestError, NotFoundError, Session
from tests.unit.live_fakes import VM

SESSION = {"session_id": "sess_1", "state": "idle", "cwd": "/srv", "env": {"A": "1"}}


def _url(client, suffix: str = "") -> str:
    return f"{client.base_url}/api/v1/vms/{VM}/sessions{suffix}"


def test_create_posts_cwd_and_env(client, rsps) -> None:
    rsps.post(_url(client), json=SESSION)
    session = client.sessions.create(VM, cwd="/srv", env={"A": "1"})
    assert isinstance(session, Session)
    assert (session.session_id, session.cwd, session.env) == ("sess_1", "/srv", {"A": "1"})
    (call,) = rsps.calls
    assert json.loads(call.request.body) == {"cwd": "/srv", "env": {"A": "1"}}
    assert call.request.headers["Idempotency-Key"]


def test_create_with_nothing_sends_an_empty_object(client, rsps) -> None:
    rsps.post(_url(client), json={"session_id": "s2", "state": "idle", "cwd": ""})
    assert client.sessions.create(VM).session_id == "s2"
    assert json.loads(rsps.calls[0].request.body) == {}


def test_create_retries_with_the_same_key(client, rsps) -> None:
    rsps.post(_url(client), body=requests.ConnectionError("reset"))
    rsps.post(_url(client), json=SESSION)
    client.sessions.create(VM)
    assert len({c.request.headers["Idempotency-Key"] for c in rsps.calls}) == 1


def test_create_refuses_env_values_that_are_not_strings(client, rsps) -> None:
    with pytest.raises(BadRequestError):
        client.sessions.create(VM, env={"A": 1})  # type: ignore[dict-item]
    assert not rsps.calls


def test_get_reads_one_session(client, rsps) -> None:
    rsps.get(_url(client, "/sess_1"), json={**SESSION, "state": "running"})
    assert client.sessions.get(VM, "sess_1").state == "running"


def test_list_iterates_every_page(client, rsps) -> None:
    rsps.get(_url(client), json={"sessions": [SESSION], "next_cursor": "n"})
    rsps.get(_url(client), json={"sessions": [{**SESSION, "session_id": "b"}]})
    assert [s.session_id for s in client.sessions.list(VM)] == ["sess_1", "b"]
    assert parse_qs(urlsplit(rsps.calls[1].request.url).query) == {"cursor": ["n"]}


def test_delete_removes_the_session(client, rsps) -> None:
    rsps.delete(_url(client, "/sess_1"), json={"deleted": True})
    assert client.sessions.delete(VM, "sess_1") is True
    assert [c.request.method for c in rsps.calls] == ["DELETE"]


def test_delete_after_a_lost_answer_counts_a_404_as_deleted(client, rsps) -> None:
    rsps.delete(_url(client, "/gone"), body=requests.ConnectionError("reset"))
    rsps.delete(
        _url(client, "/gone"),
        status=404,
        json={"ok": False, "error": {"code": "not_found", "message": "no session"}},
    )
    assert client.sessions.delete(VM, "gone") is True


def test_delete_of_an_unknown_session_is_not_found(client, rsps) -> None:
    rsps.delete(
        _url(client, "/nope"),
        status=404,
        json={"ok": False, "error": {"code": "not_found", "message": "no session"}},
    )
    with pytest.raises(NotFoundError):
        client.sessions.delete(VM, "nope")
