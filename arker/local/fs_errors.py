"""Filesystem errors as wire codes: the one errno table for every file operation on a VM.

A file operation on a VM's tree fails for reasons the caller controls (a name too
long, a file where a directory should be, a read-only directory, a full disk) and a
few the server does (out of descriptors). Each errno maps to the code the wire
documents, so user input never yields ``500 internal``; an errno missing from the
table is a server fault (``internal``). Messages name the VM path and the kernel's
reason, never a host path.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping

from .engine_api import SandboxError

ERRNO_CODES: Mapping[int, str] = {
    errno.ENOENT: "not_found",
    # The request is malformed for this filesystem.
    errno.ENAMETOOLONG: "bad_request",
    errno.ELOOP: "bad_request",
    errno.EXDEV: "bad_request",
    errno.EINVAL: "bad_request",
    errno.EILSEQ: "bad_request",
    # Something in the VM's tree is in the way: a file where a directory must be, a
    # directory where a file must be, an existing or non-empty entry.
    errno.ENOTDIR: "conflict",
    errno.EISDIR: "conflict",
    errno.EEXIST: "conflict",
    errno.ENOTEMPTY: "conflict",
    errno.EBUSY: "conflict",
    errno.ETXTBSY: "conflict",
    # The VM user may not do this there.
    errno.EACCES: "forbidden",
    errno.EPERM: "forbidden",
    errno.EROFS: "forbidden",
    # The VM's disk budget or the server's disk.
    errno.ENOSPC: "payload_too_large",
    errno.EDQUOT: "payload_too_large",
    errno.EFBIG: "payload_too_large",
    # The server is short of a resource for now: a retry may succeed.
    errno.EMFILE: "unavailable",
    errno.ENFILE: "unavailable",
    errno.ENOMEM: "unavailable",
    errno.EAGAIN: "unavailable",
}
"""errno -> wire code; anything else is ``internal``."""


def code_for_errno(err: int | None) -> str:
    """The wire code of a failed filesystem call's errno."""
    return ERRNO_CODES.get(err or 0, "internal")


def fs_error(exc: OSError, what: str) -> SandboxError:
    """The `SandboxError` for ``exc``, raised while doing ``what`` (``"cannot write
    /home/user/a"``: a VM path at most).

    The message is ``"<what>: <reason>"`` with the kernel's reason text only:
    ``str(exc)`` could carry a host path.
    """
    reason = exc.strerror or "error"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "no space left for this VM"
    return SandboxError(code_for_errno(exc.errno), f"{what}: {reason}")
