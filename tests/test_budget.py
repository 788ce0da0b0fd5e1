"""The account budgets with a fake clock: pacing is a property of the code, not of the machine."""

from __future__ import annotations

import pytest

from airflow_provider_aitryon.budget import AccountBudget, RateLimiter, account_budget, forget_budgets


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


def test_triggers_of_one_connection_share_one_budget():
    forget_budgets()
    clock = FakeClock()
    a = account_budget("conn_a", query_rate=20, clock=clock)
    assert account_budget("conn_a") is a
    assert account_budget("conn_b", clock=clock) is not a
    assert taken(a.query) == 20
    assert taken(account_budget("conn_a").query) == 0  # a second trigger gets nothing extra
    forget_budgets()


def test_budget_defaults_match_the_account_limits():
    budget = AccountBudget.create()
    assert (budget.submit.rate, budget.query.rate, budget.max_running) == (10.0, 20.0, 5)
