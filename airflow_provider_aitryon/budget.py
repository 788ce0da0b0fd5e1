"""Per-account request budgets shared by every batch trigger of a connection in one triggerer.

DashScope allows an account 10 submissions/s, 20 task queries/s and 5 running tasks. Triggers of
the same connection run in one event loop of a triggerer process, so they share one `AccountBudget`
(looked up by connection id): together they never exceed the rates, and a 429 seen by one pauses
all of them. Several triggerer processes or workers using one account split the rates between them
(see the README's "Bigger deployments").

Time comes from an injectable clock so the pacing is tested without waiting.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Clock = Callable[[], float]


class Slot:
    """One request's place in a rate window: open while in flight, then stamped with its end."""

    __slots__ = ("end",)

    def __init__(self) -> None:
        self.end = math.inf


@dataclass
class RateLimiter:
    """At most `rate` requests in any `window`-second span as the service sees them; pauses after a 429.

    DashScope counts requests per second when they *arrive*, which is some time after we send them
    and before the reply comes back. So a request counts from the moment it is sent until `window`
    seconds after its reply: a new one is sent only when fewer than `rate` are in that span. A
    token bucket would let its burst plus a second of refill into one window and be throttled.
    """

    rate: float
    window: float = 1.02
    clock: Clock = time.monotonic
    recent: list[Slot] = field(default_factory=list, init=False)
    pause_until: float = field(default=0.0, init=False)

    @property
    def capacity(self) -> int:
        return max(1, math.floor(self.rate))

    def _forget_old(self, now: float) -> None:
        self.recent = [slot for slot in self.recent if slot.end > now - self.window]

    def try_acquire(self) -> Slot | None:
        """A slot to send one request now (pass it to `done` when the reply is in), or None."""
        now = self.clock()
        if now < self.pause_until:
            return None
        self._forget_old(now)
        if len(self.recent) >= self.capacity:
            return None
        slot = Slot()
        self.recent.append(slot)
        return slot

    def done(self, slot: Slot) -> None:
        slot.end = self.clock()

    def wait_time(self) -> float:
        """Seconds until a request can be sent (0: now; a short poll while only in-flight ones block)."""
        now = self.clock()
        if now < self.pause_until:
            return self.pause_until - now
        self._forget_old(now)
        if len(self.recent) < self.capacity:
            return 0.0
        ended = [slot.end for slot in self.recent if slot.end != math.inf]
        return max(0.0, min(ended) + self.window - now) if ended else 0.01

    def pause(self, seconds: float) -> None:
        """The service said "too many": send nothing for a while."""
        self.pause_until = max(self.pause_until, self.clock() + seconds)


@dataclass
class AccountBudget:
    """What one DashScope account (one connection) may spend, shared by the triggers using it."""

    submit: RateLimiter
    query: RateLimiter
    max_running: int = 5
    outstanding: int = 0  # submitted, not yet ended: they occupy or wait for the running slots
    submitted_total: int = 0
    # The account's queue as the triggers of this process see it (outstanding tasks in submit
    # order) and the task latency learned from every trigger's observations: together they
    # predict when each task ends, whichever chunk it belongs to.
    tracked: list[Any] = field(default_factory=list)
    latency: float | None = None
    ends_seen: int = 0
    recent_ends: list[float] = field(default_factory=list)  # when the last tasks freed their slots

    def task_ended(self, at: float) -> None:
        self.recent_ends = sorted([*self.recent_ends, at])[-self.max_running :]

    def learn_latency(self, observed: float) -> None:
        """Average in a task's run time; a guess that is far off is replaced, not nudged."""
        if self.latency is None or abs(observed - self.latency) > 0.5 * self.latency:
            self.latency = observed
        else:
            self.latency = 0.8 * self.latency + 0.2 * observed
        self.ends_seen += 1

    _lock: asyncio.Lock | None = field(default=None, init=False, repr=False)
    _lock_loop: object = field(default=None, init=False, repr=False)

    def submit_lock(self) -> asyncio.Lock:
        """One submit in flight per account at a time, so a lost reply maps to exactly one task.

        Sending one after another still outpaces the account (10 submits/s against replies in
        milliseconds), while it keeps the task list unambiguous when a reply goes missing.
        """
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    @classmethod
    def create(
        cls, *, submit_rate: float = 10.0, query_rate: float = 20.0, max_running: int = 5, clock: Clock = time.monotonic
    ) -> AccountBudget:
        return cls(
            submit=RateLimiter(submit_rate, clock=clock),
            query=RateLimiter(query_rate, clock=clock),
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
