"""Start a throwaway `arker serve` for a benchmark (root + bubblewrap required)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from arker import Arker
from arker.testing import ArkerServer


@contextmanager
def local_server(
    data_root: str | None = None, extra_args: tuple[str, ...] = ()
) -> Iterator[tuple[ArkerServer, Arker]]:
    """A fresh server on a temporary data dir, and a client for it; both closed after."""
    with tempfile.TemporaryDirectory(prefix="arker-bench-", dir=data_root) as tmp:
        server = ArkerServer(Path(tmp) / "data", extra_args=extra_args)
        server.start()
        client = Arker(server.api_key, base_url=server.base_url, control_url=server.control_url)
        try:
            yield server, client
        finally:
            client.close()
            server.stop()
