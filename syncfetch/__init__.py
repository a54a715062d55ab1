"""syncfetch: requests that never exceed a rate limit, from any number of threads."""

from ._adaptive import Adaptive
from ._budget import RetryBudget
from ._events import Event
from ._exceptions import (
    BackendUnavailable,
    DeadlineExceeded,
    RateLimitExceeded,
    SessionClosed,
)
from ._options import UNSET
from ._rates import parse_rate
from ._result import Result
from ._retry import RetryPolicy
from ._routes import Route
from ._session import Session
from ._stats import KeyStats, Stats
from ._timing import is_testing, set_testing

__version__ = "0.1.0"

__all__ = [
    "Adaptive",
    "BackendUnavailable",
    "DeadlineExceeded",
    "Event",
    "KeyStats",
    "RateLimitExceeded",
    "Result",
    "RetryBudget",
    "RetryPolicy",
    "Route",
    "Session",
    "SessionClosed",
    "Stats",
    "UNSET",
    "__version__",
    "is_testing",
    "parse_rate",
    "set_testing",
]
