"""``arker`` command line: ``arker serve …`` (also ``python -m arker serve …``).

Only the serve path imports FastAPI and uvicorn, so the SDK stays light.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = "usage: arker serve [--help] ...  (run a local Arker server)"


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch the ``arker`` command; returns the process exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] == "serve":
        from .local.cli import serve_main

        return serve_main(args[1:])
    print(f"arker: unknown command {args[0]!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
