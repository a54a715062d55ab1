"""What one call may set for itself: ``session.get(url, retry=0, max_wait=5)``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from ._retry import RetryPolicy


class _Unset:
    """Type of :data:`UNSET`."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "syncfetch.UNSET"

    def __reduce__(self) -> str:
        return "UNSET"


#: "Argument not passed": lets ``timeout=None`` (no timeout) differ from no timeout given.
UNSET: Any = _Unset()


def check_max_wait(value: Any) -> float | None:
    """``max_wait`` as stored: ``None`` or finite seconds >= 0.

    :raises ValueError: naming the value.
    """
    if value is not None and (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(
            f"max_wait must be None (wait as long as needed) or finite seconds >= 0, not {value!r}"
        )
    return None if value is None else float(value)


def is_count(value: Any) -> bool:
    """A whole number (an int, not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_cost(value: Any, what: str = "cost") -> int:
    """A cost as given by a call or a route's function: a whole number >= 0.

    :raises ValueError: naming the value otherwise.
    """
    if not is_count(value) or value < 0:
        raise ValueError(f"{what} must be a whole number >= 0, not {value!r}")
    return int(value)


def check_priority(value: Any) -> int:
    """A call's priority: a whole number from -10**6 to 10**6.

    :raises ValueError: naming the value otherwise.
    """
    if not is_count(value) or not -(10**6) <= value <= 10**6:
        raise ValueError(f"priority must be a whole number (-10**6 to 10**6), not {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class CallOptions:
    """The settings one call runs under: the session's, with the call's own overrides.

    Resolved once, when the call starts; its redirect hops and retries keep them.
    A field added here becomes a per-call keyword once it has a check in
    :data:`OVERRIDES`.

    :ivar retry: the call's retries, backoff, retried statuses and deadline. The retry
        budget and the handling of server-requested pauses stay the session's.
    :ivar max_wait: longest each attempt waits for a slot and a token.
    :ivar cost: tokens each attempt takes (routes with a cost of their own charge that).
    :ivar priority: higher takes a free token ahead of waiting lower ones.
    :ivar given: the options the call set itself (``"timeout"`` included): a route's
        own ``retry``, ``timeout`` or ``max_wait`` gives way to them.
    """

    retry: RetryPolicy
    max_wait: float | None
    cost: int = 1
    priority: int = 0
    given: frozenset[str] = frozenset()


#: The keywords a call may pass for itself, each with the check that turns it into
#: its field of :class:`CallOptions` (raising ValueError/TypeError naming the value).
OVERRIDES: dict[str, Callable[[Any], Any]] = {
    "retry": RetryPolicy.coerce,
    "max_wait": check_max_wait,
    "cost": check_cost,
    "priority": check_priority,
}


def check_overrides(given: Mapping[str, Any]) -> dict[str, Any]:
    """The per-call options among ``given``, checked (other keys are ignored).

    :raises ValueError: or TypeError, naming the option and the bad value.
    """
    checked = {}
    for name, check in OVERRIDES.items():
        if name in given:
            try:
                checked[name] = check(given[name])
            except (TypeError, ValueError) as exc:
                message = str(exc) if name in str(exc) else f"{name}: {exc}"
                raise type(exc)(f"per-call {message}") from None
    return checked


def resolve(
    defaults: CallOptions, overrides: Mapping[str, Any] | None, timeout: bool = False
) -> CallOptions:
    """``defaults`` with the checked ``overrides`` applied.

    :param timeout: whether the call passed its own ``timeout`` (carried in the request's
        keywords, not here: noted in ``given``).
    """
    if not overrides and not timeout:
        return defaults
    given = frozenset(overrides or ()) | ({"timeout"} if timeout else frozenset())
    return dataclasses.replace(defaults, **(overrides or {}), given=given)
