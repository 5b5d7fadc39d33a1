"""One retry policy for every CVAT call: exponential backoff, a bounded number of attempts.

Transport-level retries inside urllib3 are switched off (see ``cvat_client.no_transport_retries``)
so the number of attempts and the waiting are decided here only, and a dropped connection in the
middle of a streamed download (which urllib3 cannot retry) is handled like any other drop.
"""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import urllib3
from cvat_sdk.api_client.exceptions import ApiException

from .redact import redact

logger = logging.getLogger(__name__)

T = TypeVar("T")

# 409: CVAT answers a repeated export request with "already in progress" until the first finishes.
RETRY_STATUSES = frozenset({408, 409, 425, 429})


class TransientError(RuntimeError):
    """A failure worth retrying that is not an HTTP error (e.g. a truncated or corrupt download)."""


class RetriesExhausted(RuntimeError):
    """Every attempt failed with a transient error; the message says what, how often and why."""

    def __init__(self, what: str, attempts: int, last: BaseException) -> None:
        super().__init__(f"{what} failed {attempts} times; last error: {describe_error(last)}")
        self.what, self.attempts, self.last = what, attempts, last


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; waits ``backoff``, 2x, 4x ... seconds between them, at most ``max_delay``."""

    attempts: int = 5
    backoff: float = 2.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be >= 1, got {self.attempts}")
        if self.backoff < 0 or self.max_delay < 0:
            raise ValueError("retry delays must be non-negative")

    def delays(self) -> Iterator[float]:
        """The waits before attempts 2..attempts."""
        for attempt in range(self.attempts - 1):
            yield min(self.max_delay, self.backoff * (2**attempt))


def is_transient(error: BaseException) -> bool:
    """Connection problems, 5xx, 408/409/429 and our own TransientError: yes; 4xx auth/not found: no."""
    if isinstance(error, TransientError | urllib3.exceptions.HTTPError | http.client.HTTPException
                  | ConnectionError | TimeoutError):
        return True
    if isinstance(error, ApiException):
        status = error.status or 0
        return status == 0 or status >= 500 or status in RETRY_STATUSES
    return False


def describe_error(error: BaseException) -> str:
    """A one-line, secret-free description (ApiException's own text includes whole responses)."""
    if isinstance(error, ApiException):
        reason = (error.reason or "").strip() or "error"
        return f"HTTP {error.status} {reason}" if error.status else f"request failed ({reason})"
    if isinstance(error, urllib3.exceptions.MaxRetryError):
        return f"cannot reach the server ({type(error.reason).__name__}: {error.reason})"
    if isinstance(error, urllib3.exceptions.ProtocolError | http.client.HTTPException):
        return f"connection dropped ({error})"
    if isinstance(error, TransientError):
        return redact(str(error))
    return redact(f"{type(error).__name__}: {error}")


def with_retries(call: Callable[[], T], what: str, policy: RetryPolicy, *,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()``, retried on transient errors; other errors propagate at once."""
    delays = policy.delays()
    for attempt in range(1, policy.attempts + 1):
        try:
            return call()
        except BaseException as error:
            if not is_transient(error):
                raise
            delay = next(delays, None)
            if delay is None:
                raise RetriesExhausted(what, attempt, error) from error
            logger.warning("%s: %s; retry %d of %d in %.1f s", what, describe_error(error), attempt,
                           policy.attempts - 1, delay)
            sleep(delay)
    raise AssertionError("unreachable")
