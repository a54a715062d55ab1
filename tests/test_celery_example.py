"""examples/celery_tasks.py, run in Celery's eager mode (no broker, no worker).

``task_always_eager`` runs a task in the calling process, and a retry runs again at once
(the countdown is not waited): what the fake API saw is what a worker would have sent.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

import syncfetch
from syncfetch.testing import FakeAPI

pytest.importorskip("celery")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def tasks(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delitem(sys.modules, "celery_tasks", raising=False)
    import celery_tasks

    celery_tasks.app.conf.update(task_always_eager=True)  # a failure is raised by .get()
    try:
        yield celery_tasks
    finally:
        celery_tasks.api.close()
        sys.modules.pop("celery_tasks", None)


def test_the_task_fetches_within_the_limit(
    tasks: ModuleType, fake_api: Callable[..., FakeAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = fake_api("40/second")  # the example's own limit
    monkeypatch.setattr(tasks, "API_URL", api.url)
    results = [tasks.fetch_item.delay(n).get() for n in range(50)]
    assert [r["ok"] for r in results] == [True] * 50
    assert api.count() == 50
    assert api.count(status=429) == 0
    assert api.max_in_window(1.0) <= 40


def test_no_token_within_max_wait_retries_the_task_and_sends_nothing(
    tasks: ModuleType, fake_api: Callable[..., FakeAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = fake_api("2/minute")
    monkeypatch.setattr(tasks, "API_URL", api.url)
    monkeypatch.setattr(tasks, "api", syncfetch.Session("2/minute", max_wait=0.05))
    attempts: list[int] = []
    real_get = tasks.api.get

    def counting_get(url: str) -> object:
        attempts.append(1)
        return real_get(url)

    monkeypatch.setattr(tasks.api, "get", counting_get)
    try:
        assert tasks.fetch_item.delay(1).get()["ok"] is True
        assert tasks.fetch_item.delay(2).get()["ok"] is True
        with pytest.raises(syncfetch.RateLimitExceeded):
            tasks.fetch_item.delay(3).get()
    finally:
        tasks.api.close()
    assert len(attempts) == 2 + 1 + 5  # the third task: its first run and 5 retries
    assert api.count() == 2  # the refused runs sent nothing
