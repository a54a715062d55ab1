"""Shared fixtures for the syncfetch test suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import syncfetch
from tests._server import ScriptedServer, ServerProcess


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    """A started ScriptedServer, stopped (connections cut) after the test."""
    srv = ScriptedServer().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def strict_server() -> Iterator[ScriptedServer]:
    """The same server in a process of its own, for tests that count 429s.

    The in-process server stamps arrivals when its handler gets the GIL, late by a
    delay the client threads cause and no client can see: strict limits are checked
    against a server with its own GIL.
    """
    srv = ServerProcess().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(autouse=True)
def _no_retry_waits() -> Iterator[None]:
    """Backoff and Retry-After sleeps are skipped; rate-limit waits stay real."""
    syncfetch.set_testing(True)
    try:
        yield
    finally:
        syncfetch.set_testing(False)
