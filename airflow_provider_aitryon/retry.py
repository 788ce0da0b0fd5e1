"""One retry policy for every DashScope call, sync or async (tenacity drives both).

Exponential backoff with full jitter spreads a burst of throttled workers apart instead of letting
them retry in lockstep; a Retry-After from the service is a floor, never shortened. Attempts and
total time are both bounded so a dead endpoint fails the task instead of holding a worker slot.
"""

from __future__ import annotations

import random
from typing import Any

from tenacity import (
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
)

from airflow_provider_aitryon.connection import ConnectionSettings
from airflow_provider_aitryon.errors import DashScopeAPIError


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Full-jitter delay before retry number `attempt` (1-based), honouring Retry-After as a floor."""
    # The exponent is bounded so a huge attempt number cannot overflow before the cap applies.
    ceiling = min(cap, base * (2.0 ** min(max(0, attempt - 1), 64)))
    delay = (rng or random).uniform(0.0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def is_retryable(exc: BaseException) -> bool:
    # An unresolved lost submit is never resent here: the caller looks it up again first.
    return isinstance(exc, DashScopeAPIError) and exc.retryable and not exc.unresolved


def retry_policy(settings: ConnectionSettings, logger: Any) -> dict[str, Any]:
    """Keyword arguments for tenacity.Retrying and tenacity.AsyncRetrying alike."""

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return backoff_delay(
            state.attempt_number,
            base=settings.backoff_base,
            cap=settings.backoff_max,
            retry_after=getattr(exc, "retry_after", None),
        )

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.warning(
            "Attempt %d of %d failed, retrying in %.2fs: %s",
            state.attempt_number,
            settings.max_attempts,
            state.upcoming_sleep,
            exc,
        )

    return {
        "stop": stop_after_attempt(settings.max_attempts) | stop_before_delay(settings.max_retry_seconds),
        "wait": wait,
        "retry": retry_if_exception(is_retryable),
        "before_sleep": before_sleep,
        "reraise": True,
    }
