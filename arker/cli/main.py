"""``arker``: the command line. Parses the command, runs it, turns every failure into
one line and an exit status.

``arker serve …`` goes to the server's own command line (`arker.local.cli`) before
anything else is parsed; the other commands never import the server.

Exit statuses: 0 success; 1 an error (one line on stderr: ``arker: <code>: <message>``);
2 bad usage; 130 interrupted (Ctrl-C); 141 stdout closed early; ``run`` and ``logs -f``
exit with the command's own status.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from .._exceptions import ArkerError
from .._version import __version__
from . import files, runs, shell, vms
from .context import Context, route_missing
from .output import error_line
from .parsing import EXIT_USAGE, Parser, add_common

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, the status of tools the signal kills

_DESCRIPTION = """\
Arker virtual computers from the shell. Configuration as in the SDK: ARKER_API_KEY,
ARKER_BASE_URL and ARKER_CONTROL_URL, or the flags below.

examples:
  arker fork arkuntu --name scratch
  arker run scratch -- python3 -c 'print(2 + 2)'
  arker cp ./data.csv scratch:/home/user/data.csv
  arker rm scratch
"""


def build_parser() -> Parser:
    parser = Parser(
        prog="arker",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(parser, top=True)
    parser.add_argument("--version", action="version", version=f"arker {__version__}")
    actions = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    vms.register(actions)
    runs.register(actions)
    files.register(actions)
    shell.register(actions)
    actions.add_parser(
        "serve", help="run a local Arker server (see: arker serve --help)", add_help=False
    )
    return parser


def _parse(parser: Parser, args: list[str]) -> argparse.Namespace:
    """Parse ``args``; for commands that take one (``run``, ``start``), everything after
    the first ``--`` is the command line to run, untouched by the parser."""
    if "--" in args:
        cut = args.index("--")
        parsed = parser.parse_args(args[:cut])
        if hasattr(parsed, "cmd"):
            parsed.cmd = [*parsed.cmd, *args[cut + 1 :]]
            return parsed
    return parser.parse_args(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``arker`` command; returns the process exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "serve":
        from ..local.cli import serve_main

        return serve_main(args[1:])
    parser = build_parser()
    try:
        parsed = _parse(parser, args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if parsed.command is None:
        parser.print_help()
        return EXIT_USAGE
    if parsed.debug:
        os.environ["ARKER_LOG"] = "debug"
    ctx = Context(parsed)
    try:
        status: int = parsed.func(ctx, parsed)
        return status
    except KeyboardInterrupt:
        sys.stderr.write("\narker: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `arker ls | head`: the reader left; say nothing more to it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except ArkerError as exc:
        code, message = exc.code, exc.message
        if route_missing(exc):
            code, message = (
                "unsupported_operation",
                "the server does not offer this (no such route)",
            )
        sys.stderr.write(error_line(code, message) + "\n")
        return EXIT_USAGE if code == "usage" else EXIT_ERROR
    except OSError as exc:
        if parsed.debug:
            raise
        text = exc.strerror or str(exc)
        where = f": {exc.filename}" if exc.filename else ""
        sys.stderr.write(error_line("local_error", f"{text}{where}") + "\n")
        return EXIT_ERROR
    except Exception as exc:
        if parsed.debug:
            raise
        sys.stderr.write(error_line("internal", f"{type(exc).__name__}: {exc}") + "\n")
        return EXIT_ERROR
    finally:
        with contextlib.suppress(Exception):
            ctx.close()
