"""Every Python example of README.md and docs/ runs, as written, against a real `arker serve`.

Each page is one test. Its Python blocks run in order in one namespace, as a reader runs
them one after another, with ``ARKER_BASE_URL``, ``ARKER_CONTROL_URL`` and
``ARKER_API_KEY`` pointing at a throwaway server, in an empty working directory. Bash
and other blocks are not run; a Python block that cannot run against a local server
carries a visible mark in the markdown (see ``tests/kit/markdown_blocks.py``). The terminal
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
import re
import subprocess
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from arker.testing import ArkerServer, start_server
from tests.kit.markdown_blocks import PYTHON, Block, read_blocks

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")],
    key=lambda p: p.relative_to(ROOT).as_posix(),
)
DOCS_API_KEY = "ark_live_..."

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


def test_serve_help_shows_every_flag_the_docs_list_with_its_default() -> None:
    """The docs call `arker serve --help` authoritative: it knows each flag they list (and
    they list each it knows), and it shows the defaults the docs' table gives."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    help_text = subprocess.run(
        [sys.executable, "-m", "arker", "serve", "--help"],
        capture_output=True, text=True, check=True, env=env, timeout=60,
    ).stdout  # fmt: skip
    rows = [  # the flag table: | `--flag ARG` | default | meaning |
        re.split(r"(?<!\\)\|", line)[1:-1]
        for line in (ROOT / "docs" / "local-server.md").read_text().splitlines()
        if line.startswith("| `--")
    ]  # fmt: skip
    documented = {row[0].strip(" `").split()[0] for row in rows}
    readme_usage = re.search(
        r"^arker serve (\[.*?)^#", (ROOT / "README.md").read_text(), re.M | re.S
    )
    assert readme_usage is not None, "README.md no longer shows the arker serve usage"
    in_readme = set(re.findall(r"\[(--[a-z-]+)", readme_usage[1]))
    in_help = set(re.findall(r"^  (--[a-z-]+)", help_text, re.M))
    assert documented == in_help, "docs/local-server.md's flag table and --help differ"
    assert in_readme == in_help, "README.md's arker serve usage and --help differ"
    plain_defaults = [  # such as `127.0.0.1`, `8733`, `10G` (not `$ENV…` or prose)
        (row[0].strip(), default[1])
        for row in rows
        if (default := re.fullmatch(r"`([^`$]+)`", row[1].strip()))
    ]
    assert len(plain_defaults) >= 4, plain_defaults
    for flag, default in plain_defaults:
        assert f"(default: {default}" in help_text, f"--help hides the default of {flag}"


def _run(page: str, number: int, block: Block, namespace: dict[str, Any]) -> None:
    code = compile(block.code, f"{page}:{block.line}", "exec")
    try:
        with warnings.catch_warnings():
            # The docs teach no deprecated API: a DeprecationWarning blamed on the
            # example's own line (module __main__) fails it.
            warnings.filterwarnings("error", category=DeprecationWarning, module="__main__")
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


KNOWN_LANGUAGES = PYTHON | {"bash", "sh", "console", "text", "json", "yaml", "toml", "mermaid"}


def test_every_fenced_block_names_a_language_the_harness_knows() -> None:
    """A Python example cannot slip past the harness under another label or none."""
    for page in PAGES:
        for block in read_blocks(page):
            assert block.lang in KNOWN_LANGUAGES, (
                f"{page.relative_to(ROOT)}:{block.line}: fence language {block.lang!r}; "
                f"use one of {sorted(KNOWN_LANGUAGES)}"
            )


def test_blocks_are_found_in_tabs_and_marks_need_a_reason(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nx = 1\n```\n\n"
        '=== "Tab"\n\n'
        "    <!-- not run by tests/docs: needs the hosted platform -->\n"
        "    ```python\n    if x:\n        y = 2\n    ```\n\n"
        "```bash\necho hi\n```\n"
    )
    blocks = read_blocks(page)
    assert [(b.line, b.lang, b.code, b.skip_reason) for b in blocks] == [
        (2, "python", "x = 1\n", None),
        (9, "python", "if x:\n    y = 2\n", "needs the hosted platform"),
        (14, "bash", "echo hi\n", None),
    ]
    page.write_text("<!-- not run by tests/docs: -->\n```python\nx = 1\n```\n")
    with pytest.raises(ValueError, match="needs a reason"):
        read_blocks(page)
    page.write_text("```python\nx = 1\n")
    with pytest.raises(ValueError, match="never closed"):
        read_blocks(page)
