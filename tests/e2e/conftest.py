"""Registers the `arker.testing` plugin when the package is not installed."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    pm = config.pluginmanager
    if not (pm.has_plugin("arker") or pm.has_plugin("arker.testing")):
        pm.import_plugin("arker.testing")
