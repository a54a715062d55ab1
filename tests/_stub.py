"""Adapters that answer without a network, for executor tests that need exact control."""

from __future__ import annotations

import threading
from typing import Any

import requests
from requests.adapters import BaseAdapter


def canned(
    request: requests.PreparedRequest, status: int = 200, body: bytes = b"ok"
) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp._content = body
    resp.request = request
    resp.url = request.url or ""
    return resp


class GateAdapter(BaseAdapter):
    """Every send blocks until ``release`` is set; counts sends started."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.started = 0
        self._lock = threading.Lock()

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        with self._lock:
            self.started += 1
        if not self.release.wait(30):
            raise requests.Timeout("gate never opened")
        return canned(request)

    def close(self) -> None:
        pass


class CannedAdapter(BaseAdapter):
    """Answers 200 at once: for memory and overhead measurements with no server."""

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        return canned(request)

    def close(self) -> None:
        pass
