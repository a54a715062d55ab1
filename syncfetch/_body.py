"""Reading a response body inside an attempt, within the call's deadline."""

from __future__ import annotations

import contextlib
import time

from requests import Response
from requests.exceptions import (
    ChunkedEncodingError,
    ContentDecodingError,
    RequestException,
)
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import SSLError as RequestsSSLError
from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError, SSLError

from ._exceptions import DeadlineExceeded

_CHUNK = 64 * 1024


def read_body(resp: Response, deadline: float | None, read_timeout: float | None = None) -> None:
    """Load ``resp.content`` now, so a body cut short fails inside the attempt.

    A read timeout applies to each socket read, so a server trickling bytes can hold
    a plain ``resp.content`` for ever. With a deadline, the body is read in pieces
    with the socket timeout set to the read timeout or the time left, whichever is
    shorter, and the read stops at the deadline.

    :raises DeadlineExceeded: when the deadline passes before the body is complete.
    :raises requests.RequestException: as ``resp.content`` would raise it.
    """
    raw = resp.raw
    if deadline is None or resp._content_consumed or not hasattr(raw, "read1"):
        resp.content  # noqa: B018
        return
    chunks: list[bytes] = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(
                    "deadline passed while reading the response body", response=resp
                )
            _set_socket_timeout(raw, left if read_timeout is None else min(left, read_timeout))
            # decode_content: requests' adapter builds the raw response undecoded and
            # decodes while iterating; reading raw ourselves, we must ask for it.
            data = raw.read1(_CHUNK, decode_content=True)
            if not data:
                break
            chunks.append(data)
    except ProtocolError as exc:
        raise ChunkedEncodingError(exc) from exc
    except DecodeError as exc:
        raise ContentDecodingError(exc) from exc
    except ReadTimeoutError as exc:
        if time.monotonic() >= deadline - 0.01:
            raise DeadlineExceeded(
                "deadline passed while reading the response body", response=resp
            ) from exc
        # Same mapping as requests' iter_content, so callers see what they know.
        raise RequestsConnectionError(exc) from exc
    except SSLError as exc:
        raise RequestsSSLError(exc) from exc
    except TimeoutError as exc:
        raise DeadlineExceeded("deadline passed while reading the response body") from exc
    resp._content = b"".join(chunks)
    resp._content_consumed = True
    raw.release_conn()


def _set_socket_timeout(raw: object, seconds: float) -> None:
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.settimeout(max(seconds, 0.001))


def consume_quietly(resp: Response) -> None:
    """Read a response about to be retried, keeping its body if the call ends with it."""
    try:
        resp.content  # noqa: B018
    except (RequestException, OSError):
        resp.close()


def drain_undecoded(resp: Response) -> None:
    """Read what is left of a body that failed to decode, raw, to free the connection.

    What requests does for a redirect response; its ``content`` is then empty.
    """
    with contextlib.suppress(RequestException, OSError, ProtocolError):
        resp.raw.read(decode_content=False)
    resp._content = b""
    resp._content_consumed = True
    resp.close()
