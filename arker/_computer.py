"""The 0.1.0 object API: `Computer` and its `Sync`, built on the resources."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Protocol

from ._models import ExposedPort, RunResult
from .resources import RunHandle, RunsResource, SyncResource, VmsResource

__all__ = ["Computer", "Sync"]

log = logging.getLogger("arker")


class ClientResources(Protocol):
    """What a `Computer` needs of its client: its three resources. An `Arker` has them;
    typing the handle by this alone keeps this module from importing the client."""

    @property
    def vms(self) -> VmsResource: ...

    @property
    def runs(self) -> RunsResource: ...

    @property
    def sync(self) -> SyncResource: ...


class Computer:
    """A handle on one VM. Creating one makes no request.

    As a context manager it deletes the VM on exit, so user code that raises never
    leaves an orphaned VM behind:

    ```python
    with client.vm("arkuntu").fork(name="scratch") as vm:
        vm.run("make test")
    ```

    Attributes:
        id: The VM id (or image name, for handles such as ``client.vm("arkuntu")``).
        sync: File transfer for this VM.
    """

    def __init__(self, client: ClientResources, vm_id: str) -> None:
        self._client = client
        self.id = vm_id
        self.sync = Sync(client.sync, vm_id)
        self._deleted = False

    def fork(
        self,
        *,
        name: str | None = None,
        is_public: bool = False,
        region: str | None = None,
        idempotency_key: str | None = None,
        ttl: int | None = None,
    ) -> Computer:
        """Branch off this VM in constant time (copy-on-write); returns the child.
        With ``ttl``, the server deletes the child that many seconds from now."""
        forked = self._client.vms.fork(
            self.id,
            name=name,
            is_public=is_public,
            region=region,
            idempotency_key=idempotency_key,
            ttl=ttl,
        )
        return Computer(self._client, forked.vm_id)

    def run(
        self,
        command: str,
        *,
        session_id: str | int | None = None,
        timeout: int | None = None,
        idempotency_key: str | None = None,
    ) -> RunResult:
        """Run a shell command; see `RunsResource.create`."""
        return self._client.runs.create(
            self.id,
            command,
            session_id=0 if session_id is None else session_id,
            timeout=timeout,
            idempotency_key=idempotency_key,
        )

    def start(
        self,
        command: str,
        *,
        session_id: str | int | None = None,
        timeout: int | None = None,
        idempotency_key: str | None = None,
    ) -> RunHandle:
        """Start a shell command and return at once, while it runs; see
        `RunsResource.start`."""
        return self._client.runs.start(
            self.id,
            command,
            session_id=session_id,
            timeout=timeout,
            idempotency_key=idempotency_key,
        )

    def expose(self, port: int) -> ExposedPort:
        """Make ``port`` inside this VM reachable at a secret URL; see `VmsResource.expose`."""
        return self._client.vms.expose(self.id, port)

    def unexpose(self, port: int) -> None:
        """Withdraw an exposed port; its URL stops working."""
        self._client.vms.unexpose(self.id, port)

    def delete(self) -> None:
        """Delete this VM. Its forks keep working."""
        self._client.vms.delete(self.id)
        self._deleted = True

    def __enter__(self) -> Computer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._deleted:
            return
        if exc is None:
            self.delete()
            return
        # The block already failed: report a failed clean-up, never mask the real error.
        try:
            self.delete()
        except Exception:
            log.warning("could not delete VM %s after an error", self.id, exc_info=True)

    def __repr__(self) -> str:
        return f"Computer(id={self.id!r})"


class Sync:
    """File I/O for one VM (the 0.1.0 names). Paths must be under ``/home/user/``."""

    def __init__(self, files: SyncResource, vm_id: str) -> None:
        self._files = files
        self._vm_id = vm_id

    def read_file(self, path: str) -> bytes:
        """The bytes of the file at ``path``."""
        return self._files.read(self._vm_id, path)

    def write_file(self, path: str, data: bytes | str) -> None:
        """Write ``data`` to ``path`` atomically; returns once it is durably stored."""
        self._files.write(self._vm_id, path, data)
