"""Response bodies read against a deadline are decoded as requests decodes them."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
import requests

import syncfetch
from tests._server import ScriptedServer, Step

PAYLOAD = {"items": list(range(50)), "name": "syncfetch"}
RAW = json.dumps(PAYLOAD).encode()


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data)


def _brotli(data: bytes) -> bytes:
    brotli = pytest.importorskip("brotli")
    return bytes(brotli.compress(data))


def _zstd(data: bytes) -> bytes:
    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        zstd = pytest.importorskip("backports.zstd")
    return bytes(zstd.compress(data))


ENCODINGS = {
    "gzip": gzip.compress,
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
}


@pytest.mark.parametrize("deadline", [None, 10.0])
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_encoded_body_is_decoded(
    server: ScriptedServer, encoding: str, deadline: float | None
) -> None:
    body = ENCODINGS[encoding](RAW)
    server.script("/e", Step(headers={"Content-Encoding": encoding}, body=body))
    with syncfetch.Session(retry=syncfetch.RetryPolicy(deadline=deadline)) as s:
        r = s.get(server.url_for("/e"))
    assert r.status_code == 200
    assert r.content == RAW
    assert r.json() == PAYLOAD


def test_chunked_gzip_body_is_decoded_with_a_deadline(server: ScriptedServer) -> None:
    body = gzip.compress(RAW * 200)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 1000]), body[i : i + 1000])
        for i in range(0, len(body), 1000)
    )
    server.script(
        "/c",
        Step(
            headers={"Content-Encoding": "gzip", "Transfer-Encoding": "chunked"},
            body=chunks + b"0\r\n\r\n",
        ),
    )
    with syncfetch.Session(retry=syncfetch.RetryPolicy(deadline=10)) as s:
        r = s.get(server.url_for("/c"))
    assert r.content == RAW * 200


@pytest.mark.parametrize("deadline", [None, 10.0])
def test_corrupt_gzip_raises_content_decoding_error(
    server: ScriptedServer, deadline: float | None
) -> None:
    server.script("/bad", Step(headers={"Content-Encoding": "gzip"}, body=b"\x1f\x8b" + b"x" * 64))
    policy = syncfetch.RetryPolicy(retries=0, deadline=deadline)
    with (
        syncfetch.Session(retry=policy) as s,
        pytest.raises(requests.exceptions.ContentDecodingError),
    ):
        s.get(server.url_for("/bad"))
