"""Shared fixtures for the syncfetch test suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import syncfetch
from tests._server import ScriptedServer


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    """A started ScriptedServer, stopped (connections cut) after the test."""
    srv = ScriptedServer().start()
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
