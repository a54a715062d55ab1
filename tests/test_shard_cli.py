"""A crawl split over 4 processes sharing one Redis limit: ``syncfetch fetch --shard K/4
--store redis://...``, then ``syncfetch merge`` (issue 16)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from syncfetch._cli import main
from tests._redis import RedisServer
from tests._server import ScriptedServer

RATE = 20
ITEMS = 90  # about 4.5 s at 20/s


def _fetch(inp: Path, out: Path, shard: str, backend: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "syncfetch",
            "fetch",
            str(inp),
            "-o",
            str(out),
            "--shard",
            shard,
            "--store",
            backend,
            "--rate",
            f"{RATE}/s",
            "--quiet",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_four_shards_share_one_redis_limit_and_merge_into_input_order(
    strict_server: ScriptedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    strict_server.limit([(RATE, 1.0)])
    inp = tmp_path / "urls.txt"
    lines = ["# a crawl", ""] + [strict_server.url_for(f"/item/{i}") for i in range(ITEMS)]
    inp.write_text("\n".join(lines) + "\n")
    parts = [tmp_path / f"part-{k}.jsonl" for k in range(4)]
    with RedisServer() as redis_server:
        procs = [_fetch(inp, parts[k], f"{k}/4", redis_server.url) for k in range(4)]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()
        assert strict_server.count(status=429) == 0
        assert strict_server.max_in_window(1.0) <= RATE
        assert strict_server.count() == ITEMS  # every item once, across the shards
        counts = [len(p.read_text().splitlines()) for p in parts]
        assert sorted(counts) == [22, 22, 23, 23], counts

        # A part cut short (a crash): merge names the missing items...
        kept = parts[2].read_text().splitlines()
        parts[2].write_text("\n".join(kept[:10]) + "\n" + kept[10][:7])  # a torn last line
        out = tmp_path / "out.jsonl"
        args = ["merge", *map(str, parts), "-o", str(out), "--input", str(inp)]
        assert main(args) == 1
        err = capsys.readouterr().err
        lost = len(kept) - 10
        assert f"{ITEMS - lost} items merged" in err and f"{lost} items missing" in err, err
        # ... and --resume on that shard fetches only those.
        before = strict_server.count()
        proc = _fetch(inp, parts[2], "2/4", redis_server.url, "--resume")
        _, err_bytes = proc.communicate(timeout=60)
        assert proc.returncode == 0, err_bytes.decode()
        assert strict_server.count() - before == lost
    assert main(args) == 0
    assert "no item missing" in capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(3, ITEMS + 3))  # input line numbers
    assert [r["url"] for r in records] == lines[2:]
    assert all(r["ok"] for r in records)


def test_shard_and_merge_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = tmp_path / "urls.txt"
    inp.write_text("http://127.0.0.1:9/\n")
    with pytest.raises(SystemExit) as info:
        main(["fetch", str(inp), "-o", str(tmp_path / "o"), "--shard", "4/4"])
    assert info.value.code == 2
    assert "--shard" in capsys.readouterr().err
    part = tmp_path / "p.jsonl"
    part.write_text("")
    assert main(["merge", str(part), "-o", str(part)]) == 2
    assert "is one of the parts" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o")]) == 2
