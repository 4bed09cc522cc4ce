"""(ext) ``Range`` on presigned reads, raw HTTP against a real `arker serve`.

``bytes=N-`` and ``bytes=N-M`` answer ``206`` with the matching ``Content-Range``; a
range starting at or past the end answers ``416`` with ``Content-Range: bytes */size``;
a header the server does not take (malformed, several ranges) is ignored: ``200`` and
the whole file. ``If-Range`` with the answer's ``ETag`` resumes only that version.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import pytest

from arker.local.byte_ranges import ByteSpan, requested_span
from arker.local.errors import ApiError
from arker.local.presign import READ_ROUTE, signature
from arker.testing import ArkerServer
from tests.kit.raw_http import RawResponse, raw, raw_error
from tests.kit.server import Api

pytestmark = pytest.mark.usefixtures("no_unhandled_errors")

BIG = 5_000_000  # over the inline limit: the read answer is a presigned URL


def _target(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _signed_target(server: ArkerServer, vm: str, path: str) -> str:
    """A presigned GET for any file, small ones included (signed with the server's secret)."""
    secret = (Path(server.data_dir) / "presign.key").read_bytes()
    expires = int(time.time()) + 600
    query = urlencode(
        {"path": path, "expires": expires, "signature": signature(secret, "GET", vm, path, expires)}
    )
    return f"{READ_ROUTE.format(vm_id=quote(vm, safe=''))}?{query}"


@pytest.fixture
def big(api: Api, vm: str) -> tuple[str, bytes]:
    """(presigned GET target, whole content) of a 5 MB file of random bytes."""
    path = "/home/user/big.bin"
    api.run(vm, f"head -c {BIG} /dev/urandom > {path}")
    answer = api.sync(vm, {"op": "read", "path": path}).json()
    target = _target(answer["presigned_url"])
    return target, _get(api.server, target)[2]


def _get(server: ArkerServer, target: str, range_: str | None = None) -> RawResponse:
    return raw(server, "GET", target, {"Range": range_} if range_ is not None else {})


def test_full_read_announces_byte_ranges(api: Api, big: tuple[str, bytes]) -> None:
    target, _ = big
    status, headers, body = _get(api.server, target)
    assert status == 200 and len(body) == BIG == int(headers["content-length"])
    assert headers["accept-ranges"] == "bytes" and "content-range" not in headers


def test_open_ended_range_sends_the_rest_with_206(api: Api, big: tuple[str, bytes]) -> None:
    target, data = big
    for start in (0, 1, 1_234_567, BIG - 1):
        status, headers, body = _get(api.server, target, f"bytes={start}-")
        assert status == 206, (start, status)
        assert headers["content-range"] == f"bytes {start}-{BIG - 1}/{BIG}"
        assert int(headers["content-length"]) == BIG - start
        assert body == data[start:]
    # A resumed download: prefix from a cut read, rest from the range, one whole file.
    prefix = data[:3_000_001]
    rest = _get(api.server, target, f"bytes={len(prefix)}-")[2]
    assert hashlib.sha256(prefix + rest).digest() == hashlib.sha256(data).digest()


def test_closed_and_suffix_ranges_send_those_bytes(api: Api, big: tuple[str, bytes]) -> None:
    target, data = big
    cases = {
        "bytes=10-19": (10, 19),
        "bytes=0-0": (0, 0),
        f"bytes=4999990-{BIG * 2}": (4_999_990, BIG - 1),  # last clipped to the end
        "bytes=-100": (BIG - 100, BIG - 1),
        f"bytes=-{BIG * 3}": (0, BIG - 1),
        "BYTES = 7 - 8": (7, 8),
    }
    for header, (first, last) in cases.items():
        status, headers, body = _get(api.server, target, header)
        assert status == 206, header
        assert headers["content-range"] == f"bytes {first}-{last}/{BIG}", header
        assert body == data[first : last + 1], header


def test_range_past_the_end_is_416_with_the_size(api: Api, big: tuple[str, bytes]) -> None:
    target, _ = big
    for header in (f"bytes={BIG}-", f"bytes={BIG + 5}-", f"bytes={BIG}-{BIG + 9}", "bytes=-0"):
        answer = _get(api.server, target, header)
        assert raw_error(answer) == (416, "bad_request"), header
        assert answer[1]["content-range"] == f"bytes */{BIG}", header


def test_malformed_or_multiple_ranges_are_ignored(api: Api, big: tuple[str, bytes]) -> None:
    target, data = big
    for header in (
        "",
        "bytes",
        "bytes=",
        "bytes=-",
        "bytes=abc-",
        "bytes=5-2",  # last before first
        "bytes=0-1,5-9",  # several ranges: the server may ignore them
        "items=0-9",
        "bytes=1.5-",
        "bytes=0x10-",
    ):
        status, headers, body = _get(api.server, target, header)
        assert status == 200, header
        assert "content-range" not in headers and body == data, header


def test_ranges_of_small_and_empty_files(api: Api, vm: str, arker_server: ArkerServer) -> None:
    api.run(vm, "printf 0123456789 > /home/user/ten; : > /home/user/empty")
    ten = _signed_target(arker_server, vm, "/home/user/ten")
    status, headers, body = _get(arker_server, ten, "bytes=7-")
    assert (status, headers["content-range"], body) == (206, "bytes 7-9/10", b"789")
    answer = _get(arker_server, ten, "bytes=10-")
    assert raw_error(answer) == (416, "bad_request") and answer[1]["content-range"] == "bytes */10"
    empty = _signed_target(arker_server, vm, "/home/user/empty")
    answer = _get(arker_server, empty, "bytes=0-")
    assert raw_error(answer) == (416, "bad_request") and answer[1]["content-range"] == "bytes */0"
    assert _get(arker_server, empty)[0::2] == (200, b"")


def test_if_range_resumes_only_the_same_version(api: Api, vm: str) -> None:
    path = "/home/user/changing.bin"
    api.run(vm, f"head -c {BIG} /dev/urandom > {path}")
    target = _target(api.sync(vm, {"op": "read", "path": path}).json()["presigned_url"])
    status, headers, first = _get(api.server, target)
    etag = headers["etag"]
    assert status == 200 and etag.startswith('"') and _get(api.server, target)[1]["etag"] == etag
    resumed = raw(api.server, "GET", target, {"Range": "bytes=100-", "If-Range": etag})
    assert resumed[0] == 206 and resumed[1]["etag"] == etag and resumed[2] == first[100:]
    for validator in ("Tue, 01 Dec 2026 00:00:00 GMT", f"W/{etag}", '"other"'):
        whole = raw(api.server, "GET", target, {"Range": "bytes=100-", "If-Range": validator})
        assert whole[0] == 200 and whole[2] == first, validator
    # Another version of the file: a resume against the old tag gets the whole new file.
    api.run(vm, f"head -c {BIG} /dev/urandom > {path}.new && mv {path}.new {path}")
    status, headers, body = raw(
        api.server, "GET", target, {"Range": "bytes=100-", "If-Range": etag}
    )
    assert status == 200 and headers["etag"] != etag
    assert len(body) == BIG and body != first


# -- the parser on its own --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "span"),
    [
        (None, 10, None),
        ("bytes=0-", 10, ByteSpan(0, 9, 10)),
        ("bytes=9-", 10, ByteSpan(9, 9, 10)),
        ("bytes=2-4", 10, ByteSpan(2, 4, 10)),
        ("bytes=2-400", 10, ByteSpan(2, 9, 10)),
        ("bytes=-3", 10, ByteSpan(7, 9, 10)),
        ("bytes=-30", 10, ByteSpan(0, 9, 10)),
        (" bytes = 1 - 2 ", 10, ByteSpan(1, 2, 10)),
        ("bytes=1-2, 4-5", 10, None),
        ("bytes=4-2", 10, None),
        ("bytes=-", 10, None),
        ("bits=1-2", 10, None),
        ("bytes=+1-", 10, None),
        ("bytes=١-", 10, None),  # a non-ASCII digit is no digit here
    ],
)
def test_requested_span(header: str | None, size: int, span: ByteSpan | None) -> None:
    assert requested_span(header, size) == span


@pytest.mark.parametrize(
    ("if_range", "span"),
    [(None, ByteSpan(2, 9, 10)), ('"v1"', ByteSpan(2, 9, 10)), (' "v1" ', ByteSpan(2, 9, 10))]
    + [(other, None) for other in ('"v2"', 'W/"v1"', "Tue, 01 Dec 2026 00:00:00 GMT", "")],
)
def test_if_range_must_name_the_current_tag(if_range: str | None, span: ByteSpan | None) -> None:
    assert requested_span("bytes=2-", 10, if_range=if_range, etag='"v1"') == span
    if span is None:  # the whole file is sent: not even a range past the end is refused
        assert requested_span("bytes=99-", 10, if_range=if_range, etag='"v1"') is None


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0)])
def test_unsatisfiable_span_is_416(header: str, size: int) -> None:
    with pytest.raises(ApiError) as info:
        requested_span(header, size)
    assert info.value.status == 416
    assert info.value.headers == {"Content-Range": f"bytes */{size}"}
