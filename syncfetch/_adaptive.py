"""Adaptive rate: a per-key send rate that follows the server's throttling (CUBIC).

The configured limits are a guess; this finds the rate the server actually
accepts. On a throttle (429, or 503 with ``Retry-After``) the rate drops to
``beta`` times what was being sent; on success it grows back along the CUBIC
curve ``W(t) = scale * (t - K)**3 + W_max`` (RFC 9438), which is flat near the
rate that last caused a throttle and steep far from it, as botocore's adaptive
retry mode does. It never exceeds twice the measured send rate, the ceiling
(the configured limits), nor falls under the floor.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable

from ._exceptions import RateLimitExceeded

# Seconds after a decrease during which further throttles are not acted upon.
_HOLD = 1.0
# Seconds of schedule an idle key may bank: 50 ms of sends may go at once.
_BURST = 0.05


@dataclasses.dataclass(frozen=True)
class Adaptive:
    """Settings of the adaptive rate (``Session(adaptive=Adaptive(...))``, or ``True``).

    :param probe: starting rate (requests/second) when no limit is configured.
    :param floor: the rate never goes below this.
    :param beta: multiplicative decrease on a throttle (botocore: 0.7).
    :param scale: CUBIC's C, how fast the rate grows back. botocore uses 0.4; 0.1
        waits longer on the plateau below the rate that last overflowed the server, and
        measured better against a strict sliding window (``benchmarks/adaptive.py``:
        2.2% 429s and 0.86 goodput, against 3.9% and 0.84 with 0.4).
    """

    probe: float = 10.0
    floor: float = 0.5
    beta: float = 0.7
    scale: float = 0.1

    def __post_init__(self) -> None:
        for name in ("probe", "floor", "scale"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"Adaptive.{name} must be > 0, not {value!r}")
        if not 0 < self.beta < 1:
            raise ValueError(f"Adaptive.beta must be between 0 and 1, not {self.beta!r}")


class _KeyRate:
    """One key's CUBIC state, token pacing and measured send rate."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        # Growth starts from the initial rate as if it had just been a decrease (epoch),
        # so a probe rate climbs until the server first pushes back.
        self.w_max = rate
        self.k = 0.0
        self.epoch = now
        self.last_decrease = -math.inf
        self.next_send = now - _BURST  # a new key starts with its burst credit
        self.measured = rate
        self._window_start = now
        self._window_count = 0

    def measure(self, now: float) -> None:
        # Sends per half-second window, smoothed: the "2 x measured" cap keeps the
        # rate from growing far past what the caller actually offers.
        self._window_count += 1
        elapsed = now - self._window_start
        if elapsed >= 0.5:
            self.measured = 0.8 * (self._window_count / elapsed) + 0.2 * self.measured
            self._window_start, self._window_count = now, 0


class AdaptiveLimiter:
    """Per-key adaptive pacing, in front of the configured limiter."""

    def __init__(
        self,
        settings: Adaptive,
        ceiling: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.ceiling = ceiling
        self._clock = clock
        self._sleep = sleep
        # _lock guards _keys and every _KeyRate in it; never held while sleeping.
        self._lock = threading.Lock()
        self._keys: dict[str, _KeyRate] = {}

    def after_fork(self) -> None:
        self._lock = threading.Lock()

    def rate(self, key: str) -> float | None:
        """The current rate for ``key`` (requests/second), ``None`` before its first send."""
        with self._lock:
            state = self._keys.get(key)
            return None if state is None else state.rate

    def _state(self, key: str, now: float) -> _KeyRate:
        state = self._keys.get(key)
        if state is None:
            start = self.ceiling if self.ceiling is not None else self.settings.probe
            state = self._keys[key] = _KeyRate(start, now)
        return state

    def acquire(self, key: str, deadline: float | None) -> tuple[float, float]:
        """Wait for ``key``'s next send slot in the paced schedule.

        :returns: (seconds waited, the send time to report back with the outcome).
        :raises RateLimitExceeded: at once when the wait would pass ``deadline``.
        """
        start = self._clock()
        with self._lock:
            state = self._state(key, start)
            # Paced evenly, with credit for at most _BURST seconds of idle schedule:
            # a strict server's window is unknown and bursts are what it punishes, but
            # calls arriving a little unevenly should not each wait (or, with
            # max_wait=0, be refused) for a slot in a perfectly even schedule.
            send_at = max(state.next_send, start - _BURST)
            if send_at > start and deadline is not None and send_at > deadline:
                raise RateLimitExceeded(
                    f"adaptive rate for {key} is {state.rate:.1f}/s: next send in "
                    f"{send_at - start:.3f} s",
                    key=key,
                    retry_after=send_at - start,
                )
            state.next_send = send_at + 1.0 / state.rate
            send_at = max(send_at, start)
            state.measure(send_at)
        if send_at > start:
            self._sleep(send_at - start)
        return send_at - start, send_at

    def on_response(self, key: str, sent_at: float, throttled: bool) -> None:
        """Feed back one outcome: decrease on a throttle, grow along the curve otherwise."""
        s = self.settings
        now = self._clock()
        with self._lock:
            state = self._state(key, now)
            if throttled:
                # A server's window takes about a second to forget the burst that
                # overflowed it, so throttles for requests sent before or just after the
                # last decrease describe the old rate; reacting to each would cut the
                # rate once per request in flight (measured: 20/s collapsed to 1/s).
                if sent_at < state.last_decrease + _HOLD:
                    return
                base = min(state.rate, state.measured)
                state.w_max = base
                state.k = (base * (1 - s.beta) / s.scale) ** (1 / 3)  # math.cbrt is 3.11+
                state.rate = base * s.beta
                state.last_decrease = state.epoch = now
            else:
                t = now - state.epoch
                cubic = s.scale * (t - state.k) ** 3 + state.w_max
                state.rate = min(cubic, 2 * state.measured)
            if self.ceiling is not None:
                state.rate = min(state.rate, self.ceiling)
            state.rate = max(state.rate, s.floor)
