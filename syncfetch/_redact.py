"""URLs made safe for logs: no user-info, no query-string values, no fragment."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# A URL inside free text (an exception's message), up to a space or a quote. The scheme's
# length is bounded so that a long run of letters costs linear time, not quadratic.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,30}://[^\s'\"<>`]+")
# A query string left in free text without its URL: urllib3 says "with url: /x?key=...".
_QUERY_IN_TEXT = re.compile(r"\?([^\s'\"<>`]*)")


def _safe_query(query: str) -> str:
    """``a=1&key=s`` -> ``a=***&key=***``; a part without ``=`` may be a bare key: ``***``."""
    return "&".join(
        part.partition("=")[0] + "=***" if "=" in part else "***"
        for part in query.split("&")
        if part
    )


def safe_url(url: str | None) -> str:
    """Return ``url`` with credentials and fragment dropped and query values replaced by ``***``.

    Query strings often carry API keys (``?api_key=...``); names are kept so the log
    still tells requests apart.
    """
    if not url:
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, _safe_query(parts.query), ""))


def safe_text(text: str) -> str:
    """``text`` (an error message) with every URL in it made safe as :func:`safe_url` does,
    and the values of any query string left bare (``url: /x?key=***``) replaced."""
    text = _URL_IN_TEXT.sub(lambda m: safe_url(m.group()), text)
    return _QUERY_IN_TEXT.sub(lambda m: "?" + _safe_query(m.group(1).partition("#")[0]), text)
