"""``Result``: what ``Session.map`` yields for each input item."""

from __future__ import annotations

import dataclasses

from requests import Request, Response

from ._redact import safe_text, safe_url


@dataclasses.dataclass(frozen=True, repr=False)
class Result:
    """The outcome of one item of :meth:`Session.map`: a response or an error, never neither.

    ``str()`` and ``repr()`` never show the URL's credentials or query-string values,
    nor those of URLs inside the error's message: a result can be logged as it is.

    :ivar index: position of the item in the input (0-based).
    :ivar request: the input item, a URL string or a :class:`requests.Request`.
    :ivar response: the final response, or ``None`` when the call raised.
    :ivar error: the exception the call raised, or ``None``.
    :ivar attempts: attempts put on the wire for this item, redirect hops included.
    :ivar elapsed: seconds from the start of the call to its end, waits included.
    :ivar method: the method the item was sent with (``None`` when unknown).
    """

    index: int
    request: str | Request
    response: Response | None = None
    error: BaseException | None = None
    attempts: int = 0
    elapsed: float = 0.0
    method: str | None = None

    @property
    def ok(self) -> bool:
        """No error, and a response with a status below 400."""
        return self.error is None and self.response is not None and self.response.ok

    @property
    def url(self) -> str:
        """The item's URL as given (before redirects)."""
        if isinstance(self.request, str):
            return self.request
        return str(getattr(self.request, "url", self.request))

    def _method(self) -> str:
        method = self.method or getattr(self.request, "method", None) or "GET"
        return str(method).upper()

    def __str__(self) -> str:
        """``#3 POST https://host/path?key=*** -> 503`` (or ``-> ErrorType: message``)."""
        outcome = (
            f"{type(self.error).__name__}: {safe_text(str(self.error))}"
            if self.error is not None
            else str(self.response.status_code if self.response is not None else "?")
        )
        return f"#{self.index} {self._method()} {safe_url(self.url)} -> {outcome}"

    def __repr__(self) -> str:
        """Index, method, redacted URL, status or error type, attempts."""
        if self.error is not None:
            outcome = f"error={type(self.error).__name__}"
        else:
            outcome = f"status={self.response.status_code if self.response is not None else None}"
        return (
            f"Result(index={self.index}, method={self._method()!r}, "
            f"url={safe_url(self.url)!r}, {outcome}, attempts={self.attempts})"
        )
