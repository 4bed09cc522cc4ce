"""The ``arker`` logger. ``ARKER_LOG=info|debug`` attaches a stderr handler to it.

Records carry structured ``extra`` fields (``arker_method``, ``arker_url``,
``arker_status``, ``arker_duration_ms``, ``arker_attempt``) for JSON log pipelines. The
API key is never logged: headers are not logged at all, and presigned URLs lose their
query string (it holds the signature).
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("arker")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}


def setup_from_env() -> None:
    """Honour ``ARKER_LOG`` once: add a handler only if the user asked and none exists."""
    level = _LEVELS.get(os.environ.get("ARKER_LOG", "").strip().lower())
    if level is None or any(getattr(h, "_arker", False) for h in log.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s"))
    handler._arker = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(level)


def redact_url(url: str) -> str:
    """Drop the query string (signatures, tokens) from a URL before logging it."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "<redacted>", ""))


_QUERY = re.compile(r"\?[^\s'\"()]+")


def redact_text(text: str) -> str:
    """Drop every query string inside ``text``: exception messages from requests and
    urllib3 quote the URL (or its path and query), and a presigned URL's query is its
    signature."""
    return _QUERY.sub("?<redacted>", text)
