"""The one errno table: every filesystem failure of a VM file operation has its wire code."""

from __future__ import annotations

import errno

import pytest

from arker._error_codes import STATUS_BY_CODE
from arker.local.fs_errors import ERRNO_CODES, code_for_errno, fs_error

EXPECTED = [
    (errno.ENAMETOOLONG, "bad_request", 400),
    (errno.ELOOP, "bad_request", 400),
    (errno.ENOTDIR, "conflict", 409),
    (errno.EISDIR, "conflict", 409),
    (errno.ENOTEMPTY, "conflict", 409),
    (errno.EACCES, "forbidden", 403),
    (errno.EPERM, "forbidden", 403),
    (errno.EROFS, "forbidden", 403),
    (errno.ENOENT, "not_found", 404),
    (errno.ENOSPC, "payload_too_large", 413),
    (errno.EDQUOT, "payload_too_large", 413),
    (errno.EMFILE, "unavailable", 503),
    (errno.EIO, "internal", 500),
    (None, "internal", 500),
]


@pytest.mark.parametrize(("err", "code", "status"), EXPECTED)
def test_each_errno_has_its_documented_code(err: int | None, code: str, status: int) -> None:
    assert code_for_errno(err) == code
    assert STATUS_BY_CODE[code] == status


def test_every_code_of_the_table_is_a_wire_code() -> None:
    assert set(ERRNO_CODES.values()) <= set(STATUS_BY_CODE)


def test_the_message_names_the_vm_path_never_the_host_path() -> None:
    exc = OSError(errno.ENAMETOOLONG, "File name too long", "/var/lib/arker/engine/x/merged")
    err = fs_error(exc, "cannot write /home/user/a")
    assert err.code == "bad_request"
    assert err.message == "cannot write /home/user/a: File name too long"
    assert "/var/lib" not in err.message
