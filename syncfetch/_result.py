"""``Result``: what ``Session.map`` yields for each input item."""

from __future__ import annotations

import dataclasses

from requests import Request, Response

from ._redact import safe_url


@dataclasses.dataclass(frozen=True)
class Result:
    """The outcome of one item of :meth:`Session.map`: a response or an error, never neither.

    :ivar index: position of the item in the input (0-based).
    :ivar request: the input item, a URL string or a :class:`requests.Request`.
    :ivar response: the final response, or ``None`` when the call raised.
    :ivar error: the exception the call raised, or ``None``.
    :ivar attempts: attempts put on the wire for this item, redirect hops included.
    :ivar elapsed: seconds from the start of the call to its end, waits included.
    """

    index: int
    request: str | Request
    response: Response | None = None
    error: BaseException | None = None
    attempts: int = 0
    elapsed: float = 0.0

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

    def __str__(self) -> str:
        method = getattr(self.request, "method", None) or "GET"
        outcome = (
            f"{type(self.error).__name__}: {self.error}"
            if self.error is not None
            else str(self.response.status_code if self.response is not None else "?")
        )
        return f"#{self.index} {method} {safe_url(self.url)} -> {outcome}"
