"""The engine's error as the HTTP layer sees it (no sandbox needed)."""

from __future__ import annotations

from arker.local import engine_api
from arker.local.sandbox import SandboxError


def test_the_engines_error_gives_its_code_and_message() -> None:
    assert engine_api.sandbox_error_parts(SandboxError("vm_busy", "try again")) == (
        "vm_busy",
        "try again",
    )


def test_an_unrelated_error_with_the_same_class_name_is_not_the_engines() -> None:
    class SandboxError(Exception):
        code = "not_found"
        message = "nope"

    assert engine_api.sandbox_error_parts(SandboxError()) is None
    assert engine_api.sandbox_error_parts(ValueError("x")) is None
