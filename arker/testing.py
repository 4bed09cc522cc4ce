"""Pytest plugin (entry point ``arker``): a real `arker serve` for tests.

Fixtures:

* ``arker_server`` (session): starts ``python -m arker serve --port 0 --data-dir <tmp>``
  on 127.0.0.1, reads the printed ``export`` lines, waits for ``GET /api/v1/health``
  and yields an `ArkerServer` (``base_url``, ``control_url``, ``api_key``,
  ``data_dir``, ``restart()``…). Skips with the server's own reason when the sandbox
  cannot start here (not root, no bubblewrap…).
* ``arker_client`` (function): an ``arker.Arker`` pointed at that server, closed after.

This module is imported by every pytest run once ``arker`` is installed, so it imports
nothing heavy at module level.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .local.config import EXIT_SANDBOX_UNAVAILABLE

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
_ARKER_ROOT = Path(__file__).resolve().parent.parent


class ServerStartError(RuntimeError):
    """The server process exited or never became healthy."""

    def __init__(self, message: str, *, sandbox_unavailable: bool = False) -> None:
        super().__init__(message)
        self.sandbox_unavailable = sandbox_unavailable


class ArkerServer:
    """A running ``arker serve`` subprocess on loopback.

    Args:
        data_dir: State directory (kept across restarts).
        port: TCP port; 0 picks a free one on first start, then it is kept.
        extra_args: More ``arker serve`` options.
    """

    def __init__(self, data_dir: Path, port: int = 0, extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.extra_args = extra_args
        self.base_url = ""
        self.control_url = ""
        self.api_key = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._generation = 0

    @property
    def pid(self) -> int:
        """Process id of the running server."""
        assert self.proc is not None, "server is not running"
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        """The server's stderr of the current start."""
        return self.data_dir.parent / f"serve-{self._generation}.log"

    def start(self) -> None:
        """Start the server and wait until it answers health checks.

        Raises:
            ServerStartError: It exited early (``sandbox_unavailable`` tells why) or
                did not become healthy in time.
        """
        self._generation += 1
        out_path = self.data_dir.parent / f"serve-{self._generation}.out"
        env = dict(os.environ)
        env.pop("ARKER_API_KEY", None)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_ARKER_ROOT), env.get("PYTHONPATH", "")) if p
        )
        cmd = [
            sys.executable, "-m", "arker", "serve",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", str(self.data_dir), *self.extra_args,
        ]  # fmt: skip
        with open(out_path, "wb") as out, open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env
            )
        exports = self._wait_for_exports(out_path)
        self.base_url = exports["ARKER_BASE_URL"]
        self.control_url = exports["ARKER_CONTROL_URL"]
        self.api_key = exports["ARKER_API_KEY"]
        self.port = int(self.base_url.rsplit(":", 1)[1])
        self._wait_healthy()

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Send ``sig`` (SIGTERM: clean shutdown; SIGKILL: crash) and reap the process."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def restart(self, *, kill: bool = False) -> None:
        """Stop (SIGKILL when ``kill``, else SIGTERM) and start again, same dir and port."""
        self.stop(signal.SIGKILL if kill else signal.SIGTERM)
        self.start()

    def cli(self, *args: str) -> str:
        """Run ``arker serve <args> --data-dir <this server's dir>``; return its stdout."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_ARKER_ROOT), env.get("PYTHONPATH", "")) if p
        )
        done = subprocess.run(
            [sys.executable, "-m", "arker", "serve", *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=60,
        )
        return done.stdout

    def create_key(self, org: str) -> str:
        """A new API key for org ``org`` (created if new), via ``arker serve keys create``."""
        return self.cli("keys", "create", "--org", org).strip().splitlines()[-1]

    def health(self) -> dict[str, Any]:
        """The parsed ``GET /api/v1/health`` response."""
        with urllib.request.urlopen(f"{self.base_url}/api/v1/health", timeout=5) as resp:
            body: dict[str, Any] = json.loads(resp.read())
            return body

    def _wait_for_exports(self, out_path: Path) -> dict[str, str]:
        deadline = time.monotonic() + START_TIMEOUT_S
        wanted = ("ARKER_BASE_URL", "ARKER_CONTROL_URL", "ARKER_API_KEY")
        while time.monotonic() < deadline:
            exports = _parse_exports(out_path.read_text(errors="replace"))
            if all(k in exports for k in wanted):
                return exports
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                reason = self._last_log_line()
                raise ServerStartError(
                    f"arker serve exited with status {code}: {reason}",
                    sandbox_unavailable=code == EXIT_SANDBOX_UNAVAILABLE,
                )
            time.sleep(0.05)
        self.stop(signal.SIGKILL)
        raise ServerStartError(f"arker serve printed no exports in {START_TIMEOUT_S:.0f}s")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if self.health().get("ok"):
                    return
            except OSError:
                pass
            if self.proc is None or self.proc.poll() is not None:
                raise ServerStartError(f"arker serve died: {self._last_log_line()}")
            time.sleep(0.05)
        raise ServerStartError("arker serve never answered GET /api/v1/health")

    def _last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(no output)"


def _parse_exports(text: str) -> dict[str, str]:
    exports = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            name, _, value = line[len("export ") :].partition("=")
            exports[name.strip()] = value.strip()
    return exports


def start_server(data_dir: Path, **kwargs: Any) -> ArkerServer:
    """Start a server on ``data_dir``; `pytest.skip` when the sandbox is unavailable."""
    server = ArkerServer(data_dir, **kwargs)
    try:
        server.start()
    except ServerStartError as exc:
        if exc.sandbox_unavailable:
            pytest.skip(f"arker serve cannot run here: {exc}")
        raise
    return server


@pytest.fixture(scope="session")
def arker_server() -> Iterator[ArkerServer]:
    """A real ``arker serve`` on 127.0.0.1 for the whole test session."""
    with tempfile.TemporaryDirectory(prefix="arker-serve-", ignore_cleanup_errors=True) as tmp:
        server = start_server(Path(tmp) / "data")
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def arker_client(arker_server: ArkerServer) -> Iterator[Any]:
    """An ``arker.Arker`` client for ``arker_server``, closed after the test."""
    from arker import Arker

    client = Arker(
        arker_server.api_key,
        base_url=arker_server.base_url,
        control_url=arker_server.control_url,
    )
    try:
        yield client
    finally:
        client.close()
