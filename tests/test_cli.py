"""``syncfetch fetch`` driven as a subprocess against local servers."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from requests import Request

from syncfetch._batch_input import BadLine, Item, parse_line, read_items
from syncfetch._batch_output import drop_userinfo, redact_text, scan_output
from syncfetch._progress import RecentRate
from syncfetch._provider import Provider, ProviderConfig
from tests._server import ScriptedServer, Step


@pytest.fixture(autouse=True)
def _cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every run's state file goes to a temporary cache directory, never the real home."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    yield cache


def fetch(*args: str, stdin: str | bytes | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "syncfetch", "fetch", *args],
        input=stdin.encode() if isinstance(stdin, str) else stdin,
        capture_output=True,
        timeout=120,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_fetch_writes_one_line_per_item(server: ScriptedServer, tmp_path: Path) -> None:
    server.script("/bin", Step(body=bytes(range(256))))
    server.script("/gone", Step(status=404, body=b"nope"))
    post = json.dumps({"method": "post", "url": server.url_for("/p"), "json": {"x": 1}})
    src = tmp_path / "in.txt"
    src.write_text(
        f"# urls\n{server.url_for('/a')}\n\n{server.url_for('/bin')}\n{{oops\n"
        f"not-a-url\n{server.url_for('/gone')}\n{post}\n"
    )
    out = tmp_path / "out.jsonl"
    proc = fetch(str(src), "-o", str(out), "--rate", "50/s", "-H", "X-Team: core")
    assert proc.returncode == 1  # some items failed
    assert "Traceback" not in proc.stderr
    assert "6 items" in proc.stderr and "3 ok, 3 failed" in proc.stderr
    by_index = {rec["index"]: rec for rec in lines(out)}
    assert sorted(by_index) == [2, 4, 5, 6, 7, 8]
    assert by_index[2]["body"] == "ok" and by_index[2]["status"] == 200
    assert by_index[4]["body_encoding"] == "base64"
    assert str(by_index[5]["error"]).startswith("BadLine")
    assert str(by_index[6]["error"]).startswith(("MissingSchema", "InvalidURL"))
    assert by_index[7]["status"] == 404 and by_index[7]["ok"] is False
    assert by_index[8]["method"] == "POST" and by_index[8]["ok"] is True
    assert {r.headers["X-Team"] for r in server.records} == {"core"}
    assert json.loads(next(r for r in server.records if r.path == "/p").body) == {"x": 1}


def test_fetch_from_stdin_all_ok_exits_zero(server: ScriptedServer, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    urls = "".join(f"{server.url_for(f'/{i}')}\n" for i in range(30))
    proc = fetch("-", "-o", str(out), "--no-body", "--concurrency", "4", stdin=urls)
    assert proc.returncode == 0, proc.stderr
    recs = lines(out)
    assert sorted(r["index"] for r in recs) == list(range(1, 31))
    assert all("body" not in r and r["attempts"] == 1 for r in recs)


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_line_that_is_not_utf8_is_an_error_line(
    server: ScriptedServer, tmp_path: Path, where: str
) -> None:
    n = 60
    bad = {"start": 1, "middle": 31, "end": n}[where]
    src = tmp_path / "in.txt"
    src.write_bytes(
        b"".join(
            server.url_for(f"/{i}").encode() + (b"/\xff\xfe" if i == bad else b"") + b"\n"
            for i in range(1, n + 1)
        )
    )
    out = tmp_path / "out.jsonl"
    proc = fetch(str(src), "-o", str(out), "--no-body", "--retries", "0")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    by_index = {r["index"]: r for r in lines(out)}
    assert sorted(by_index) == list(range(1, n + 1))
    assert str(by_index[bad]["error"]).startswith("BadLine: not UTF-8: byte 0xff")
    assert sum(1 for r in by_index.values() if r["ok"]) == n - 1
    # From stdin too, and --resume gets past the bad line (it already has its record).
    out.write_text("\n".join(json.dumps(by_index[i]) for i in range(1, n // 2)) + "\n")
    again = fetch("-", "-o", str(out), "--resume", "--no-body", stdin=src.read_bytes())
    assert again.returncode == 1, again.stderr
    assert sorted(r["index"] for r in lines(out)) == list(range(1, n + 1))


def test_read_items_keeps_numbering_past_bad_and_long_lines() -> None:
    import io

    from syncfetch import _batch_input as _batch

    data = b"\xef\xbb\xbfhttp://a/\n\n# c\xff\n  \xc3\n" + b"x" * 40 + b"\nhttp://b/"
    old, _batch.MAX_LINE = _batch.MAX_LINE, 32
    try:
        got = list(read_items(io.BytesIO(data)))
    finally:
        _batch.MAX_LINE = old
    assert [n for n, _ in got] == [1, 4, 5, 6]
    assert got[0][1] == "http://a/" and got[3][1] == "http://b/"
    assert isinstance(got[1][1], BadLine) and "UTF-8" in str(got[1][1])
    assert isinstance(got[2][1], BadLine) and "longer" in str(got[2][1])


@given(st.binary(max_size=300))
def test_read_items_takes_any_bytes(data: bytes) -> None:
    import io

    got = list(read_items(io.BytesIO(data)))
    numbers = [n for n, _ in got]
    assert numbers == sorted(set(numbers))
    assert all(1 <= n <= data.count(b"\n") + 1 for n in numbers)
    assert all(isinstance(t, BadLine) or (t and t == t.strip()) for _, t in got)


_LINES = st.one_of(
    st.builds(lambda i, ok: json.dumps({"index": i, "ok": ok}), st.integers(1, 20), st.booleans()),
    st.text(alphabet='{}"index:ok, 1tr\\', max_size=20).filter(lambda t: "\n" not in t),
)


@given(st.lists(_LINES, max_size=12), st.booleans())
def test_scan_output_keeps_every_valid_record(raw: list[str], newline_at_end: bool) -> None:
    import tempfile

    text = "\n".join(raw) + ("\n" if newline_at_end and raw else "")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.jsonl"
        path.write_text(text)
        prev = scan_output(str(path))
        after = path.read_text()
    assert after == "" or after.endswith("\n")
    kept = [json.loads(line) for line in after.splitlines()]  # every line is a record
    valid = []
    for line in raw:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("index"), int) and "ok" in rec:
            valid.append(rec)
    assert kept == valid
    assert prev.indices == {r["index"] for r in valid}


def test_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("http://127.0.0.1:9/\n")
    out = str(tmp_path / "o")
    for args, says in (
        ([str(src), "-o", out, "--rate", "10/fortnight"], "--rate"),
        ([str(tmp_path / "missing.txt"), "-o", out], "cannot read"),
        ([str(src), "-o", out, "-H", "no-colon"], "--header"),
        ([str(src), "-o", out, "--concurrency", "0"], "--concurrency: must be >= 1"),
        ([str(src), "-o", out, "--retries", "-1"], "--retries"),
        ([str(src), "-o", out, "--timeout", "nan"], "--timeout"),
        ([str(src), "-o", out, "--timeout", "inf"], "--timeout"),
        ([str(src), "-o", out, "--timeout", "0"], "--timeout"),
        ([str(src), "-o", out, "--method", "GE T"], "--method"),
        ([str(src), "-o", out, "--progress", "--quiet"], "--quiet"),
        ([str(src), "-o", out, "--store", "mongodb://x"], "--store"),
        ([str(src), "-o", out, "--backend", "memory"], "--backend is now called --store"),
        ([str(src), "-o", out, "--store", "memory", "--no-state"], "--no-state"),
        ([str(src), "-o", str(tmp_path), "--resume"], "directory"),
        ([str(src), "-o", str(tmp_path)], "directory"),
    ):
        proc = fetch(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert says in proc.stderr, (args, proc.stderr)
        assert "max_concurrency" not in proc.stderr


def test_help_is_plain_text_with_defaults_exit_codes_and_an_example() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "syncfetch", "fetch", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    text = proc.stdout
    assert "``" not in text
    for expected in (
        "(default: 10)",
        "(default: 3)",
        "(default: 30)",
        "(default: GET)",
        "NO LIMIT",
        "limits.db",
        "--redact",
        "130",
        "examples:",
        "syncfetch fetch urls.txt",
    ):
        assert expected in text, expected
    for code in ("0 ", "1 ", "2 ", "130 "):
        assert re.search(rf"^\s+{code}", text, re.MULTILINE), code
    top = subprocess.run(
        [sys.executable, "-m", "syncfetch", "--help"], capture_output=True, text=True, timeout=60
    )
    assert "``" not in top.stdout


def test_method_flag_is_recorded(server: ScriptedServer, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text(
        f"{server.url_for('/a')}\n"
        + json.dumps({"url": server.url_for("/b")})
        + "\n"
        + json.dumps({"url": server.url_for("/c"), "method": "put"})
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    proc = fetch(str(src), "-o", str(out), "--method", "delete")
    assert proc.returncode == 0, proc.stderr
    assert {r["index"]: r["method"] for r in lines(out)} == {1: "DELETE", 2: "DELETE", 3: "PUT"}
    assert sorted((r.path, r.method) for r in server.records) == [
        ("/a", "DELETE"),
        ("/b", "DELETE"),
        ("/c", "PUT"),
    ]


def test_json_lines_carry_timeout_and_allow_redirects(
    server: ScriptedServer, tmp_path: Path
) -> None:
    server.script("/r", Step(status=302, headers={"Location": "/target"}))
    server.script("/slow", Step(delay=2.0))
    src = tmp_path / "in.txt"
    src.write_text(
        "\n".join(
            json.dumps(obj)
            for obj in (
                {"url": server.url_for("/r"), "allow_redirects": False},
                {"url": server.url_for("/r")},
                {"url": server.url_for("/slow"), "timeout": 0.3},
                {"url": server.url_for("/x"), "timeout": "soon"},
                {"url": server.url_for("/x"), "allow_redirects": "no"},
                {"url": server.url_for("/x"), "timeout": [1, 2]},
            )
        )
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    proc = fetch(str(src), "-o", str(out), "--retries", "0", "--no-body")
    assert proc.returncode == 1, proc.stderr
    by_index = {r["index"]: r for r in lines(out)}
    assert by_index[1]["status"] == 302
    assert by_index[2]["status"] == 200
    assert str(by_index[3]["error"]).startswith(("ReadTimeout", "Timeout", "ConnectionError"))
    assert str(by_index[4]["error"]).startswith('BadLine: "timeout"')
    assert str(by_index[5]["error"]).startswith('BadLine: "allow_redirects"')
    assert by_index[6]["ok"] is True


@given(st.text(max_size=200), st.sampled_from(["GET", "POST"]))
def test_parse_line_raises_only_badline(text: str, method: str) -> None:
    try:
        item = parse_line(text.strip(), method)
    except BadLine:
        return
    assert isinstance(item, (str, Request))


@given(
    st.dictionaries(
        st.sampled_from(["url", "method", "headers", "params", "json", "data", "timeout"]),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner),
            max_leaves=6,
        ),
    )
)
def test_parse_line_json_objects_raise_only_badline(obj: dict[str, object]) -> None:
    try:
        item = parse_line(json.dumps(obj), "GET")
    except BadLine:
        return
    assert isinstance(item, Item) and isinstance(item.url, str)
    timeout = item.options.get("timeout", 1.0)
    assert isinstance(timeout, (float, tuple))


def test_redaction(server: ScriptedServer, tmp_path: Path) -> None:
    secret_url = server.url_for("/s?api_key=SECRET1&page=2").replace(
        "http://", "http://bob:PASSWORD@"
    )
    closed = "http://alice:PASSWORD@127.0.0.1:9/x?token=SECRET2"
    src = tmp_path / "in.txt"
    src.write_text(f"{secret_url}\n{closed}\n")
    out = tmp_path / "out.jsonl"
    proc = fetch(str(src), "-o", str(out), "--retries", "0", "--no-body")
    assert proc.returncode == 1, proc.stderr
    text = out.read_text()
    assert "PASSWORD" not in text and "bob" not in text and "alice" not in text
    assert "SECRET1" in text  # by default query values are kept
    proc = fetch(str(src), "-o", str(out), "--retries", "0", "--no-body", "--redact")
    text = out.read_text()
    assert "PASSWORD" not in text and "SECRET" not in text, text
    recs = {r["index"]: r for r in lines(out)}
    assert str(recs[1]["url"]).endswith("/s?api_key=***&page=***")
    assert str(recs[2]["error"]).startswith("ConnectionError")
    assert "PASSWORD" not in proc.stderr and "SECRET" not in proc.stderr


@given(st.text(alphabet="abc:@/?&=#%", max_size=30))
def test_drop_userinfo_never_keeps_a_password(tail: str) -> None:
    for url in (f"http://user:PW@host/{tail}", f"user:PW@host/{tail}"):
        assert "PW@" not in drop_userinfo(url)
        assert "PW@" not in redact_text(f"failed: {url} (x)", url, query=False)
    url = f"http://user:PW@host/{tail}"
    assert "PW@" not in redact_text(f"failed: {url} (x)", None, query=False)


def test_resume_keeps_valid_records_around_a_corrupt_middle_line(
    server: ScriptedServer, tmp_path: Path
) -> None:
    src = tmp_path / "in.txt"
    src.write_text("".join(f"{server.url_for(f'/{i}')}\n" for i in range(1, 7)))
    out = tmp_path / "out.jsonl"
    good = [
        json.dumps({"index": i, "ok": i != 2, "status": 200 if i != 2 else 500}) for i in (1, 2)
    ]
    later = [json.dumps({"index": i, "ok": True}) for i in (4, 5)]
    out.write_text("\n".join([*good, '{"index": 3, "ok": tr', "garbage", *later]) + "\n")
    proc = fetch(str(src), "-o", str(out), "--resume", "--no-body")
    assert proc.returncode == 1, proc.stderr  # item 2 failed in the earlier run
    assert sorted(r.path for r in server.records) == ["/3", "/6"]
    recs = lines(out)  # every line is a record again
    assert sorted(int(str(r["index"])) for r in recs) == [1, 2, 3, 4, 5, 6]
    assert Path(f"{out}.invalid").read_text() == '{"index": 3, "ok": tr\ngarbage\n'
    assert "2 invalid lines" in proc.stderr
    assert "6 items in OUTPUT: 5 ok, 1 failed (1 HTTP 500)" in proc.stderr
    assert "4 done before, 2 done now" in proc.stderr


def test_resume_cuts_a_torn_last_line(server: ScriptedServer, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text(f"{server.url_for('/1')}\n{server.url_for('/2')}\n")
    out = tmp_path / "out.jsonl"
    out.write_text('{"index": 1, "ok": true}\n{"index": 2, "o')
    proc = fetch(str(src), "-o", str(out), "--resume")
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["index"] for r in lines(out)) == [1, 2]
    assert [r.path for r in server.records] == ["/2"]


def test_a_second_run_on_the_same_output_is_refused(server: ScriptedServer, tmp_path: Path) -> None:
    server.script("/slow", Step(delay=0.1))
    src = tmp_path / "in.txt"
    src.write_text(f"{server.url_for('/slow')}\n" * 20)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "syncfetch", "fetch", str(src), "-o", str(out)]
    first = subprocess.Popen([*cmd, "--concurrency", "1"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while (not out.exists() or not out.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    for extra in ([], ["--resume"]):
        second = fetch(str(src), "-o", str(out), *extra)
        assert second.returncode == 2, second.stderr
        assert "another syncfetch run" in second.stderr
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert sorted(r["index"] for r in lines(out)) == list(range(1, 21))
    same = fetch(str(src), "-o", str(src))
    assert same.returncode == 2 and "INPUT" in same.stderr
    assert src.read_text().count("\n") == 20


def test_scan_output_keeps_a_last_record_missing_only_its_newline(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"index": 1, "ok": true}\n{"index": 2, "ok": false, "error": "X: y"}')
    prev = scan_output(str(out))
    assert prev.indices == {1, 2} and prev.ok == 1 and dict(prev.failures) == {"X": 1}
    assert out.read_text().endswith('"X: y"}\n')


def test_sigint_then_resume_gives_exactly_one_line_per_item(
    server: ScriptedServer, tmp_path: Path
) -> None:
    n = 200
    for i in range(1, n + 1):
        server.script(f"/slow/{i}", Step(delay=0.05))
    src = tmp_path / "in.txt"
    # A line that is not UTF-8 among them: its error line counts as its record.
    src.write_bytes(
        b"".join(
            server.url_for(f"/slow/{i}").encode() + (b"\xff" if i == 150 else b"") + b"\n"
            for i in range(1, n + 1)
        )
    )
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "syncfetch", "fetch", str(src), "-o", str(out)]
    cmd += ["--concurrency", "4", "--rate", "1000/s"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while (
        not out.exists() or len(out.read_text().splitlines()) < 20
    ) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    first = {r["index"] for r in lines(out)}  # no torn line: every line parses
    assert 20 <= len(first) < n
    proc2 = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=60)
    assert proc2.returncode == 1, proc2.stderr  # line 150 is an error
    indices = [r["index"] for r in lines(out)]
    assert sorted(indices) == list(range(1, n + 1))  # all there, none twice
    # The resumed run fetched only what was missing.
    assert server.count() <= n + 4 + 8
    assert f"{n} items in OUTPUT: {n - 1} ok, 1 failed (1 BadLine)" in proc2.stderr
    assert f"{len(first)} done before, {n - len(first)} done now" in proc2.stderr


def test_sigterm_stops_cleanly_with_143(server: ScriptedServer, tmp_path: Path) -> None:
    server.script("/slow", Step(delay=0.2))
    src = tmp_path / "in.txt"
    src.write_text(f"{server.url_for('/slow')}\n" * 100)
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncfetch", "fetch", str(src), "-o", str(out)],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while (not out.exists() or not out.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "--resume" in err and "Traceback" not in err
    lines(out)  # every line parses


def test_progress_line_and_log_records_do_not_mix(server: ScriptedServer, tmp_path: Path) -> None:
    server.script("/bad", Step(status=503))
    src = tmp_path / "in.txt"
    src.write_text(
        "".join(f"{server.url_for(f'/{i}')}\n" for i in range(5))
        + f"{server.url_for('/bad')}\n" * 3
    )
    proc = fetch(str(src), "-o", str(tmp_path / "o.jsonl"), "--progress", "--retries", "1")
    assert proc.returncode == 1
    assert "done," in proc.stderr and "x 429" in proc.stderr and "elapsed" in proc.stderr
    assert "8/8 (100%)" in proc.stderr
    # Each log record starts its own line (after clearing the progress line).
    records = [ln for ln in re.split(r"\n|\r\x1b\[K", proc.stderr) if "syncfetch:" in ln]
    assert records and all(ln.startswith("syncfetch: ") for ln in records), proc.stderr
    assert sum("giving up" in ln for ln in records) == 3
    quiet = fetch(str(src), "-o", str(tmp_path / "o.jsonl"), "--retries", "1")
    assert "done," not in quiet.stderr  # stderr is not a terminal here
    assert "giving up" in quiet.stderr
    silent = fetch(str(src), "-o", str(tmp_path / "o.jsonl"), "--retries", "1", "--quiet")
    assert silent.stderr.strip().splitlines() == [
        "8 items in " + silent.stderr.split("8 items in ")[1].strip()
    ]


def test_progress_from_stdin_has_no_total(server: ScriptedServer, tmp_path: Path) -> None:
    urls = "".join(f"{server.url_for(f'/{i}')}\n" for i in range(5))
    proc = fetch("-", "-o", str(tmp_path / "o.jsonl"), "--progress", stdin=urls)
    assert proc.returncode == 0
    assert "5 done," in proc.stderr and "%" not in proc.stderr and "ETA" not in proc.stderr


def test_recent_rate_forgets_the_start() -> None:
    now = [0.0]
    rate = RecentRate(window=5.0, clock=lambda: now[0])
    done = 0
    for _ in range(100):  # 10 s at 50/s
        now[0] += 0.1
        done += 5
        rate.rate(done)
    assert rate.rate(done) == pytest.approx(50, rel=0.05)
    for _ in range(100):  # then 10 s at 10/s
        now[0] += 0.1
        done += 1
        last = rate.rate(done)
    assert last == pytest.approx(10, rel=0.05)  # not the 30/s average since the start


def test_no_rate_warns_once(server: ScriptedServer, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text(f"{server.url_for('/a')}\n")
    proc = fetch(str(src), "-o", str(tmp_path / "o"))
    assert proc.returncode == 0
    assert proc.stderr.count("not rate limited") == 1
    assert "not rate limited" not in fetch(str(src), "-o", str(tmp_path / "o"), "-q").stderr
    assert (
        "not rate limited" not in fetch(str(src), "-o", str(tmp_path / "o"), "--rate", "9/s").stderr
    )


def test_state_file_in_the_cache_dir(
    server: ScriptedServer, tmp_path: Path, _cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in.txt"
    src.write_text(f"{server.url_for('/a')}\n")
    db = _cache_home / "syncfetch" / "limits.db"
    assert fetch(str(src), "-o", str(tmp_path / "o"), "--rate", "9/s", "--no-state").returncode == 0
    assert not db.exists()
    proc = fetch(str(src), "-o", str(tmp_path / "o"), "--rate", "9/s")
    assert proc.returncode == 0 and proc.stderr.count("\n") == 1, proc.stderr
    assert db.exists()
    # A cache that cannot hold the file: one warning, and the batch still runs.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    proc = fetch(str(src), "-o", str(tmp_path / "o"), "--rate", "9/s")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("cannot use the limit state file") == 1
    db.write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("XDG_CACHE_HOME", str(_cache_home))
    proc = fetch(str(src), "-o", str(tmp_path / "o"), "--rate", "9/s")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("cannot use the limit state file") == 1


@pytest.mark.slow
def test_back_to_back_and_parallel_runs_share_the_window(tmp_path: Path) -> None:
    """A strict provider in its own process: runs one after the other, and two at once."""
    rate, n = 20, 30
    config = ProviderConfig(rate=rate, per_minute=0, fail_rate=0.0, reset_rate=0.0, latency=0.0)
    provider = Provider(config).start()
    try:

        def src(name: str) -> Path:
            path = tmp_path / f"{name}.txt"
            path.write_text("".join(f"{provider.url}{name}/{i}\n" for i in range(n)))
            return path

        args = ["--rate", f"{rate}/s", "--no-body", "--retries", "0", "--concurrency", "8"]
        for name in ("first", "second"):
            proc = fetch(str(src(name)), "-o", str(tmp_path / f"{name}.jsonl"), *args)
            assert proc.returncode == 0, proc.stderr
        cmd = [sys.executable, "-m", "syncfetch", "fetch"]
        both = [
            subprocess.Popen(
                [*cmd, str(src(name)), "-o", str(tmp_path / f"{name}.jsonl"), *args],
                stderr=subprocess.PIPE,
            )
            for name in ("p1", "p2")
        ]
        for proc in both:
            proc.communicate(timeout=60)
            assert proc.returncode == 0
    finally:
        arrivals = provider.stop()
    assert len(arrivals) == 4 * n
    assert [a for a in arrivals if a.status == 429] == []


def _route_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("kind", ["json", "toml"])
def test_limits_file_limits_each_route(server: ScriptedServer, tmp_path: Path, kind: str) -> None:
    origin = server.url.rstrip("/")
    if kind == "json":
        text = json.dumps({"*": "100/s", f"{origin}/slow/": "3/s"})
    else:
        text = f'"*" = "100/s"\n"{origin}/slow/" = ["3/s"]\n'
    routes = _route_file(tmp_path, f"routes.{kind}", text)
    src = tmp_path / "in.txt"
    src.write_text(
        "".join(f"{server.url_for(f'/slow/{n}')}\n" for n in range(9))
        + "".join(f"{server.url_for(f'/fast/{n}')}\n" for n in range(6))
    )
    proc = fetch(str(src), "-o", str(tmp_path / "o"), "--limits", routes, "-q")
    assert proc.returncode == 0, proc.stderr
    slow = sorted(r.t for r in server.records if r.path.startswith("/slow/"))
    fast = sorted(r.t for r in server.records if r.path.startswith("/fast/"))
    assert len(slow) == 9 and len(fast) == 6
    # 3 per second: three rounds, a second apart (the in-process server may stamp late,
    # so windows are checked a little shorter than a second).
    assert slow[-1] - slow[0] >= 1.8
    assert max(sum(1 for u in slow if t - 0.9 < u <= t) for t in slow) <= 3
    assert fast[-1] - fast[0] < 1.0  # the 100/s route does not hold them back


def test_limits_file_errors_name_the_flag(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("http://127.0.0.1:9/a\n")
    out = str(tmp_path / "o")
    missing = str(tmp_path / "nope.json")
    proc = fetch(str(src), "-o", out, "--limits", missing)
    assert proc.returncode == 2 and f"--limits {missing}: cannot read it" in proc.stderr
    bad = _route_file(tmp_path, "bad.json", json.dumps({"api.example.com/x": "1/s"}))
    proc = fetch(str(src), "-o", out, "--limits", bad)
    assert (
        proc.returncode == 2 and "'api.example.com/x'" in proc.stderr and "--limits" in proc.stderr
    )
    for text in ("{not json", "[]", "{}"):
        proc = fetch(str(src), "-o", out, "--limits", _route_file(tmp_path, "x.json", text))
        assert proc.returncode == 2 and "--limits" in proc.stderr, proc.stderr
    proc = fetch(str(src), "-o", out, "--limits", _route_file(tmp_path, "x.toml", "a = ["))
    assert proc.returncode == 2 and "not TOML" in proc.stderr
    good = _route_file(tmp_path, "good.json", json.dumps({"*": "1/s"}))
    proc = fetch(str(src), "-o", out, "--limits", good, "--rate", "1/s")
    assert proc.returncode == 2 and "cannot be used together" in proc.stderr
    proc = fetch(str(src), "-o", out, "--limits", good, "--store", "nosuch://x")
    assert proc.returncode == 2 and "--store" in proc.stderr
