"""``session.map(items, progress=True)``: tqdm's bar, or the CLI's line, on a terminal only."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator

import pytest
import responses

import syncfetch


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get("http://api.test/ok")
        rsps.get("http://api.test/busy", status=429)
        yield rsps


ITEMS = ["http://api.test/ok"] * 4 + ["http://api.test/busy"]


def test_plain_line_without_tqdm(
    mocked: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    with syncfetch.Session(retry=1) as s:
        results = list(s.map(ITEMS, progress=True))
    assert len(results) == 5
    last = err.getvalue().rstrip("\n").rpartition("\r\x1b[K")[2]
    assert last.startswith("5/5 (100%) done, ")
    assert "1 failed, 1 retries, 2 x 429" in last


def test_tqdm_bar(mocked: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch) -> None:
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    with syncfetch.Session(retry=1) as s:
        results = list(s.map(ITEMS, progress=True))
    assert len(results) == 5
    out = err.getvalue()
    assert "5/5" in out and "1 failed, 1 retries, 2 x 429" in out


def test_nothing_drawn_when_stderr_is_not_a_terminal(
    mocked: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with syncfetch.Session() as s:
        assert len(list(s.map(iter(ITEMS), progress=True))) == 5
    assert err.getvalue() == ""


def test_breaking_out_stops_the_line(
    mocked: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    with syncfetch.Session() as s:
        results = s.map(iter(ITEMS), progress=True)
        next(results)
        results.close()  # type: ignore[attr-defined]
    assert err.getvalue().endswith("\n")
    assert "/" not in err.getvalue().split(" done")[0]  # no total for a generator
