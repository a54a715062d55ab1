"""pytest plugin for requests' own test suite: swap requests.Session for syncfetch.Session.

Loaded with ``-p syncfetch_swap``. ``SYNCFETCH_SWAP`` selects the session:

- ``off``: plain requests (the baseline run);
- ``retry0``: ``syncfetch.Session(retry=0)``, which must pass every test the baseline passes;
- ``default``: ``syncfetch.Session()`` with default settings (differences are documented).

Whatever the mode, sockets may only reach loopback: requests' suite has tests that connect
to a non-routable address or resolve public names, and this machine must send no traffic
off the host. Those tests fail in every mode, so they never count as a difference.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

import pytest
import requests
import requests.sessions

import syncfetch

MODE = os.environ.get("SYNCFETCH_SWAP", "off")
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _is_loopback(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    host = host.strip("[]").lower()
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if host is not None and not _is_loopback(host):
        raise socket.gaierror(socket.EAI_NONAME, f"blocked off-host name {host!r}")
    return _real_getaddrinfo(host, *args, **kwargs)


def _guard(address: Any) -> None:
    if isinstance(address, tuple) and not _is_loopback(address[0]):
        raise OSError(f"blocked off-host connection to {address!r}")


def _connect(self: socket.socket, address: Any) -> None:
    _guard(address)
    _real_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    _guard(address)
    return _real_connect_ex(self, address)


socket.getaddrinfo = _getaddrinfo
socket.socket.connect = _connect  # type: ignore[method-assign]
socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]


class Session(syncfetch.Session):
    """The session requests' tests get: module-level, so a pickled one can be loaded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if MODE == "retry0":
            kwargs.setdefault("retry", 0)
        super().__init__(*args, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    if MODE == "off":
        return
    requests.Session = Session  # type: ignore[misc]
    requests.sessions.Session = Session  # type: ignore[misc]
    requests.session = requests.sessions.session = Session  # type: ignore[assignment]
