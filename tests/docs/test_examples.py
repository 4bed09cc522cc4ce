"""Every Python example of README.md and docs/ runs, as written, against a real `arker serve`.

Each page is one test. Its Python blocks run in order in one namespace, as a reader runs
them one after another, with ``ARKER_BASE_URL``, ``ARKER_CONTROL_URL`` and
``ARKER_API_KEY`` pointing at a throwaway server, in an empty working directory. Bash
and other blocks are not run; a Python block that cannot run against a local server
carries a visible mark in the markdown (see ``markdown_blocks.py``). The terminal
summary lists, per page, which blocks ran and which were marked.

Why a small harness rather than pytest-examples, sybil or phmdoctest: the rules above (a
namespace per page, blocks inside content tabs and list items, marks with a reason, one
server for all pages) fit in ~150 lines with no new dependency, while those libraries
each bring their own conventions for exactly these points (pytest-examples also lints
and reformats examples; phmdoctest generates test files).

Two things stand in for what a reader supplies:

* the server's API key is the docs' placeholder ``ark_live_...``, so that
  ``Arker(api_key="ark_live_...")`` works as written, as it does for a reader who
  pastes their own key there;
* the working directory holds the local files the examples name as the reader's own
  (``model.bin``, ``data.bin``, ``./project``), see `_READER_FILES`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from markdown_blocks import Block, read_blocks

from arker.testing import ArkerServer, start_server

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")],
    key=lambda p: p.relative_to(ROOT).as_posix(),
)
DOCS_API_KEY = "ark_live_..."
SERVE_FLAGS = ("--host", "--port", "--data-dir", "--api-key", "--no-network", "--base")

# Local files the examples treat as the reader's own: relative path -> content.
_READER_FILES = {
    "model.bin": b"\x00model\xff" * 512,
    "data.bin": os.urandom(64 << 10),
    "project/main.py": b"print('hello')\n",
    "project/lib/util.py": b"X = 1\n",
    "project/.git/HEAD": b"ref: refs/heads/main\n",
    "project/main.pyc": b"\x00",
}


@pytest.fixture(scope="module")
def docs_server() -> Iterator[ArkerServer]:
    """A throwaway `arker serve` whose default key is the docs' placeholder key."""
    with tempfile.TemporaryDirectory(prefix="arker-docs-", ignore_cleanup_errors=True) as tmp:
        server = start_server(Path(tmp) / "data", extra_args=("--api-key", DOCS_API_KEY))
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def reader_env(
    docs_server: ArkerServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """The environment `arker serve` tells a reader to export, in a directory of their files."""
    monkeypatch.setenv("ARKER_BASE_URL", docs_server.base_url)
    monkeypatch.setenv("ARKER_CONTROL_URL", docs_server.control_url)
    monkeypatch.setenv("ARKER_API_KEY", DOCS_API_KEY)
    monkeypatch.delenv("ARKER_LOG", raising=False)
    for name, content in _READER_FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    monkeypatch.chdir(tmp_path)
    with _logging_restored():
        yield


@pytest.mark.e2e
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_examples(page: Path, reader_env: None, request: pytest.FixtureRequest) -> None:
    name = page.relative_to(ROOT).as_posix()
    blocks = [b for b in read_blocks(page) if b.is_python]
    namespace: dict[str, Any] = {"__name__": "__main__"}
    ran: list[int] = []
    marked: list[str] = []
    try:
        for number, block in enumerate(blocks, 1):
            if block.skip_reason is not None:
                marked.append(f"{number} (line {block.line}: {block.skip_reason})")
                continue
            _run(name, number, block, namespace)
            ran.append(number)
    finally:
        summary = f"{name}: ran {len(ran)} of {len(blocks)} Python blocks {ran}"
        if marked:
            summary += "; marked not run: " + ", ".join(marked)
        request.node.user_properties.append(("docs_examples", summary))


def test_serve_help_lists_every_flag_the_docs_list() -> None:
    """`arker serve --help`, which the docs call authoritative, knows each documented flag
    and shows the default of each that has one."""
    from arker.local.cli import build_parser

    text = build_parser().format_help()
    docs = (ROOT / "docs" / "local-server.md").read_text() + (ROOT / "README.md").read_text()
    for flag in (*SERVE_FLAGS, "--disk-quota"):
        assert flag in docs, f"the docs no longer list {flag}"
        assert flag in text, f"arker serve --help does not list {flag}"
    for default in ("127.0.0.1", "8733", "host", "10G"):
        assert f"(default: {default}" in text, f"arker serve --help hides the default {default}"


def _run(page: str, number: int, block: Block, namespace: dict[str, Any]) -> None:
    code = compile(block.code, f"{page}:{block.line}", "exec")
    try:
        exec(code, namespace)
    except Exception as exc:
        detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    else:
        return
    pytest.fail(
        f"{page}, Python block {number} (line {block.line}) failed:\n{block.code}\n{detail}",
        pytrace=False,
    )


class _logging_restored:
    """Examples configure logging (handlers, levels); undo that for the tests after them."""

    def __enter__(self) -> None:
        self._saved = [
            (logger, list(logger.handlers), logger.level)
            for logger in (logging.getLogger(), logging.getLogger("arker"))
        ]

    def __exit__(self, *exc: object) -> None:
        for logger, handlers, level in self._saved:
            for handler in logger.handlers:
                if handler not in handlers:
                    logger.removeHandler(handler)
            logger.setLevel(level)
