"""Running the real ``arker`` command as a subprocess against a server."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Target:
    """The server the command talks to: what ``arker serve`` printed as exports."""

    base_url: str
    control_url: str
    api_key: str

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARKER_")}
        env.update(
            ARKER_BASE_URL=self.base_url,
            ARKER_CONTROL_URL=self.control_url,
            ARKER_API_KEY=self.api_key,
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        )
        env.update(extra)
        return env


def arker_argv(*args: str) -> list[str]:
    """The ``arker`` command (the console script's entry point) with ``args``."""
    return [sys.executable, "-m", "arker", *args]


def run_arker(
    target: Target | None,
    *args: str,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        arker_argv(*args),
        input=input if input is not None else b"",
        capture_output=True,
        env=env if env is not None else (target.env() if target else None),
        timeout=timeout,
        check=False,
    )


def one_error_line(done: subprocess.CompletedProcess[bytes]) -> str:
    """The single line a failed command printed on stderr (asserts there is one and
    no traceback)."""
    text = done.stderr.decode()
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("arker: "), text
    return lines[0]
