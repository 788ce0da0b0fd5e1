"""An account's request rates: sliding-window pacing that adapts to the 429s it meets.

DashScope allows an account 10 submissions/s and 20 task queries/s, counted when requests arrive.
Every waiter in a process shares one `AdaptiveRate` per kind (see `engine.account`), so together
they never exceed the rate. Several processes on one account (HA triggerers, many workers) have no
coordinator; each adapts on its own, the way the cloud SDKs' adaptive retry modes do:

* a 429 halves this process's rate (multiplicative decrease) and pauses it for the Retry-After;
* every second without one gives back `increase_per_second` requests/s (additive increase), up to
  the configured ceiling.

N processes pushing on one account each back off by half when the account refuses them and creep
back linearly, so their rates converge to fair shares of the account's limit that sum to a little
below it (AIMD's classic result), and only the few requests at the top of each probe are refused.

Time comes from an injectable clock so the pacing is tested without waiting.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]


class Slot:
    """One request's place in a rate window: open while in flight, then stamped with its end."""

    __slots__ = ("end",)

    def __init__(self) -> None:
        self.end = math.inf


@dataclass
class RateLimiter:
    """At most `rate` requests in any `window`-second span as the service sees them; adapts to 429s.

    DashScope counts requests per second when they *arrive*, which is some time after we send them
    and before the reply comes back. So a request counts from the moment it is sent until `window`
    seconds after its reply: a new one is sent only when fewer than `rate` are in that span. A
    token bucket would let its burst plus a second of refill into one window and be throttled.

    :param rate: the ceiling, requests per window (the account's documented limit).
    :param window: seconds a request counts for after its reply (a little over the service's 1 s).
    :param clock: monotonic seconds.
    :param increase_per_second: how fast the current rate grows back after a 429 (additive increase).
    :param floor: the rate never drops below this (requests per window).
    """

    rate: float
    window: float = 1.02
    clock: Clock = time.monotonic
    increase_per_second: float = 0.5
    floor: float = 1.0
    recent: list[Slot] = field(default_factory=list, init=False)
    pause_until: float = field(default=0.0, init=False)
    current: float = field(default=0.0, init=False)
    throttled: int = field(default=0, init=False)
    _grown_at: float = field(default=0.0, init=False)
    _cut_at: float = field(default=-math.inf, init=False)

    def __post_init__(self) -> None:
        self.current = float(self.rate)
        self._grown_at = self.clock()

    @property
    def capacity(self) -> int:
        """Requests allowed in one window right now."""
        self._grow(self.clock())
        return max(1, math.floor(self.current))

    def _grow(self, now: float) -> None:
        if self.current < self.rate:
            self.current = min(float(self.rate), self.current + self.increase_per_second * (now - self._grown_at))
        self._grown_at = now

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
        """Send nothing for a while (the service asked for it)."""
        self.pause_until = max(self.pause_until, self.clock() + seconds)

    async def acquire(self) -> Slot:
        """Wait for a slot (pass it to `done` when the reply is in)."""
        while (slot := self.try_acquire()) is None:
            await asyncio.sleep(max(0.005, self.wait_time()))
        return slot

    def throttled_by_service(self, retry_after: float | None = None) -> None:
        """The service answered 429: halve this process's rate and pause for its Retry-After.

        Replies to requests sent before the cut arrive together; one cut per window counts them
        as the one signal they are, so a burst of 429s does not drive the rate to the floor.
        """
        now = self.clock()
        self.throttled += 1
        if now - self._cut_at >= self.window:
            self._grow(now)
            self.current = max(self.floor, self.current / 2)
            self._cut_at = now
        self.pause(retry_after if retry_after is not None else 1.0)


@dataclass
class AccountLimits:
    """What DashScope allows one account (the vendor's documented defaults)."""

    submit_rate: float = 10.0
    query_rate: float = 20.0
    max_running: int = 5


# Limiters of callers outside any engine (the submit operators, many worker threads of one process
# on the I/O loop), keyed by event loop and service: one adaptive pace per process and account.
_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, RateLimiter]] = weakref.WeakKeyDictionary()


def shared_limiter(kind: str, service: str, rate: float) -> RateLimiter:
    """The process's adaptive limiter for one kind of request (``submit``) to one service."""
    limiters = _SHARED.setdefault(asyncio.get_running_loop(), {})
    key = f"{kind} {service}"
    if key not in limiters:
        limiters[key] = RateLimiter(rate)
    return limiters[key]
