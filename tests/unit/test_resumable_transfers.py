"""Presigned transfers resume while they make progress (a real loopback store).

The store answers the sync route and a presigned URL, and cuts its connections on
purpose: an upload is reset after ``cut_every`` bytes of a PUT body (``HEAD`` then says
how much it holds), a download's body is cut after ``cut_every`` bytes. Uploads resume
from the server's offset and downloads with ``Range: bytes=N-``; an attempt that moved
the transfer forward spends none of the retry budget, so a transfer cut more often than
``max_retries`` still completes, with little more than its size on the wire.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from arker import APIConnectionError, ResponseValidationError, RetryPolicy
from arker._presigned import body_start
from arker._retry import transfer_gives_up

VM = "01HZZZZZZZZZZZZZZZZZZZZZZZ_abc1"
MiB = 1024 * 1024


class Store:
    """The sync route plus one presigned upload and one presigned download."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.file = b""  # what a read serves
        self.upload = bytearray()  # what the presigned upload holds
        self.committed: bytes | None = None
        self.cut_every = MiB
        self.cut_sizes: list[int] = []  # bytes let through by each next cut (else cut_every)
        self.cuts_left = 0  # how many more transfers to cut
        self.range_mode = "honour"  # "honour", "ignore" (answer 200) or "wrong" (bad 206)
        self.cut_headers = False  # cut a download's headers (close-delimited body)
        self.announce_sha: str | None = None
        self.put_offsets: list[str | None] = []  # each PUT's Content-Range
        self.ranges: list[str | None] = []  # each GET's Range
        self.bytes_in = 0  # PUT body bytes received
        self.bytes_out = 0  # GET body bytes sent
        self.head_progress = True  # HEAD reports what the upload holds
        self.head_resets = 0  # how many more HEADs to reset unanswered
        self.etags = False  # presigned reads carry a strong ETag and honour If-Range
        self.honour_if_range = True
        self.if_ranges: list[str | None] = []  # each GET's If-Range
        self.next_file: bytes | None = None  # what the file becomes after the first cut
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True
            timeout = 10

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                owner.sync(self)

            def do_PUT(self) -> None:
                owner.put(self)

            def do_HEAD(self) -> None:
                with owner.lock:
                    reset, owner.head_resets = owner.head_resets > 0, owner.head_resets - 1
                if reset:
                    owner._reset(self)
                    return
                held = len(owner.upload) if owner.head_progress else 0
                self.send_response(200)
                self.send_header("Upload-Offset", str(held))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                owner.get(self)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _take_cut(self) -> int | None:
        """Bytes of body to let through before cutting this transfer, or None: no cut."""
        with self.lock:
            if self.cuts_left > 0:
                self.cuts_left -= 1
                return self.cut_sizes.pop(0) if self.cut_sizes else self.cut_every
            return None

    @staticmethod
    def _json(handler: BaseHTTPRequestHandler, obj: Any) -> None:
        body = json.dumps(obj).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    @staticmethod
    def _reset(handler: BaseHTTPRequestHandler) -> None:
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.close_connection = True
        handler.connection.close()

    def sync(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        if body["op"] == "read":
            answer = {"ok": True, "presigned_url": f"{self.url}/get", "size": len(self.file)}
            if self.announce_sha != "":  # "" announces none (a file the server did not write)
                answer["sha256"] = self.announce_sha or hashlib.sha256(self.file).hexdigest()
            self._json(handler, answer)
            return
        (entry,) = body["writes"]
        if entry.get("presigned"):
            self.upload = bytearray()
            result = {"presigned_url": f"{self.url}/put", "upload_id": "U1"}
        else:
            assert hashlib.sha256(self.upload).hexdigest() == entry["sha256"]
            self.committed = bytes(self.upload)
            result = {"complete": True, "written": True}
        self._json(handler, {"ok": True, "results": [result]})

    def put(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers["Content-Length"])
        content_range = handler.headers.get("Content-Range")
        self.put_offsets.append(content_range)
        offset = 0
        if content_range:
            offset = int(re.match(r"bytes (\d+)-", content_range).group(1))  # type: ignore[union-attr]
        if offset != len(self.upload):
            del self.upload[offset:]  # what a store keeps: bytes up to the offset
        cut = self._take_cut()
        want = length if cut is None else min(length, cut)
        got = 0
        while got < want:
            block = handler.rfile.read(min(64 * 1024, want - got))
            if not block:
                break
            self.upload += block
            got += len(block)
        self.bytes_in += got
        if cut is not None:
            self._reset(handler)
            return
        handler.send_response(200)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def get(self, handler: BaseHTTPRequestHandler) -> None:
        asked = handler.headers.get("Range")
        self.ranges.append(asked)
        self.if_ranges.append(handler.headers.get("If-Range"))
        size = len(self.file)
        etag = f'"{hashlib.sha256(self.file).hexdigest()[:16]}"'
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", asked or "")
        if match and self.range_mode != "ignore":
            start = int(match.group(1))
        if_range = handler.headers.get("If-Range")
        if self.etags and self.honour_if_range and if_range is not None and if_range != etag:
            start = 0  # the file changed since: the whole new version
        cut = self._take_cut()
        if start:
            handler.send_response(206)
            shown = start + 1 if self.range_mode == "wrong" else start
            handler.send_header("Content-Range", f"bytes {shown}-{size - 1}/{size}")
        else:
            handler.send_response(200)
        if not (cut is not None and self.cut_headers):
            handler.send_header("Content-Length", str(size - start))
        if self.etags:
            handler.send_header("ETag", etag)
        handler.end_headers()
        body = self.file[start:]
        if cut is not None:
            body = body[:cut]
        handler.wfile.write(body)
        self.bytes_out += len(body)
        handler.wfile.flush()
        if cut is not None:
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_WR)
            if self.next_file is not None:
                self.file, self.next_file = self.next_file, None


@pytest.fixture
def store():
    s = Store()
    yield s
    s.close()


def _client(make_client, store: Store, **policy: Any):
    retry = RetryPolicy(**{"max_retries": 1, **policy})
    return make_client(base_url=store.url, control_url=store.url, retry_policy=retry)


DATA = bytes(range(256)) * (5 * MiB // 256) + b"tail"  # 5 MiB + 4


# --- uploads ----------------------------------------------------------------------------


def test_upload_cut_every_mib_resumes_to_the_end(make_client, store) -> None:
    store.cuts_left = 5  # far more cuts than the budget of one retry
    client = _client(make_client, store)
    client.sync.write(VM, "/home/user/big", DATA)
    assert store.committed == DATA
    assert store.put_offsets[0] is None
    offsets = [int(re.match(r"bytes (\d+)-", r).group(1)) for r in store.put_offsets[1:]]
    assert offsets == [MiB * n for n in range(1, 6)]
    assert store.bytes_in < 1.5 * len(DATA)


def test_progress_gives_the_budget_back_and_resumes_at_once(make_client, store, sleeps) -> None:
    # Cut after 1 MiB (progress), then before any byte (a stall), three times over:
    # three stalls against max_retries=1, each followed by progress that refills it.
    store.cuts_left = 6
    store.cut_sizes = [MiB, 0, MiB, 0, MiB, 0]
    client = _client(make_client, store, initial_backoff=0.25)
    client.sync.write(VM, "/home/user/big", DATA)
    assert store.committed == DATA
    assert len(store.put_offsets) == 7
    progress_waits, stall_waits = sleeps[0::2], sleeps[1::2]
    assert progress_waits == [0.0, 0.0, 0.0]  # moved forward: resume at once
    assert all(0.25 <= w <= 0.5 for w in stall_waits)  # stalled: the first backoff


def test_upload_asks_again_when_the_offset_question_is_cut(make_client, store) -> None:
    store.cuts_left = 1
    store.head_resets = 1  # the HEAD after the cut is reset too: asked again, not skipped
    client = _client(make_client, store)
    client.sync.write(VM, "/home/user/big", DATA)
    assert store.committed == DATA
    assert store.put_offsets == [None, f"bytes {MiB}-{len(DATA) - 1}/{len(DATA)}"]


def test_upload_without_progress_spends_the_budget(make_client, store) -> None:
    store.cuts_left = 5
    store.head_progress = False  # the server cannot say: every attempt starts over
    client = _client(make_client, store, max_retries=2)
    with pytest.raises(APIConnectionError):
        client.sync.write(VM, "/home/user/big", DATA)
    assert store.put_offsets == [None] * 3
    assert store.committed is None


def test_upload_progress_is_bounded_by_the_transfer_time(make_client, store) -> None:
    store.cuts_left = 5
    client = _client(make_client, store, max_transfer_time=0)
    with pytest.raises(APIConnectionError):
        client.sync.write(VM, "/home/user/big", DATA)
    assert len(store.put_offsets) == 1


# --- downloads --------------------------------------------------------------------------


@pytest.mark.parametrize("cut_headers", [False, True], ids=["cut-body", "cut-headers"])
def test_download_cut_every_mib_resumes_with_range(make_client, store, sleeps, cut_headers) -> None:
    store.file = DATA
    store.cuts_left = 5
    store.cut_headers = cut_headers
    client = _client(make_client, store)
    assert client.sync.read(VM, "/home/user/big") == DATA
    assert store.ranges == [None] + [f"bytes={MiB * n}-" for n in range(1, 6)]
    assert store.bytes_out < 1.5 * len(DATA)
    assert sleeps == [0.0] * 5


def test_download_keeps_every_byte_that_arrived_before_a_cut(make_client, store) -> None:
    # Cuts that fall inside a 1 MiB block: the part of the block that arrived is kept.
    store.file = DATA
    store.cuts_left = 2
    store.cut_sizes = [MiB + 12345, 700_000]
    client = _client(make_client, store)
    assert client.sync.read(VM, "/home/user/big") == DATA
    assert store.ranges == [None, f"bytes={MiB + 12345}-", f"bytes={MiB + 12345 + 700_000}-"]
    assert store.bytes_out == len(DATA)


def test_download_to_a_path_resumes_and_lands_whole(make_client, store, tmp_path: Path) -> None:
    store.file = DATA
    store.cuts_left = 3
    client = _client(make_client, store)
    dest = tmp_path / "big"
    assert client.sync.read_to(VM, "/home/user/big", dest) == len(DATA)
    assert dest.read_bytes() == DATA
    assert [p.name for p in tmp_path.iterdir()] == ["big"]


def test_download_from_a_server_ignoring_range_starts_over(make_client, store) -> None:
    store.file = DATA
    store.cuts_left = 2
    store.range_mode = "ignore"
    client = _client(make_client, store, max_retries=2)
    assert client.sync.read(VM, "/home/user/big") == DATA
    assert store.ranges == [None, f"bytes={MiB}-", f"bytes={MiB}-"]


def test_download_with_a_mismatched_content_range_starts_over(make_client, store) -> None:
    store.file = DATA
    store.cuts_left = 1
    store.range_mode = "wrong"
    client = _client(make_client, store, max_retries=2)
    assert client.sync.read(VM, "/home/user/big") == DATA
    assert store.ranges == [None, f"bytes={MiB}-", None]


def test_resumed_download_still_checks_the_whole_sha256(make_client, store, tmp_path) -> None:
    store.file = DATA
    store.cuts_left = 2
    store.announce_sha = hashlib.sha256(DATA[1:]).hexdigest()
    client = _client(make_client, store)
    with pytest.raises(ResponseValidationError, match="sha256"):
        client.sync.read_to(VM, "/home/user/big", tmp_path / "big")
    assert list(tmp_path.iterdir()) == []


NEW = bytes(reversed(DATA))  # the same size, other bytes


def test_download_resumes_only_the_version_it_holds(make_client, store) -> None:
    # The file is rewritten after the first cut, and no sha256 was announced (the server
    # did not write it): If-Range makes the server send the whole new version, never a
    # tail of it joined to the old prefix.
    store.file, store.next_file = DATA, NEW
    store.etags, store.announce_sha = True, ""
    store.cuts_left = 1
    client = _client(make_client, store)
    assert client.sync.read(VM, "/home/user/big") == NEW
    old_etag = f'"{hashlib.sha256(DATA).hexdigest()[:16]}"'
    assert store.ranges == [None, f"bytes={MiB}-"]
    assert store.if_ranges == [None, old_etag]


def test_download_never_joins_a_tail_of_another_version(make_client, store) -> None:
    # A server that ignores If-Range answers 206 with the new version's ETag: the SDK
    # starts over rather than keeping the old prefix.
    store.file, store.next_file = DATA, NEW
    store.etags, store.announce_sha, store.honour_if_range = True, "", False
    store.cuts_left = 1
    client = _client(make_client, store, max_retries=2)
    assert client.sync.read(VM, "/home/user/big") == NEW
    assert store.ranges == [None, f"bytes={MiB}-", None]


def test_download_without_progress_spends_the_budget(make_client, store) -> None:
    store.file = DATA
    store.cuts_left = 5
    store.range_mode = "ignore"
    client = _client(make_client, store, max_retries=1)
    with pytest.raises(APIConnectionError):
        client.sync.read(VM, "/home/user/big")
    # The first attempt moved from 0 to 1 MiB (free); each later one starts over and
    # stops at 1 MiB again: two stalled attempts spend max_retries=1.
    assert len(store.ranges) == 3


# --- the decisions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "content_range", "asked", "start"),
    [
        (200, None, 0, 0),  # a whole answer
        (200, None, 100, 0),  # Range ignored: the whole file again
        (200, "bytes 100-999/1000", 100, 0),  # a 200 is whole whatever it says
        (206, "bytes 100-999/1000", 100, 100),  # continues where we stopped
        (206, "bytes 101-999/1000", 100, None),  # starts elsewhere
        (206, "bytes 100-500/1000", 100, None),  # stops before the end
        (206, "bytes 100-999/*", 100, None),  # size unknown
        (206, "bytes */1000", 100, None),  # an unsatisfied-range form
        (206, None, 100, None),  # no Content-Range at all
        (206, "items 100-999/1000", 100, None),  # not bytes
        (206, "bytes 0-999/1000", 0, 0),
        (204, None, 100, 0),  # any other success: taken whole, as before resuming
    ],
)
def test_body_start(status, content_range, asked, start) -> None:
    assert body_start(status, content_range, asked) == start


@pytest.mark.parametrize(
    ("stalled", "elapsed", "gives_up"),
    [
        (0, 0.0, False),  # a failure after progress: free
        (1, 0.0, False),
        (3, 0.0, False),  # the budget: max_retries=3 stalls in a row are retried...
        (4, 0.0, True),  # ...and the fourth in a row ends it
        (0, 3599.0, False),
        (0, 3600.0, True),  # past the transfer's time bound, even while progressing
    ],
)
def test_transfer_gives_up(stalled, elapsed, gives_up) -> None:
    assert transfer_gives_up(stalled, elapsed, RetryPolicy()) is gives_up
