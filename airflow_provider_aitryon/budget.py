"""Per-account request budgets shared by every batch trigger of a connection in one triggerer.

DashScope allows an account 10 submissions/s, 20 task queries/s and 5 running tasks. Triggers of
the same connection run in one event loop of a triggerer process, so they share one `AccountBudget`
(looked up by connection id): together they never exceed the rates, and a 429 seen by one pauses
all of them. Several triggerer processes or workers using one account split the rates between them
(see the README's "Bigger deployments").

Time comes from an injectable clock so the pacing is tested without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass
class TokenBucket:
    """`rate` tokens per second, bursts up to `burst`; `pause_until` stops it after a 429."""

    rate: float
    burst: float
    clock: Clock = time.monotonic
    tokens: float = field(init=False)
    updated: float = field(init=False)
    pause_until: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self.tokens = self.burst
        self.updated = self.clock()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def try_acquire(self) -> bool:
        now = self.clock()
        if now < self.pause_until:
            return False
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_time(self) -> float:
        """Seconds until a token can be taken (0 if one is there now)."""
        now = self.clock()
        if now < self.pause_until:
            return self.pause_until - now
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def pause(self, seconds: float) -> None:
        """The service said "too many": take nothing for a while and start again from empty."""
        now = self.clock()
        self.pause_until = max(self.pause_until, now + seconds)
        self.tokens = 0.0
        self.updated = self.pause_until


@dataclass
class AccountBudget:
    """What one DashScope account (one connection) may spend, shared by the triggers using it."""

    submit: TokenBucket
    query: TokenBucket
    max_running: int = 5
    outstanding: int = 0  # submitted, not yet ended: they occupy or wait for the running slots
    submitted_total: int = 0

    @classmethod
    def create(
        cls, *, submit_rate: float = 10.0, query_rate: float = 20.0, max_running: int = 5, clock: Clock = time.monotonic
    ) -> AccountBudget:
        # A burst of one second's worth: the service counts per second, so a full second's burst is
        # within the limit while a larger one would be throttled.
        return cls(
            submit=TokenBucket(submit_rate, max(1.0, submit_rate), clock),
            query=TokenBucket(query_rate, max(1.0, query_rate), clock),
            max_running=max_running,
        )


_BUDGETS: dict[str, AccountBudget] = {}


def account_budget(
    conn_id: str,
    *,
    submit_rate: float = 10.0,
    query_rate: float = 20.0,
    max_running: int = 5,
    clock: Clock = time.monotonic,
) -> AccountBudget:
    """The shared budget of a connection in this process (created on first use)."""
    budget = _BUDGETS.get(conn_id)
    if budget is None:
        budget = AccountBudget.create(
            submit_rate=submit_rate, query_rate=query_rate, max_running=max_running, clock=clock
        )
        _BUDGETS[conn_id] = budget
    return budget


def forget_budgets() -> None:
    """Drop every shared budget (tests and benchmarks start each scenario from a fresh account)."""
    _BUDGETS.clear()
