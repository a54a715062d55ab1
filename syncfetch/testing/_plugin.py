"""The ``fake_api`` pytest fixture, registered through the ``pytest11`` entry point.

pytest imports this module when it starts; importing ``syncfetch`` never does, so
syncfetch does not depend on pytest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from . import FakeAPI


@pytest.fixture
def fake_api() -> Iterator[Callable[..., FakeAPI]]:
    """Start fake APIs for one test: ``api = fake_api("30/minute", dialect="github")``.

    Takes :class:`syncfetch.testing.FakeAPI`'s arguments and returns it started; every
    one started is stopped when the test ends.
    """
    started: list[FakeAPI] = []

    def start(*args: Any, **kwargs: Any) -> FakeAPI:
        api = FakeAPI(*args, **kwargs)
        started.append(api)
        return api.start()

    try:
        yield start
    finally:
        for api in started:
            api.stop()
