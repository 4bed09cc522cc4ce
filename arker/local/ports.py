"""Exposed ports: their records (table ``exposed_ports``) and their secret URLs.

An exposed port is reached at ``/exposed/{vm_id}/{port}/{token}/…`` on the server's
own address (`port_proxy` relays it). Like a presigned URL, the token is an HMAC
(of the server's signing secret, `presign.load_or_create_secret`) over the VM, the
port and a random nonce drawn at each exposure, so the database alone does not hold
the URLs, an unexposed then re-exposed port gets a new URL, and a token altered in
any way matches nothing. Every refusal is the same ``404``: a caller without the
token learns nothing of which VMs or ports exist.

A row lives until the port is unexposed or its VM deleted (`forget_vm`); a token is
honoured only while its VM exists, so a crash between the two still kills the URL.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from .._wire_ports import ExposedPortWire, ListPortsResponse
from .errors import ApiError
from .store import Store, utc_now_iso
from .vms import Vms

__all__ = ["PROXY_PREFIX", "ExposedPorts", "PortRow", "PortStore", "Target"]

PROXY_PREFIX = "/exposed/"
"""Where exposed ports are served: ``/exposed/{vm_id}/{port}/{token}/{path}``."""

MAX_PORTS_PER_VM = 32
"""Most ports one VM may have exposed at once (429 beyond)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS exposed_ports (
    vm_id TEXT NOT NULL,
    port INTEGER NOT NULL,
    org_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (vm_id, port)
)
"""


@dataclass(frozen=True)
class PortRow:
    """One exposed port's record."""

    vm_id: str
    port: int
    org_id: str
    nonce: str
    created_at: str


@dataclass(frozen=True)
class Target:
    """Where a proxied request goes: a port of a VM, and the path to ask it for."""

    vm_id: str
    port: int
    path: str
    """The rest of the URL's path after the token, with its leading ``/``, and the
    query (``?…``) if any: the request target the VM's server sees."""


class PortStore:
    """The ``exposed_ports`` table, through a connection of its own (same database).

    Args:
        path: The SQLite database file (the `Store`'s).
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        with self._lock:
            self._db.execute(_SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def add(self, row: PortRow, limit: int) -> PortRow:
        """Record ``row``; the existing record when the port is already exposed.

        Raises:
            ApiError: 429 when the VM already has ``limit`` exposed ports.
        """
        with self._tx() as db:
            found = db.execute(
                "SELECT vm_id, port, org_id, nonce, created_at FROM exposed_ports"
                " WHERE vm_id = ? AND port = ?",
                (row.vm_id, row.port),
            ).fetchone()
            if found:
                return PortRow(*found)
            (count,) = db.execute(
                "SELECT COUNT(*) FROM exposed_ports WHERE vm_id = ?", (row.vm_id,)
            ).fetchone()
            if count >= limit:
                raise ApiError("rate_limited", f"a VM may expose at most {limit} ports")
            db.execute(
                "INSERT INTO exposed_ports VALUES (?, ?, ?, ?, ?)",
                (row.vm_id, row.port, row.org_id, row.nonce, row.created_at),
            )
        return row

    def get(self, vm_id: str, port: int) -> PortRow | None:
        """The record of one exposed port, or None."""
        with self._lock:
            found = self._db.execute(
                "SELECT vm_id, port, org_id, nonce, created_at FROM exposed_ports"
                " WHERE vm_id = ? AND port = ?",
                (vm_id, port),
            ).fetchone()
        return PortRow(*found) if found else None

    def list(self, vm_id: str) -> list[PortRow]:
        """A VM's exposed ports, by port number."""
        with self._lock:
            rows = self._db.execute(
                "SELECT vm_id, port, org_id, nonce, created_at FROM exposed_ports"
                " WHERE vm_id = ? ORDER BY port",
                (vm_id,),
            ).fetchall()
        return [PortRow(*r) for r in rows]

    def remove(self, vm_id: str, port: int | None = None) -> None:
        """Forget one exposed port of a VM, or (``port=None``) all of them."""
        with self._tx() as db:
            if port is None:
                db.execute("DELETE FROM exposed_ports WHERE vm_id = ?", (vm_id,))
            else:
                db.execute("DELETE FROM exposed_ports WHERE vm_id = ? AND port = ?", (vm_id, port))

    def prune(self, vm_ids: Iterable[str]) -> None:
        """Forget the exposed ports of every VM not in ``vm_ids`` (deleted VMs)."""
        keep = set(vm_ids)
        with self._tx() as db:
            gone = {v for (v,) in db.execute("SELECT DISTINCT vm_id FROM exposed_ports")} - keep
            db.executemany("DELETE FROM exposed_ports WHERE vm_id = ?", [(v,) for v in gone])


def port_token(secret: bytes, vm_id: str, port: int, nonce: str) -> str:
    """The URL token of one exposure; the exact message is part of the format."""
    message = f"EXPOSE\n{vm_id}\n{port}\n{nonce}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _not_found() -> ApiError:
    return ApiError("not_found", "no exposed port at this URL")


class ExposedPorts:
    """Expose, list, unexpose (on behalf of one org) and resolve proxied URLs.

    Blocking (SQLite): routes call it from the thread pool.

    Args:
        records: The ``exposed_ports`` table.
        store: VM rows (a token is honoured only while its VM exists).
        vms: The tenancy rule (`Vms.owned`).
        secret: The server's signing secret.
    """

    def __init__(self, records: PortStore, store: Store, vms: Vms, secret: bytes) -> None:
        self.records = records
        self._store = store
        self._vms = vms
        self._secret = secret

    def url(self, base_url: str, row: PortRow) -> str:
        """The secret URL of one exposed port."""
        token = port_token(self._secret, row.vm_id, row.port, row.nonce)
        vm = quote(row.vm_id, safe="")
        return f"{base_url.rstrip('/')}{PROXY_PREFIX}{vm}/{row.port}/{token}/"

    def _wire(self, base_url: str, row: PortRow) -> ExposedPortWire:
        return ExposedPortWire(
            port=row.port,
            url=self.url(base_url, row),
            created_at=datetime.fromisoformat(row.created_at),
        )

    def expose(self, org_id: str, vm_id: str, port: int, base_url: str) -> ExposedPortWire:
        """Expose ``port`` of a VM the org owns (again: the same URL)."""
        vm = self._vms.owned(org_id, vm_id)
        row = PortRow(vm.id, port, org_id, secrets.token_hex(16), utc_now_iso())
        return self._wire(base_url, self.records.add(row, MAX_PORTS_PER_VM))

    def list(self, org_id: str, vm_id: str, base_url: str) -> ListPortsResponse:
        """The exposed ports of a VM the org owns."""
        vm = self._vms.owned(org_id, vm_id)
        return ListPortsResponse(ports=[self._wire(base_url, r) for r in self.records.list(vm.id)])

    def unexpose(self, org_id: str, vm_id: str, port: int) -> None:
        """Withdraw an exposed port (nothing to do when it is not exposed)."""
        vm = self._vms.owned(org_id, vm_id)
        self.records.remove(vm.id, port)

    def resolve(self, rest: str) -> Target:
        """Check the part of a proxied URL after `PROXY_PREFIX`: the port it opens.

        Args:
            rest: ``{vm_id}/{port}/{token}[/{path}][?query]`` as received (raw).

        Raises:
            ApiError: 404 ``not_found`` for any URL that is not a live exposure's.
        """
        path, sep, query = rest.partition("?")
        parts = path.split("/", 3)
        if len(parts) < 3:
            raise _not_found()
        vm_id, port_text, token = parts[0], parts[1], parts[2]
        if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
            raise _not_found()
        row = self.records.get(vm_id, int(port_text))
        expected = port_token(self._secret, vm_id, int(port_text), row.nonce if row else "")
        if not hmac.compare_digest(expected, token) or row is None:
            raise _not_found()
        if self._store.get_vm(vm_id) is None:
            raise _not_found()
        upstream = "/" + (parts[3] if len(parts) == 4 else "")
        return Target(vm_id, row.port, upstream + (sep + query if sep else ""))
