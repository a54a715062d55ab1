"""Sharded crawls (syncfetch._shard): which items a shard takes, and merging the parts."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncfetch._batch_input import read_items
from syncfetch._shard import merge, parse_shard, shard_total, take_shard


@pytest.mark.parametrize(("text", "want"), [("0/1", (0, 1)), ("3/4", (3, 4)), (" 2/10 ", (2, 10))])
def test_parse_shard(text: str, want: tuple[int, int]) -> None:
    assert parse_shard(text) == want


@pytest.mark.parametrize("text", ["", "1", "4/4", "5/4", "0/0", "-1/4", "1/-4", "a/b", "1/2/3"])
def test_parse_shard_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="shard"):
        parse_shard(text)


@given(st.text(max_size=20))
def test_parse_shard_any_text(text: str) -> None:
    try:
        k, n = parse_shard(text)
    except ValueError:
        return
    assert 0 <= k < n


_line = st.one_of(
    st.just(""),
    st.just("   "),
    st.just("# comment"),
    st.from_regex(r"https?://[a-z]{1,5}\.example/[a-z0-9]{0,5}", fullmatch=True),
)


@given(st.lists(_line, max_size=40), st.integers(1, 6))
def test_shards_split_the_items_exactly_once_keeping_line_numbers(lines: list[str], n: int) -> None:
    data = "".join(line + "\n" for line in lines).encode()
    everything = list(read_items(io.BytesIO(data)))
    seen: list[tuple[int, object]] = []
    for k in range(n):
        part = list(take_shard(read_items(io.BytesIO(data)), (k, n)))
        seen += part
        # Shard k: every n-th item from the k-th (counting from 0).
        assert part == everything[k::n]
        assert len(part) == shard_total(len(everything), (k, n))
    assert sorted(seen, key=lambda pair: pair[0]) == everything


def test_a_line_that_is_not_utf8_is_an_item_of_its_shard() -> None:
    data = b"http://x/1\n\xff\xfe\nhttp://x/3\n"
    part = list(take_shard(read_items(io.BytesIO(data)), (1, 2)))
    assert [number for number, _ in part] == [2]


def _rec(index: int, **extra: object) -> str:
    return json.dumps({"index": index, "url": f"http://x/{index}", "ok": True, **extra}) + "\n"


def test_merge_puts_parts_in_input_order_and_reports_missing() -> None:
    source = b"http://x/1\n\n# c\nhttp://x/4\nhttp://x/5\nhttp://x/6\n"
    parts = {
        "part-0.jsonl": [_rec(5), _rec(1)],
        "part-1.jsonl": [_rec(4), _rec(4, again=True), '{"index": 6, "url"'],  # torn line
    }
    out = io.StringIO()
    report = merge(parts, out, (number for number, _ in read_items(io.BytesIO(source))))
    assert [json.loads(line)["index"] for line in out.getvalue().splitlines()] == [1, 4, 5]
    assert "again" not in out.getvalue()  # the first record of an index is kept
    assert report.written == 3 and report.duplicates == 1
    assert report.bad_lines == ["part-1.jsonl:3"]
    assert report.missing == [6] and report.missing_known
    assert "1 items missing (input lines 6)" in report.summary()


def test_merge_without_the_input_reports_gaps() -> None:
    out = io.StringIO()
    report = merge({"a": [_rec(3), _rec(1)], "b": [b'{"index": 5}\n', b"\n"]}, out)
    assert report.missing == [2, 4] and not report.missing_known
    assert "pass the input file" in report.summary()
    report = merge({"a": [_rec(1), _rec(2)]}, io.StringIO())
    assert report.missing == [] and report.summary() == "2 items merged"


@given(
    st.lists(st.integers(1, 200), max_size=60),
    st.lists(st.one_of(st.text(max_size=30), st.binary(max_size=30)), max_size=5),
)
def test_merge_any_part_content(indices: list[int], junk: list[str | bytes]) -> None:
    parts = {"p": [_rec(i) for i in indices] + junk}
    out = io.StringIO()
    report = merge(parts, out)
    assert report.written >= len(set(indices))
    written = [json.loads(line)["index"] for line in out.getvalue().splitlines()]
    assert written == sorted(set(written))
    assert set(indices) <= set(written)
