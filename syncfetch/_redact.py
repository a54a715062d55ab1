"""URLs made safe for logs: no user-info, no query-string values."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit


def safe_url(url: str | None) -> str:
    """Return ``url`` with credentials dropped and query values replaced by ``***``.

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
    query = "&".join(f"{name}=***" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
