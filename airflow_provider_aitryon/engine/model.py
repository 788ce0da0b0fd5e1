"""The account's queue and latency model: when will each task end, and when is it worth asking.

DashScope runs an account's tasks `max_running` at a time, first come first served; the rest wait
PENDING. Given when each watched task was submitted, which ones are seen running, and how long a
task of each model runs, the model predicts every task's end, and a task is queried just after its
predicted end, so one query usually finds it done.

What it learns, per process and per model:

* **latency**, from the service's own ``scheduled_time`` / ``end_time`` (differences of the
  service's times only: its clock and zone are not ours), or, where replies carry no times, from
  status transitions seen here (started between the last PENDING look and the first RUNNING one);
* its **spread**, so the margin after a predicted end covers how much latencies vary;
* this process's **share** of the running slots: other processes on the account take slots this
  one cannot see, so a task found still PENDING when it was predicted running shrinks the share
  (multiplicative), and a task found running or ended earlier than predicted grows it (additive).

Until a model's latency is known, the oldest task of that model is looked at on a widening schedule
(1, 2, 4, 6, 8, 12, 16, 20 s after the submit, then every 5 s: the official SDK's schedule without
its useless first query; gaps never longer than the waiter's ``max_interval``) and the others
wait for what its end teaches. Nothing here depends on the machine's uptime: every time is a
difference of times this process saw.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_aitryon import api
from airflow_provider_aitryon.models import TaskResult

# How many of a model's oldest tasks are looked at on the widening schedule while its latency is
# unknown; the rest wait for what their ends teach.
_BLIND_PROBES = 1
# The widening schedule: the gaps the official SDK's wait() sleeps (1, 1, 2, 2, 2, 4, 4, 4, then 5),
# each capped by the waiter's `max_interval`. The SDK also asks at once, when a task just submitted
# cannot have ended; the engine does not. So a blind wait costs one query less than the SDK's and
# finds the end as soon as it would, whatever the latency.
_BLIND_STEPS = (1.0, 1.0, 2.0, 2.0, 2.0, 4.0, 4.0, 4.0)
_BLIND_LAST_STEP = 5.0


@dataclass(eq=False)
class Watch:
    """One task somebody waits for: what is known of it, and what the model predicts.

    Times are on the engine's clock (monotonic seconds).
    """

    task_id: str
    model: str
    submitted_at: float
    expected_latency: float | None = None  # the waiter's guess, until the model has seen one end
    max_interval: float = 5.0  # never wait longer than this between two looks
    max_errors: int | None = None  # failed looks in a row before the waiter is told; None: never
    poll_now: bool = False  # nothing is known of it in this process yet: ask at once
    started_at: float | None = None
    not_started_by: float = -math.inf  # last look that found it PENDING: it starts after this
    last_seen: float = -math.inf  # last look that found it not ended
    predicted_start: float = 0.0
    predicted_end: float = 0.0
    late_looks: int = 0  # looks that found it still running past its predicted end
    not_before: float = 0.0  # backoff after a failed look
    errors: int = 0
    queries: int = 0
    last: TaskResult | None = None
    polling: bool = False
    gen: int = 0
    done: Any = None  # asyncio.Future[TaskResult], set by the engine
    observer: Any = None  # called with every failed look (the catalog counts failure classes)


@dataclass
class ModelLatency:
    mean: float
    spread: float = 0.0
    seen: int = 1


@dataclass
class QueueModel:
    """Predict ends and choose query times for one account's watched tasks."""

    max_running: int = 5
    latencies: dict[str, ModelLatency] = field(default_factory=dict)
    share: float = 0.0  # running slots this process effectively gets; 0: all of them
    recent_ends: list[float] = field(default_factory=list)  # when the last tasks freed their slots
    ends_seen: int = 0
    _shrunk_at: float = -math.inf

    def __post_init__(self) -> None:
        self.share = self.share or float(self.max_running)

    # ------------------------------------------------------------------ what is known

    def latency(self, model: str) -> float | None:
        known = self.latencies.get(model)
        return known.mean if known else None

    def latency_for(self, watch: Watch) -> float:
        return self.latency(watch.model) or watch.expected_latency or watch.max_interval * 2

    def blind(self, watch: Watch) -> bool:
        """Neither seen nor guessed: the widening schedule decides."""
        return self.latency(watch.model) is None and watch.expected_latency is None

    def learn_latency(self, model: str, observed: float) -> None:
        """Average in a task's run time; a first guess that is far off is replaced, not nudged."""
        known = self.latencies.get(model)
        if known is None or (known.seen == 1 and abs(observed - known.mean) > 0.5 * known.mean):
            self.latencies[model] = ModelLatency(observed, known.spread if known else 0.0)
        else:
            deviation = abs(observed - known.mean)
            known.mean = 0.8 * known.mean + 0.2 * observed
            known.spread = 0.75 * known.spread + 0.25 * deviation
            known.seen += 1
        self.ends_seen += 1

    def snapshot(self) -> dict[str, Any]:
        """The learned latencies, JSON-safe (for `engine.memory`)."""
        return {model: {"mean": k.mean, "spread": k.spread, "seen": k.seen} for model, k in self.latencies.items()}

    def prime(self, remembered: dict[str, Any]) -> None:
        """Start from latencies another process learned; what this process saw itself wins."""
        for model, known in remembered.items():
            try:
                mean, spread = float(known["mean"]), float(known.get("spread") or 0.0)
            except (KeyError, TypeError, ValueError):
                continue
            if model not in self.latencies and math.isfinite(mean) and mean > 0:
                # Counted as seen once: the first end in this process replaces it if it is far off.
                self.latencies[model] = ModelLatency(mean, spread if math.isfinite(spread) else 0.0, 1)

    def margin(self, watch: Watch) -> float:
        """How long after a predicted end to ask: enough for the spread, small against the latency."""
        latency = self.latency_for(watch)
        known = self.latencies.get(watch.model)
        spread = known.spread if known else 0.05 * latency
        return min(0.1 + 2 * spread, 0.1 * latency + 0.1)

    @property
    def slots(self) -> int:
        return max(1, min(self.max_running, round(self.share)))

    # ------------------------------------------------------------------ observations

    def observe(self, watch: Watch, result: TaskResult, now: float) -> None:
        """Learn from one answer about a task (running or ended)."""
        if not result.status.is_terminal:
            if result.raw_status == "PENDING":
                if watch.not_started_by < now and watch.predicted_start < now - self.margin(watch):
                    self._shrink(now, watch)  # predicted running, still queued: slots are taken elsewhere
                watch.not_started_by = now
            elif watch.started_at is None:
                if watch.predicted_start > now and not watch.poll_now:
                    self._grow()  # running before its predicted start
                watch.started_at = self.start_time(result, watch, now)
            if now >= watch.predicted_end and watch.started_at is not None:
                watch.late_looks += 1
                known = self.latencies.get(watch.model)
                if known is not None and now - watch.started_at > known.mean:
                    # Still running after the predicted latency: the latency is at least this long.
                    known.mean = now - watch.started_at
            watch.last_seen = now
            return
        started = self.start_time(result, watch, now) if watch.started_at is None else watch.started_at
        ended = self.end_time(result, watch, now)
        service_start, service_end = (
            api.parse_service_time(result.scheduled_time),
            api.parse_service_time(result.end_time),
        )
        if service_start is not None and service_end is not None and service_end > service_start:
            observed: float | None = service_end - service_start
        elif watch.started_at is not None or watch.not_started_by > -math.inf:
            observed = ended - started
        else:
            observed = None  # first seen ended: nothing bounds when it ran
        if observed is not None and observed > 0:
            self.learn_latency(watch.model, observed)
        if watch.late_looks == 0 and now - ended > max(1.0, 0.1 * self.latency_for(watch)) + self.margin(watch):
            self._grow()  # it ended well before we looked: more slots are ours than predicted
        self.recent_ends = sorted([*self.recent_ends, ended])[-self.max_running :]

    def _shrink(self, now: float, watch: Watch) -> None:
        # One cut per half latency: the looks that find a queue backed up are one signal.
        if now - self._shrunk_at >= 0.5 * self.latency_for(watch):
            self.share = max(1.0, self.share * 0.7)
            self._shrunk_at = now

    def _grow(self) -> None:
        self.share = min(float(self.max_running), self.share + 0.5)

    def start_time(self, result: TaskResult, watch: Watch, now: float) -> float:
        """When a task seen running (or ended) started: from the service's own times if it gave them."""
        submitted = api.parse_service_time(result.submit_time)
        scheduled = api.parse_service_time(result.scheduled_time)
        if submitted is not None and scheduled is not None and scheduled >= submitted:
            return min(now, watch.submitted_at + (scheduled - submitted))
        # It started after it was submitted and after we last saw it not running; the queue's
        # prediction is the best guess within those bounds.
        lower = max(watch.submitted_at, watch.not_started_by)
        return min(max(watch.predicted_start, lower), now)

    def end_time(self, result: TaskResult, watch: Watch, now: float) -> float:
        """When a task seen ended freed its slot, on our clock."""
        submitted, ended = api.parse_service_time(result.submit_time), api.parse_service_time(result.end_time)
        if submitted is not None and ended is not None and ended >= submitted:
            return min(now, watch.submitted_at + (ended - submitted))
        return now

    # ------------------------------------------------------------------ predictions

    def plan(self, watches: list[Watch], now: float) -> None:
        """Predict when every watched task starts and ends (FIFO over this process's slots)."""
        slots: list[float] = []
        waiting: list[Watch] = []
        for watch in watches:
            if watch.started_at is not None:
                watch.predicted_start = watch.started_at
                watch.predicted_end = watch.started_at + self.latency_for(watch)
                heapq.heappush(slots, watch.predicted_end)
            else:
                waiting.append(watch)
        # The slots nobody is seen running in were freed when the last tasks ended.
        for freed in sorted(self.recent_ends, reverse=True)[: max(0, self.slots - len(slots))]:
            heapq.heappush(slots, freed)
        while len(slots) < self.slots:
            heapq.heappush(slots, -math.inf)
        for watch in sorted(waiting, key=lambda w: w.submitted_at):
            start = max(watch.submitted_at, watch.not_started_by, heapq.heappop(slots))
            watch.predicted_start = start
            watch.predicted_end = start + self.latency_for(watch)
            heapq.heappush(slots, watch.predicted_end)

    def due(self, watch: Watch, now: float, probes: set[int]) -> float:
        """When to look at `watch` next (`probes`: ids of the watches that probe an unknown latency)."""
        if watch.poll_now:
            return max(now, watch.not_before)
        floor = min(1.0, watch.max_interval)
        if self.blind(watch):
            if id(watch) not in probes:
                # Queued behind the probe of its model: its end is predicted once the probe's is seen.
                return math.inf
            waited = max(watch.last_seen, watch.submitted_at) - watch.submitted_at
            return max(watch.submitted_at + _next_blind_look(waited, watch.max_interval), watch.not_before)
        latency = self.latency_for(watch)
        due = watch.predicted_end + self.margin(watch)
        if watch.late_looks:
            # Running past its prediction: nearly done. Look again soon, then less and less often,
            # so a slow spell at the service costs a few queries, not one every instant.
            step = max(0.05, min(0.25, 0.02 * latency)) * 2 ** min(watch.late_looks - 1, 8)
            due = max(due, watch.last_seen + min(step, watch.max_interval))
        elif self.latency(watch.model) is None and id(watch) in probes:
            # Only the waiter's guess so far: check the oldest task about once a second until
            # the first end teaches the real latency.
            due = min(due, max(watch.last_seen, watch.submitted_at) + min(floor, latency / 4))
        return max(due, watch.not_before)

    def probes(self, watches: list[Watch]) -> set[int]:
        """The oldest watches of each model whose latency is not known yet."""
        chosen: set[int] = set()
        by_model: dict[str, int] = {}
        for watch in sorted(watches, key=lambda w: w.submitted_at):
            if self.latency(watch.model) is not None:
                continue
            if by_model.get(watch.model, 0) < _BLIND_PROBES:
                by_model[watch.model] = by_model.get(watch.model, 0) + 1
                chosen.add(id(watch))
        return chosen


def _next_blind_look(waited: float, max_interval: float) -> float:
    """Seconds after the submit of the first look of the widening schedule later than `waited`."""
    at = 0.0
    for gap in _BLIND_STEPS:
        at += min(gap, max_interval)
        if at > waited + 1e-6:
            return at
    last = min(_BLIND_LAST_STEP, max_interval)
    return at + (math.floor(max(0.0, waited - at) / last + 1e-9) + 1) * last
