"""``syncfetch fetch`` driven as a subprocess against a local server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests._server import ScriptedServer, Step


def fetch(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncfetch", "fetch", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
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
    assert str(by_index[6]["error"]).startswith("MissingSchema")
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


def test_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("http://127.0.0.1:9/\n")
    for args in (
        [str(src), "-o", str(tmp_path / "o"), "--rate", "10/fortnight"],
        [str(tmp_path / "missing.txt"), "-o", str(tmp_path / "o")],
        [str(src), "-o", str(tmp_path / "o"), "-H", "no-colon"],
        [str(src), "-o", str(tmp_path / "o"), "--concurrency", "0"],
    ):
        proc = fetch(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 2


def test_sigint_then_resume_gives_exactly_one_line_per_item(
    server: ScriptedServer, tmp_path: Path
) -> None:
    n = 200
    for i in range(1, n + 1):
        server.script(f"/slow/{i}", Step(delay=0.05))
    src = tmp_path / "in.txt"
    src.write_text("".join(f"{server.url_for(f'/slow/{i}')}\n" for i in range(1, n + 1)))
    out = tmp_path / "out.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "syncfetch",
        "fetch",
        str(src),
        "-o",
        str(out),
        "--concurrency",
        "4",
    ]
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
    first = {r["index"] for r in lines(out)}
    assert 20 <= len(first) < n
    proc2 = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=60)
    assert proc2.returncode == 0, proc2.stderr
    indices = [r["index"] for r in lines(out)]
    assert sorted(indices) == list(range(1, n + 1))  # all there, none twice
    # The resumed run fetched only what was missing.
    assert server.count() <= n + 4 + 8


def test_resume_cuts_a_torn_last_line(server: ScriptedServer, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text(f"{server.url_for('/1')}\n{server.url_for('/2')}\n")
    out = tmp_path / "out.jsonl"
    out.write_text('{"index": 1, "ok": true}\n{"index": 2, "o')
    proc = fetch(str(src), "-o", str(out), "--resume")
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["index"] for r in lines(out)) == [1, 2]
    assert [r.path for r in server.records] == ["/2"]


def test_progress_line_when_asked(server: ScriptedServer, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("".join(f"{server.url_for(f'/{i}')}\n" for i in range(5)))
    proc = fetch(str(src), "-o", str(tmp_path / "o.jsonl"), "--progress")
    assert proc.returncode == 0
    assert "done," in proc.stderr and "x 429" in proc.stderr
    quiet = fetch(str(src), "-o", str(tmp_path / "o.jsonl"))
    assert "done," not in quiet.stderr  # stderr is not a terminal here
