"""`arker serve`: a self-hosted Arker server speaking the whole wire protocol.

Importing this package is cheap: FastAPI, uvicorn and the sandbox engine are imported
only by the modules that need them (`arker.local.app`, `arker.local.server`), so the
SDK never pays for them.
"""

from __future__ import annotations

__all__: list[str] = []
