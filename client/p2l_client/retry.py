"""Retries: which failures earn another attempt, how long to wait first, and when to stop.

A request is sent again after a connection error or a 429, 502, 503 or 504 answer, waiting
the answer's Retry-After (delta-seconds or an HTTP-date) or else an exponential backoff with
jitter; a POST with an Idempotency-Key also after a 409 with Retry-After (the service is
still running the first attempt, or has not yet seen that its process died). Only requests
that cannot do their work twice are: GET, HEAD, PUT, DELETE, and a POST that carries an
Idempotency-Key (the service answers its retry with what the first attempt created). A
POST without one is sent again only when the connection was never made, so the service
cannot have seen it.
"""

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from p2l_client.errors import P2LConnectionError, P2LError

RETRY_STATUSES = frozenset({429, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# Errors raised before a byte of the request left: safe to repeat any request after them.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one call tries.

    ``retries``: attempts after the first (0: none). ``backoff``: the first wait in seconds,
    doubled at every retry up to ``max_backoff``, each wait drawn between half and all of it
    (jitter: many clients cut off together do not come back together). ``deadline``: the
    seconds one call may spend from its first attempt to its last (None: no limit); a wait
    that would end past it is not waited, the call fails at once. ``max_retry_after``: the
    longest Retry-After obeyed; a longer one is shortened to it.
    """

    retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 30.0
    deadline: float | None = 60.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("retries, backoff and max_backoff must not be negative")

    def wait(self, retry: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        ceiling = min(self.max_backoff, self.backoff * 2**retry)
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a Retry-After header asks for (RFC 9110: delta-seconds or an HTTP-date);
    None when absent or unreadable. A date in the past is 0."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT; a zone-less one is taken as such
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def replayable(method: str, headers: httpx.Headers) -> bool:
    """True when sending the request twice does its work once (see the module's note)."""
    return method.upper() in IDEMPOTENT_METHODS or "idempotency-key" in headers


def unreachable(
    url: str, error: httpx.TransportError, note: str | None = None
) -> P2LConnectionError:
    """The error of a call that got no (whole) answer from the service at ``url``."""
    cause = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    detail = f"cannot reach {url} ({cause})"
    return P2LConnectionError(None, "Service unreachable", f"{detail}; {note}" if note else detail)


class Attempts:
    """The attempts of one call. After each failed one it says how long to wait before the
    next, or raises the error the call ends with (naming the attempts and the last cause).
    """

    def __init__(
        self,
        policy: RetryPolicy,
        url: str,
        replayable: bool,
        clock: Callable[[], float] = time.monotonic,
        keyed: bool = False,
    ) -> None:
        self.policy = policy
        self.url = url
        self.replayable = replayable
        self.keyed = keyed  # carries an Idempotency-Key
        self.clock = clock
        self.started = clock()
        self.made = 0

    def after_error(self, error: httpx.TransportError) -> float:
        """The wait before the next attempt after ``error``; P2LConnectionError if none."""
        self.made += 1
        # A request the service may have received is repeated only if that is harmless.
        may_repeat = self.replayable or isinstance(error, NOT_SENT_ERRORS)
        wait = self._next_wait(None) if may_repeat else None
        if wait is None:
            note = self._tried() if self.made > 1 else None
            if not may_repeat:
                note = "not retried: the service may have received this POST"
            raise unreachable(self.url, error, note) from error
        return wait

    def after_response(self, response: httpx.Response) -> float | None:
        """The wait before the next attempt, or None: ``response`` is the call's answer."""
        self.made += 1
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        # 409 + Retry-After to a keyed request: its first attempt's claim is still held.
        in_progress = response.status_code == 409 and self.keyed and retry_after is not None
        if not (in_progress or (response.status_code in RETRY_STATUSES and self.replayable)):
            return None
        return self._next_wait(retry_after)

    def explain(self, error: P2LError) -> P2LError:
        """``error`` (from the last answer), its detail naming the attempts made if several."""
        if self.made > 1:
            error.detail = f"{error.detail} ({self._tried()})" if error.detail else self._tried()
            status = f"{error.status} " if error.status else ""
            error.args = (f"{status}{error.title}: {error.detail}",)
        return error

    def _next_wait(self, retry_after: float | None) -> float | None:
        retry = self.made - 1
        if retry >= self.policy.retries:
            return None
        wait = self.policy.wait(retry, retry_after)
        deadline = self.policy.deadline
        if deadline is not None and self.clock() - self.started + wait > deadline:
            return None
        return wait

    def _tried(self) -> str:
        elapsed = self.clock() - self.started
        return f"gave up after {self.made} attempts in {elapsed:.1f} s"
