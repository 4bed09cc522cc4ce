"""``client.sessions``: shells of their own in a VM (working directory, environment)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from urllib.parse import quote

from .._exceptions import refused_before_sending
from .._ids import new_ulid
from .._models import Session
from .._wire_live import CreateSessionRequest, DeleteSessionResponse, ListSessionsResponse
from .._wire_live import Session as SessionWire
from ._cursor_pages import iterate_pages
from ._resource import Resource, build_request, vm_path

__all__ = ["SessionsResource"]


def _session_path(vm_id: str, session_id: str) -> str:
    if not session_id or not isinstance(session_id, str):
        raise refused_before_sending(f"session_id must be a non-empty string: {session_id!r}")
    return vm_path(vm_id, f"/sessions/{quote(session_id, safe='')}")


class SessionsResource(Resource):
    """Sessions are terminal tabs: each keeps its own working directory and
    environment and runs one command at a time; distinct sessions run concurrently.

    Runs need no session made beforehand: a ``session_id`` a run names that does not
    exist yet starts a fresh session. Create one here to choose its starting
    directory and environment.
    """

    def create(
        self, vm_id: str, *, cwd: str | None = None, env: Mapping[str, str] | None = None
    ) -> Session:
        """A new session; its ``session_id`` is the server's choice.

        Args:
            vm_id: The VM.
            cwd: The directory its shell starts in (default: the user's home).
            env: Environment variables set in it.
        """
        body = build_request(CreateSessionRequest, cwd=cwd, env=None if env is None else dict(env))
        wire = self._client.call(
            "POST",
            vm_path(vm_id, "/sessions"),
            SessionWire,
            body=body,
            # Retried creates then make one session, on servers that honour the key.
            idempotency_key=new_ulid(),
        )
        return Session.from_wire(wire)

    def get(self, vm_id: str, session_id: str) -> Session:
        """One session, with its current state and working directory."""
        wire = self._client.call("GET", _session_path(vm_id, session_id), SessionWire)
        return Session.from_wire(wire)

    def list(self, vm_id: str) -> Iterator[Session]:
        """Every session of a VM; pages are fetched as the iteration reaches them."""
        path = vm_path(vm_id, "/sessions")

        def fetch(cursor: str | None) -> tuple[list[Session], str | None]:
            params = {} if cursor is None else {"cursor": cursor}
            page = self._client.call("GET", path, ListSessionsResponse, params=params)
            return [Session.from_wire(s) for s in page.sessions], page.next_cursor

        return iterate_pages(fetch)

    def delete(self, vm_id: str, session_id: str) -> bool:
        """Delete a session (ending what runs in it). ``True`` once it is gone; a retry
        that finds it gone after a lost answer counts as deleted."""
        answer = self._client.call(
            "DELETE",
            _session_path(vm_id, session_id),
            DeleteSessionResponse,
            absent_after_retry=DeleteSessionResponse(deleted=True),
        )
        return answer.deleted
