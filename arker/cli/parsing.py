"""The command line's argument parsing: one-line usage errors, the flags every command
takes, and a subcommand's parser with an example in its help."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from .output import error_line

__all__ = ["EXIT_USAGE", "Parser", "add_common", "command"]

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(error_line("usage", f"{message} (see: {self.prog} --help)") + "\n")
        raise SystemExit(EXIT_USAGE)


def add_common(parser: argparse.ArgumentParser, top: bool) -> None:
    """Flags every command takes, before or after its name (``arker --json ls`` and
    ``arker ls --json``); a subcommand's copy must not reset the top level's value."""

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("common options")
    group.add_argument(
        "--json", action="store_true", default=default(False), help="print JSON for scripts"
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="log every HTTP request to stderr",
    )
    group.add_argument("--api-key", default=default(None), help="API key (default: $ARKER_API_KEY)")
    group.add_argument(
        "--base-url", default=default(None), help="regional API host (default: $ARKER_BASE_URL)"
    )
    group.add_argument(
        "--control-url",
        default=default(None),
        help="control host for list and fork-by-name (default: $ARKER_CONTROL_URL)",
    )


def command(
    actions: argparse._SubParsersAction[Parser], name: str, summary: str, example: str
) -> Parser:
    """A subcommand parser with the common flags and an example in its help."""
    parser: Parser = actions.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"example:\n{example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(parser, top=False)
    return parser
