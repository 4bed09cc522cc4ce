"""Fixtures of the docs-examples test, and its per-page summary at the end of the run.

The `arker.testing` plugin is registered here when the package is not installed (its
pytest11 entry point is then absent).
"""

from __future__ import annotations

import pytest

_SUMMARY_KEY = "docs_examples"
_summaries: list[tuple[str, str]] = []


def pytest_configure(config: pytest.Config) -> None:
    pm = config.pluginmanager
    if not (pm.has_plugin("arker") or pm.has_plugin("arker.testing")):
        pm.import_plugin("arker.testing")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":
        return
    for name, value in report.user_properties:
        if name == _SUMMARY_KEY:
            _summaries.append((report.nodeid, str(value)))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _summaries:
        return
    terminalreporter.section("docs examples: blocks run per page")
    for _nodeid, line in _summaries:
        terminalreporter.write_line(line)
