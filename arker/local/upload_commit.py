"""The commit of a finished upload: verify its bytes, rename them into place, record it.

The rename (`engine.commit_staged`) is atomic and durable; only then is the upload
marked committed in the store. A crash right between the two leaves the upload
uncommitted with nothing staged: a retried commit then answers ``not_found`` and the
client uploads again.
"""

from __future__ import annotations

import os

from .engine_api import EngineLike
from .engine_errors import engine_errors
from .errors import ApiError
from .store import Store, UploadRow
from .upload_digests import FileDigests, StagedDigests
from .upload_staging import prefix_sha256, staging_name


class Committer:
    """Moves finished uploads into place.

    Args:
        store: Upload records (ranges reset on a bad digest, the committed mark).
        engine: Holds the staged files and renames them.
        staged_digests: Digests of staged files already known (taken at the commit).
        file_digests: Where the digest of each committed file is remembered.
    """

    def __init__(
        self,
        store: Store,
        engine: EngineLike,
        staged_digests: StagedDigests,
        file_digests: FileDigests,
    ) -> None:
        self._store = store
        self._engine = engine
        self._staged_digests = staged_digests
        self._file_digests = file_digests

    def commit(self, upload: UploadRow, sha256: str | None, mode: int) -> None:
        """Place the whole upload at its path; the caller holds the upload's lock.

        Raises:
            ApiError: ``bad_request`` on a sha256 mismatch (the staged bytes are then
                discarded: the upload starts over), or the engine's error.
        """
        name = staging_name(upload.vm_id, upload.upload_id)
        with engine_errors():
            if upload.size == 0:
                with self._engine.staged_file(upload.vm_id, name) as staged:
                    staged.truncate(0)  # nothing was sent: stage the empty file now
            if sha256 is not None:
                known = self._staged_digests.take(upload.vm_id, upload.upload_id)
                actual = known or self._staged_sha256(upload, name)
                if actual != sha256.lower():
                    # The bytes are wrong somewhere: start over rather than keep bad data.
                    self._store.set_upload_ranges(upload.vm_id, upload.upload_id, [])
                    self._engine.discard_staged(upload.vm_id, name)
                    raise ApiError(
                        "bad_request", f"sha256 mismatch: expected {sha256}, received {actual}"
                    )
            self._engine.commit_staged(upload.vm_id, name, upload.path, upload.size, mode)
        if sha256 is not None:
            self._remember_digest(upload.vm_id, upload.path, sha256.lower())
        self._store.mark_committed(upload.vm_id, upload.upload_id)

    def _staged_sha256(self, upload: UploadRow, name: str) -> str:
        with self._engine.staged_file(upload.vm_id, name) as staged:
            return prefix_sha256(staged, upload.size).hexdigest()

    def _remember_digest(self, vm_id: str, path: str, digest: str) -> None:
        try:
            src, _ = self._engine.open_read(vm_id, path)
        except Exception:  # a best-effort cache: never fail a committed write over it
            return
        with src:
            st = os.fstat(src.fileno())
        self._file_digests.remember(vm_id, path, st, digest)
