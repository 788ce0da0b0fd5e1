"""The service's clock as seen from here: how far DashScope's wall clock is from this machine's.

A lost submit reply is resolved by finding, in the account's task list, the task created while the
submit was in flight. "While" must be read on the service's clock: a worker whose clock is 5 s off
would otherwise look in the wrong window and pay again, or adopt a task another submitter created
a second earlier. The offset (service minus local) is learned as an interval from the service's own
times, never assumed:

* every reply's ``Date`` header (whole seconds: the service's time was in ``[D, D + 1)`` at some
  moment between sending and receiving, so the offset is in ``[D - received, D + 1 - sent]``);
* a task's creation time (milliseconds) when the request that created it is known to have been in
  flight between ``sent`` and ``received``.

Intervals from several observations are intersected, so the estimate tightens as replies arrive;
`calibrate_at` says when to send a probe so that its ``Date`` splits the interval in half.
"""

from __future__ import annotations

import threading
from email.utils import parsedate_to_datetime

# A fresh interval, before anything is known: realistic skews are minutes at most.
UNKNOWN_SPAN = 600.0


class ServiceClock:
    """Offset interval ``[lo, hi]`` (seconds, service minus local) of one service's clock."""

    def __init__(self) -> None:
        self.lo = -UNKNOWN_SPAN
        self.hi = UNKNOWN_SPAN
        self.known = False
        self._lock = threading.Lock()

    @property
    def width(self) -> float:
        return self.hi - self.lo

    @property
    def offset(self) -> float:
        return (self.lo + self.hi) / 2

    def _narrow(self, lo: float, hi: float) -> None:
        with self._lock:
            if not self.known or lo > self.hi or hi < self.lo:
                # First observation, or one that contradicts the others (the service's clock was
                # stepped, or ours was): start again from the newest.
                self.lo, self.hi, self.known = lo, hi, True
                return
            self.lo, self.hi = max(self.lo, lo), min(self.hi, hi)

    def observe_date(self, header: str | None, sent: float, received: float) -> None:
        """Learn from a reply's ``Date`` header, sent and received on this machine's clock."""
        if not header:
            return
        try:
            service = parsedate_to_datetime(header).timestamp()
        except (TypeError, ValueError, IndexError):
            return
        self._narrow(service - received, service + 1.0 - sent)

    def observe_event(self, service_time: float, sent: float, received: float) -> None:
        """Learn from a service timestamp of an event that happened between ``sent`` and ``received``."""
        self._narrow(service_time - received, service_time - sent)

    def calibrate_at(self, now: float) -> float:
        """Local time at which a request's ``Date`` best splits the interval (a second boundary)."""
        import math

        target = now + self.offset + 0.05
        boundary = math.ceil(target)
        return boundary - self.offset


_CLOCKS: dict[str, ServiceClock] = {}
_CLOCKS_LOCK = threading.Lock()


def service_clock(base_url: str) -> ServiceClock:
    """The process-wide clock estimate of one service (by base URL)."""
    with _CLOCKS_LOCK:
        clock = _CLOCKS.get(base_url)
        if clock is None:
            clock = _CLOCKS[base_url] = ServiceClock()
        return clock
