"""Limits per route: parsing a ``limits`` mapping and finding the routes a request pays.

A pattern is ``[METHOD ]scheme://host[:port][/path]``. A request pays its origin's route
(the pattern without method or path; ``"*"`` stands in for any origin without one) and
every more specific route that matches it: path prefixes of whole segments, ``{name}``
matching one segment with one bucket per value, and an optional method.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, TypeAlias

from pyrate_limiter import Rate
from requests import PreparedRequest, Response

from ._options import UNSET, check_cost, check_max_wait
from ._pipeline import _origin_key, bucket_key
from ._rates import LimitsArg, normalize_limits
from ._retry import RetryPolicy
from ._stores.base import Charge

log = logging.getLogger("syncfetch")

#: Methods a pattern may name (as requests sends them, upper case).
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
#: Route pattern standing for every origin that has no route of its own.
ANY_ORIGIN = "*"

#: A route's cost: ``None`` (the call's cost, 1 unless the call passes ``cost=``), a
#: whole number, costs by method (``{"GET": 1, "*": 5}``), or a function of the request.
CostArg: TypeAlias = "int | Mapping[str, int] | Callable[[PreparedRequest], int] | None"
#: Seconds, a ``(connect, read)`` pair (either may be None), or None for no timeout.
TimeoutArg: TypeAlias = "float | tuple[float | None, float | None] | None"
#: What a table may give (JSON, TOML): :class:`Route`'s arguments.
_TABLE_KEYS = frozenset({"limits", "cost", "free", "retry", "timeout", "max_wait"})

_PATTERN = re.compile(
    r"(?:(?P<method>[A-Za-z]+) +)?(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]+)(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>/[^?#\s]*)?",
    re.ASCII,
)
_NAME = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", re.ASCII)
_ORIGIN = re.compile(r"[^:/?#]+://[^/?#]*")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclasses.dataclass(frozen=True)
class Route:
    """Limits for one route of a ``limits`` mapping, with what each call there costs.

    ``Session(limits={"https://api.github.com/graphql": Route("900/minute", cost={"GET": 1,
    "*": 5})})``. A plain rate in the mapping is ``Route(rate)``.

    :param limits: ``"30/minute"``, a :class:`pyrate_limiter.Rate`, or a list of them
        (the forms ``Session(limits=...)`` takes); ``None`` for a route that only groups
        (no limit).
    :param cost: tokens a call takes from this route's bucket: ``None`` for the call's
        own cost (``session.get(url, cost=5)``; 1 by default), a whole number, costs by
        method with ``"*"`` for the other methods (a method not listed, without ``"*"``,
        pays the call's cost), or a function of the :class:`requests.PreparedRequest`
        returning a whole number.
    :param settle: a function of the response returning what the call truly cost
        (Shopify's ``actualQueryCost``, OpenAI's ``usage``): the charge is corrected to
        it, refunding or charging the difference, so the next calls see the true
        balance. Called on every attempt's response once its body is read; for a
        ``stream=True`` response, once: after ``content`` (``text``, ``json()``) has read
        the body, so the function sees it; or when the body has been read to the end
        otherwise (``iter_content``) or the response closed, when it sees headers only.
        A streamed response dropped unread and unclosed is not settled. A function that
        raises or returns no whole number >= 0 leaves the charge as it was (logged, never
        raised); a cost above the route's largest limit counts as that limit (it fills
        every window alike). With ``cost=0`` up front, a call is sent while its windows
        are not over their limits, and charged what ``settle`` says.
    :param free: statuses the provider does not count (a 304 to a conditional request,
        for GitHub): an attempt answered with one is refunded on this route.
    :param retry: the retries of calls to this route, in the forms ``Session(retry=...)``
        takes (a :class:`RetryPolicy`, a number of retries, ``None`` for none).
    :param timeout: the per-attempt timeout of calls to this route, as
        ``Session(timeout=...)`` takes it (seconds, a ``(connect, read)`` pair, ``None``
        for none).
    :param max_wait: how long calls to this route wait for a slot and a token, as
        ``Session(max_wait=...)`` takes it (``None``: as long as needed).

        Each of ``retry``, ``timeout`` and ``max_wait`` left :data:`UNSET` is not set by
        the route. A call's own argument wins, then the most specific route the request
        pays that sets it, then the session's. Each redirect hop runs under the routes of
        its own URL (a ``retry`` deadline starts with the call's first hop).
    :raises ValueError: for an invalid rate, cost, status, retry, timeout or max_wait,
        naming it.
    """

    limits: LimitsArg
    cost: CostArg = None
    settle: Callable[[Response], int] | None = None
    free: Collection[int] = frozenset()
    retry: RetryPolicy | int | None = UNSET
    timeout: TimeoutArg = UNSET
    max_wait: float | None = UNSET
    #: The binding rates, shortest interval first.
    rates: tuple[Rate, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rates", tuple(normalize_limits(self.limits)))
        if self.settle is not None and not callable(self.settle):
            raise ValueError(f"settle must be a function of the response, not {self.settle!r}")
        free = self.free
        if isinstance(free, (str, bytes)) or not isinstance(free, Iterable):
            raise ValueError(f"free must be a collection of statuses, not {free!r}")
        statuses = frozenset(free)
        for status in statuses:
            if not (_is_count(status) and 100 <= status <= 599):
                raise ValueError(f"free statuses must be HTTP statuses, not {status!r}")
        object.__setattr__(self, "free", statuses)
        if self.retry is not UNSET:
            object.__setattr__(self, "retry", RetryPolicy.coerce(self.retry))
        if self.timeout is not UNSET:
            from ._session import _check_timeout  # here: _session imports this module

            _check_timeout(self.timeout)
        if self.max_wait is not UNSET:
            object.__setattr__(self, "max_wait", check_max_wait(self.max_wait))
        cost = self.cost
        if cost is None or callable(cost) or _is_count(cost):
            return
        if not isinstance(cost, Mapping):
            raise ValueError(
                "cost must be None, a whole number >= 0, a mapping of methods to costs or "
                f"a function of the request, not {cost!r}"
            )
        for method, value in cost.items():
            if method != "*" and (not isinstance(method, str) or method.upper() not in METHODS):
                raise ValueError(f"unknown method {method!r} in cost {dict(cost)!r}")
            check_cost(value, f"the cost of {method!r}")

    def cost_of(self, request: PreparedRequest, call_cost: int) -> int:
        """What ``request`` costs on this route, the call's own cost being ``call_cost``.

        A cost function that raises or returns no whole number >= 0 is logged, and the
        call's own cost is charged (a call raises only ``requests`` exceptions).
        """
        cost = self.cost
        if cost is None:
            return call_cost
        if isinstance(cost, int):
            return cost
        if isinstance(cost, Mapping):
            method = (request.method or "GET").upper()
            for name, value in cost.items():
                if name.upper() == method:
                    return int(value)
            return int(cost["*"]) if "*" in cost else call_cost
        try:
            return check_cost(cost(request), f"the cost function {cost!r} returned a value that")
        except Exception as exc:  # a user function: a call raises only RequestExceptions
            log.warning("syncfetch: cost %r failed (%r); the call's cost is charged", cost, exc)
            return call_cost


@dataclasses.dataclass(frozen=True)
class _Specific:
    """A route more specific than its origin's: a method, a path prefix, or both."""

    pattern: str
    method: str | None
    segments: tuple[str, ...]  # literal segments, and "{name}" ones
    route: Route
    windows: tuple[tuple[int, int], ...]


class _Node:
    """A path segment in an origin's tree of routes."""

    __slots__ = ("children", "entries", "params")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}  # literal segment -> node
        self.params: dict[str, _Node] = {}  # "{name}" -> node
        self.entries: list[_Specific] = []  # routes ending here


def _windows(route: Route) -> tuple[tuple[int, int], ...]:
    return tuple((r.limit, r.interval) for r in route.rates)


def parse_pattern(pattern: str) -> tuple[str | None, str, tuple[str, ...]]:
    """``(method, origin key, path segments)`` of a pattern (``"{name}"`` segments kept).

    :raises ValueError: naming the pattern: no scheme, a bad port, a query, an unknown
        method, an empty or dot segment, a ``{name}`` not a whole segment or used twice.
    """
    if not isinstance(pattern, str):
        raise ValueError(f"a route pattern must be a string, not {pattern!r}")
    match = _PATTERN.fullmatch(pattern.strip())
    if match is None:
        raise ValueError(
            f"invalid route pattern {pattern!r}: expected '[METHOD ]scheme://host[:port][/path]' "
            "(no query or fragment)"
        )
    method = match.group("method")
    if method is not None:
        method = method.upper()
        if method not in METHODS:
            raise ValueError(f"invalid route pattern {pattern!r}: unknown method {method!r}")
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"invalid route pattern {pattern!r}: port {port} out of range")
    origin = _origin_key(
        f"{match.group('scheme')}://{match.group('host')}" + (f":{port}" if port else "")
    )
    path = match.group("path") or "/"
    parts = path[1:].split("/")
    if parts and parts[-1] == "":
        parts.pop()  # "/search/" is the prefix "/search"
    segments: list[str] = []
    names: set[str] = set()
    for part in parts:
        if not part:
            raise ValueError(f"invalid route pattern {pattern!r}: empty path segment")
        if part in (".", ".."):  # requests removes them from URLs: they never match
            raise ValueError(f"invalid route pattern {pattern!r}: {part!r} segment")
        if "{" in part or "}" in part:
            name = _NAME.fullmatch(part)
            if name is None:
                raise ValueError(
                    f"invalid route pattern {pattern!r}: {part!r} must be one {{name}} "
                    "making up a whole segment"
                )
            if name.group(1) in names:
                raise ValueError(f"invalid route pattern {pattern!r}: {part} is used twice")
            names.add(name.group(1))
        segments.append(part)
    return method, origin, tuple(segments)


def corrected(route: Route, response: Response, charged: int, read: bool) -> int:
    """What ``response``'s attempt truly cost on ``route`` (``charged`` when unknown).

    :param read: whether the body was read, or a streamed response consumed or closed
        (``settle`` is called only then).
    """
    if response.status_code in route.free:
        return 0
    if route.settle is None or not read:
        return charged
    try:
        cost = route.settle(response)
    except Exception as exc:  # a user function: never breaks the call
        log.warning("syncfetch: settle %r raised %r; the charge stands", route.settle, exc)
        return charged
    if not _is_count(cost):
        log.warning("syncfetch: settle %r returned %r; the charge stands", route.settle, cost)
        return charged
    # More than the largest limit fills every window as that does: capped there, so a
    # server's huge figure (2**64) stays storable (SQLite's integers are 64-bit).
    most = max((rate.limit for rate in route.rates), default=int(cost))
    return min(int(cost), most)


def _route_of(value: Any) -> Route:
    """A mapping's value as a :class:`Route`: a Route, rates, or (JSON, TOML) a table of
    Route's arguments, ``{"limits": "900/minute", "cost": {"GET": 1, "*": 5}}``."""
    if isinstance(value, Route):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - _TABLE_KEYS
        if unknown or "limits" not in value:
            raise ValueError(
                "a route given as a table takes 'limits' and optionally 'cost', 'free', "
                f"'retry', 'timeout' and 'max_wait', not {dict(value)!r}"
            )
        table = dict(value)
        # As a settings file gives a Session's: a RetryPolicy as a table of its fields,
        # a (connect, read) timeout as a two-item list.
        retry = table.get("retry", UNSET)
        if isinstance(retry, Mapping):
            try:
                retry = RetryPolicy(**retry)
            except TypeError as exc:
                raise ValueError(f"'retry' is not a valid RetryPolicy: {exc}") from None
        timeout = table.get("timeout", UNSET)
        if isinstance(timeout, list):
            timeout = tuple(timeout)
        return Route(
            table["limits"],
            cost=table.get("cost"),
            free=table.get("free", ()),
            retry=retry,
            timeout=timeout,
            max_wait=table.get("max_wait", UNSET),
        )
    return Route(value)


class RouteTable:
    """The routes of a ``limits`` mapping, and which of them each request pays.

    :param mapping: pattern -> limits (a rate, a list of rates, a :class:`Route`, or a
        table of its arguments).
    :raises ValueError: for a bad pattern or limit (naming the pattern), or two patterns
        naming the same route.
    """

    def __init__(self, mapping: Mapping[str, Any]) -> None:
        self.mapping = dict(mapping)
        self.any_origin: Route | None = None
        self._any_windows: tuple[tuple[int, int], ...] = ()
        self.origins: dict[str, tuple[Route, tuple[tuple[int, int], ...]]] = {}
        # origin -> a tree of its routes' path segments.
        self.specific: dict[str, _Node] = {}
        seen: dict[tuple[str | None, str, tuple[str, ...]], str] = {}
        for pattern, limits in self.mapping.items():
            try:
                route = _route_of(limits)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"route {pattern!r}: {exc}") from None
            if pattern == ANY_ORIGIN:
                self.any_origin, self._any_windows = route, _windows(route)
                continue
            method, origin, segments = parse_pattern(pattern)
            # Two patterns differing only in their {names} are one route.
            shape = (method, origin, tuple("{}" if s[0] == "{" else s for s in segments))
            same = seen.get(shape)
            if same is not None:
                raise ValueError(f"route patterns {same!r} and {pattern!r} name the same route")
            seen[shape] = pattern
            if method is None and not segments:
                self.origins[origin] = (route, _windows(route))
            else:
                node = self.specific.setdefault(origin, _Node())
                for part in segments:
                    if part[0] == "{":
                        node = node.params.setdefault(part, _Node())
                    else:
                        node = node.children.setdefault(part, _Node())
                node.entries.append(_Specific(pattern, method, segments, route, _windows(route)))

    @property
    def rates(self) -> list[Rate]:
        """Every route's rates (for a ceiling on adaptive rates: none is taken)."""
        return []

    def __repr__(self) -> str:
        return f"RouteTable({self.mapping!r})"

    def match(
        self, request: PreparedRequest, call_cost: int, per_host: bool = True
    ) -> list[Charge]:
        """The charges ``request`` pays, its origin's route first, its most specific last.

        :param call_cost: the call's own cost (routes without a cost of their own charge it).
        :param per_host: whether ``"*"`` keeps one bucket per origin (else one in all).
        :raises ValueError: when a route's cost function returns no whole number >= 0.
        """
        url = request.url or ""
        found = _ORIGIN.match(url)
        origin = _origin_key(found.group()) if found else ""
        charges: list[Charge] = []
        own = self.origins.get(origin)
        if own is not None:
            route, windows = own
            charges.append(Charge(origin, windows, route.cost_of(request, call_cost), route))
        elif self.any_origin is not None:
            key = bucket_key(url, per_host)
            charges.append(
                Charge(
                    key,
                    self._any_windows,
                    self.any_origin.cost_of(request, call_cost),
                    self.any_origin,
                )
            )
        tree = self.specific.get(origin)
        if tree is None:
            return charges
        rest = url[found.end() :] if found else ""
        cut = len(rest)
        for mark in "?#":
            at = rest.find(mark)
            if at != -1 and at < cut:
                cut = at
        parts = rest[1:cut].split("/") if cut else []
        if parts and parts[-1] == "":
            parts.pop()
        method = (request.method or "GET").upper()
        found_routes: list[tuple[int, bool, str, _Specific]] = []
        # Walk the tree along the path: (node, depth, the key's path so far).
        stack = [(tree, 0, "")]
        while stack:
            node, depth, path = stack.pop()
            for entry in node.entries:
                if entry.method is None or entry.method == method:
                    found_routes.append((depth, entry.method is not None, path, entry))
            if depth == len(parts):
                continue
            got = parts[depth]
            child = node.children.get(got)
            if child is not None:
                stack.append((child, depth + 1, f"{path}/{got}"))
            if got:
                for name, param in node.params.items():
                    # One bucket per value; named, so no literal segment shares its key.
                    stack.append((param, depth + 1, f"{path}/{name}={got}"))
        # Least specific first: the last route a request pays is its most specific.
        found_routes.sort(key=lambda f: (f[0], f[1]))
        for _, _, where, entry in found_routes:
            key = f"{entry.method} {origin}{where}" if entry.method else origin + where
            cost = entry.route.cost_of(request, call_cost)
            charges.append(Charge(key, entry.windows, cost, entry.route))
        return charges
