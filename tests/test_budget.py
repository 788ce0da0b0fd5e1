"""The account budgets with a fake clock: pacing is a property of the code, not of the machine."""

from __future__ import annotations

import asyncio

import pytest

from airflow_provider_aitryon.engine import AccountEngine, AccountLimits, RateLimiter, engine_for, forget_engines


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def taken(limiter: RateLimiter) -> int:
    """Send as many as allowed now, each answered at once."""
    count = 0
    while (slot := limiter.try_acquire()) is not None:
        limiter.done(slot)
        count += 1
    return count


def greedy_times(limiter: RateLimiter, clock: FakeClock, seconds: float, step: float = 0.01,
                 reply_after: float = 0.0) -> list[float]:
    """Send whenever allowed; each reply comes `reply_after` seconds later. Returns the send times."""
    times: list[float] = []
    waiting: list[tuple[float, object]] = []
    for _ in range(round(seconds / step)):
        for due, slot in [w for w in waiting if w[0] <= clock.now]:
            limiter.done(slot)  # type: ignore[arg-type]
            waiting.remove((due, slot))
        while (slot := limiter.try_acquire()) is not None:
            times.append(clock.now)
            waiting.append((clock.now + reply_after, slot))
        clock.advance(step)
    return times


def test_the_rate_is_spent_at_once_then_waits_for_the_window():
    clock = FakeClock()
    limiter = RateLimiter(rate=10, clock=clock)
    assert taken(limiter) == 10
    assert limiter.wait_time() == pytest.approx(1.02)
    clock.advance(1.0)
    assert taken(limiter) == 0
    clock.advance(0.03)
    assert taken(limiter) == 10


@pytest.mark.parametrize("rate", [10, 20])
def test_no_one_second_window_ever_exceeds_the_rate(rate):
    """What DashScope counts: requests in any one second. Greedy sending for a simulated minute."""
    clock = FakeClock()
    times = greedy_times(RateLimiter(rate=rate, clock=clock), clock, 60)
    start = 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        assert end - start + 1 <= rate
    assert len(times) >= 60 * rate * 0.94  # and it does not leave much of the budget unused


def test_slow_replies_slow_the_pace_so_arrivals_cannot_bunch_up():
    """A request may reach the service any time before its reply: it counts until a window after."""
    clock = FakeClock()
    times = greedy_times(RateLimiter(rate=10, clock=clock), clock, 30, reply_after=0.5)
    # Whatever the arrival time (send ≤ arrival ≤ reply), no 1-second span holds more than 10:
    # a new send waits for the window after the oldest reply, so send times are ≥ 1.5 s apart per 10.
    for i in range(10, len(times)):
        assert times[i] - times[i - 10] >= 1.5 - 1e-9


def test_a_429_pauses_the_limiter():
    clock = FakeClock()
    limiter = RateLimiter(rate=20, clock=clock)
    limiter.pause(1.5)
    assert not limiter.try_acquire()
    assert limiter.wait_time() == pytest.approx(1.5)
    clock.advance(1.49)
    assert not limiter.try_acquire()
    clock.advance(0.02)
    assert limiter.try_acquire()


def test_waiters_of_one_connection_share_one_engine_per_loop():
    clock = FakeClock()

    async def main() -> None:
        a = engine_for("conn_a", AccountLimits(query_rate=20), clock)
        assert engine_for("conn_a") is a
        assert engine_for("conn_b", clock=clock) is not a
        assert taken(a.query) == 20
        assert taken(engine_for("conn_a").query) == 0  # a second waiter gets nothing extra

    forget_engines()
    asyncio.run(main())
    forget_engines()


def test_engine_defaults_match_the_account_limits():
    engine = AccountEngine("conn")
    assert (engine.submit.rate, engine.query.rate, engine.max_running) == (10.0, 20.0, 5)


def test_a_429_halves_the_rate_once_per_window_and_it_grows_back_linearly():
    clock = FakeClock()
    limiter = RateLimiter(rate=20, clock=clock, increase_per_second=2.0)
    for _ in range(5):  # five 429s answering one burst are one signal
        limiter.throttled_by_service(retry_after=0.5)
    assert limiter.throttled == 5
    assert limiter.capacity == 10
    assert limiter.try_acquire() is None  # paused for the Retry-After
    clock.advance(0.5)
    assert taken(limiter) == 11  # 0.5 s of additive increase: 10 + 1
    clock.advance(2.0)
    limiter.throttled_by_service()
    assert limiter.capacity == 7  # (10 + 5) / 2, floored
    clock.advance(60)
    assert limiter.capacity == 20  # never above the account's ceiling


def test_the_adaptive_rate_never_drops_below_its_floor():
    clock = FakeClock()
    limiter = RateLimiter(rate=20, clock=clock, floor=2.0)
    for _ in range(10):
        limiter.throttled_by_service(retry_after=0.0)
        clock.advance(1.1)
    assert limiter.current >= 2.0


def test_three_processes_on_one_account_converge_below_its_limit():
    """AIMD, simulated: three greedy processes, one shared 20-per-second account that refuses the excess."""
    clock = FakeClock()
    limiters = [RateLimiter(rate=20, clock=clock) for _ in range(3)]
    arrivals: list[float] = []
    refused = sent = 0
    for _ in range(12000):  # 120 simulated seconds in 10 ms steps
        for limiter in limiters:
            while (slot := limiter.try_acquire()) is not None:
                sent += 1
                arrivals = [t for t in arrivals if t > clock.now - 1.0]
                if len(arrivals) >= 20:
                    refused += 1
                    limiter.done(slot)
                    limiter.throttled_by_service(retry_after=1.0)
                else:
                    arrivals.append(clock.now)
                    limiter.done(slot)
        clock.advance(0.01)
    accepted = sent - refused
    assert accepted >= 0.75 * 20 * 120  # most of the account's capacity is used
    assert refused / sent <= 0.05  # and few requests are refused
    shares = sorted(limiter.current for limiter in limiters)
    assert shares[-1] - shares[0] <= 6  # no process starves the others
