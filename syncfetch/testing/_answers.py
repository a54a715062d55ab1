"""The fake provider's answers: each provider's status, headers and body for a decision."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from typing import Any

from ._meters import Window


@dataclasses.dataclass
class _Decision:
    status: int
    wait: float
    cost: int
    refused_by: Window | None
    state: list[tuple[Window, float, float]]  # (window, remaining, reset_in) that apply
    replayed: bool = False
    resource: int = 0
    reply: tuple[int, dict[str, str], Any] = (0, {}, None)  # status, headers, body as sent


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it: ``12ms``, ``1s``, ``6m0s``, ``1h2m3.5s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{round(secs, 3):g}s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    return f"{int(minutes)}m{text}" if minutes else text


def _interval(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{max(1, round(seconds))}s"


def _first(
    d: _Decision, unit: str, routed: bool | None = None
) -> tuple[Window, float, float] | None:
    for state in d.state:
        window = state[0]
        if window.unit == unit and (routed is None or (window.route is not None) == routed):
            return state
    return None


def answer(dialect: str, d: _Decision, retry_after: bool) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON body for a decision, in ``dialect``."""
    status, headers = d.status, {}
    seconds = max(1, math.ceil(d.wait))
    body: Any = {"ok": True, "id": d.resource} if status == 200 else {"error": "unavailable"}
    if status in (429, 418):
        body = {"error": "rate limited", "retry_after": seconds}
        if retry_after:
            headers["Retry-After"] = str(seconds)
    if status == 503 and retry_after and d.wait:
        headers["Retry-After"] = str(seconds)
    now = time.time()
    if dialect == "ietf":
        state = _first(d, "requests") or _first(d, "cost")
        if state is not None:
            w, left, reset = state
            headers["RateLimit-Policy"] = f'"default";q={w.count};w={math.ceil(w.seconds)}'
            headers["RateLimit"] = f'"default";r={int(left)};t={math.ceil(reset)}'
    elif dialect == "github":
        primary = _first(d, "requests", routed=False)
        if primary is not None:
            w, left, reset = primary
            headers.update(
                {
                    "X-RateLimit-Limit": str(w.count),
                    "X-RateLimit-Remaining": str(int(left)),
                    "X-RateLimit-Used": str(w.count - int(left)),
                    "X-RateLimit-Reset": str(math.ceil(now + reset)),
                    "X-RateLimit-Resource": "core",
                }
            )
        if status == 429:
            status = 403  # GitHub throttles with 403 (primary: remaining 0; secondary: Retry-After)
            secondary = d.refused_by is not None and d.refused_by.route is not None
            headers.pop("Retry-After", None)
            if secondary:
                headers["Retry-After"] = str(seconds)
            kind = "a secondary rate limit" if secondary else "API rate limit exceeded"
            body = {"message": f"You have exceeded {kind}", "documentation_url": "fake"}
    elif dialect == "stripe":
        headers["Request-Id"] = f"req_{d.resource or 0}"
        if d.replayed:
            headers["Idempotent-Replayed"] = "true"
        if status == 200:
            body = {"id": f"ch_{d.resource}", "object": "charge"}
        if status == 429:
            headers.pop("Retry-After", None)  # Stripe sends none
            body = {"error": {"type": "rate_limit_error", "code": "rate_limit"}}
    elif dialect == "shopify":
        state = _first(d, "cost")
        if state is not None:
            w, left, _ = state
            cost = {
                "requestedQueryCost": d.cost,
                "actualQueryCost": d.cost if status == 200 else None,
                "throttleStatus": {
                    "maximumAvailable": float(w.count),
                    "currentlyAvailable": round(left, 1),
                    "restoreRate": round(w.count / w.seconds, 3),
                },
            }
            body = {"data": {"ok": True, "id": d.resource}, "extensions": {"cost": cost}}
            if status == 429:
                # GraphQL answers a throttle with 200 and an error in the body.
                status = 200
                headers.pop("Retry-After", None)
                body = {
                    "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                    "extensions": {"cost": cost},
                }
    elif dialect == "openai":
        for unit, kind in (("requests", "requests"), ("cost", "tokens")):
            state = _first(d, unit)
            if state is not None:
                w, left, reset = state
                headers[f"x-ratelimit-limit-{kind}"] = str(w.count)
                headers[f"x-ratelimit-remaining-{kind}"] = str(int(left))
                headers[f"x-ratelimit-reset-{kind}"] = go_duration(reset)
        if status == 429:
            headers.pop("Retry-After", None)
            kind = (
                "tokens" if d.refused_by is not None and d.refused_by.unit == "cost" else "requests"
            )
            body = {
                "error": {
                    "message": f"Rate limit reached for {kind}",
                    "type": kind,
                    "code": "rate_limit_exceeded",
                }
            }
    elif dialect == "discord":
        state = _first(d, "requests", routed=True) or _first(d, "requests")
        if state is not None:
            w, left, reset = state
            route = w.route or "global"
            headers.update(
                {
                    "X-RateLimit-Limit": str(w.count),
                    "X-RateLimit-Remaining": str(int(left)),
                    "X-RateLimit-Reset": f"{now + reset:.3f}",
                    "X-RateLimit-Reset-After": f"{reset:.3f}",
                    "X-RateLimit-Bucket": hashlib.sha1(route.encode()).hexdigest()[:16],
                }
            )
        if status == 429:
            is_global = d.refused_by is not None and d.refused_by.route is None
            headers["X-RateLimit-Scope"] = "global" if is_global else "user"
            if is_global:
                headers["X-RateLimit-Global"] = "true"
            body = {
                "message": "You are being rate limited.",
                "retry_after": round(d.wait, 3),
                "global": is_global,
            }
    elif dialect == "salesforce":
        state = _first(d, "requests", routed=False)
        if state is not None:
            w, left, _ = state
            headers["Sforce-Limit-Info"] = f"api-usage={w.count - int(left)}/{w.count}"
        if status == 429:
            status = 403
            headers.pop("Retry-After", None)
            body = [
                {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
            ]
    elif dialect == "binance":
        for w, left, _ in d.state:
            if w.unit == "cost":
                used = w.count - int(left)
                headers[f"X-MBX-USED-WEIGHT-{_interval(w.seconds).upper()}"] = str(used)
        if status in (429, 418):
            code = -1003
            body = {
                "code": code,
                "msg": "Too much request weight used; "
                + ("IP banned" if status == 418 else "please use the websocket"),
            }
    return status, headers, body
