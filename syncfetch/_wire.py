"""When a request left this process: connections that note the moment its bytes were sent.

The limiter dates each token by when its request reached the server. What this process
can observe is the moment the request's bytes were handed to the socket; the server
counts the request a little later (the margin the limiter adds covers that). The
connections below note that moment on the token of the attempt being sent, which the
pipeline puts in :data:`SENDING` around ``adapter.send``. Adapters that syncfetch creates
use them; a user-mounted adapter does not, and its tokens are dated by the response.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.connection import HTTPConnection, HTTPSConnection

from ._stores.base import Token

#: The token of the attempt this thread is sending (set by the pipeline around the send).
SENDING: contextvars.ContextVar[Token | None] = contextvars.ContextVar(
    "syncfetch_sending", default=None
)


class _Timed(HTTPConnection):
    """Notes on the token in :data:`SENDING` when the request left and the answer came."""

    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        token = SENDING.get()
        if token is not None:
            token.answered = None  # (a second request on this attempt: only it counts)
        super().request(*args, **kwargs)
        # Headers and body have been handed to the socket by now.
        if token is not None:
            token.sent = time.monotonic()
            if token.on_sent is not None:
                token.on_sent(token)

    def getresponse(self) -> Any:
        resp = super().getresponse()
        # The status line and headers are in: the server counted the request before.
        token = SENDING.get()
        if token is not None and token.sent is not None:
            token.answered = time.monotonic()
        return resp


class _TimedHTTPConnection(_Timed):
    pass


class _TimedHTTPSConnection(_Timed, HTTPSConnection):
    pass


class _TimedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TimedHTTPConnection


class _TimedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TimedHTTPSConnection


_TIMED_POOLS = {"http": _TimedHTTPPool, "https": _TimedHTTPSPool}


def _time_pools(manager: Any) -> Any:
    # Only plain urllib3 managers: a SOCKS manager has pool classes of its own.
    if getattr(manager, "pool_classes_by_scheme", None) is not None and not type(
        manager
    ).__name__.startswith("SOCKS"):
        manager.pool_classes_by_scheme = _TIMED_POOLS
    return manager


class TimedAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections (direct and through HTTP proxies) note
    on the token in :data:`SENDING` when each request was sent."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _time_pools(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        known = proxy in self.proxy_manager
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        return manager if known else _time_pools(manager)
