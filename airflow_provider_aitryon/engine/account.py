"""The per-account engine: one poll loop per account and process for every wait.

Every waiter of a process registers its tasks here: the single-task trigger (sensor and
submit-and-wait operators, in the triggerer or, with ``deferrable=False``, in the worker) and the
catalog chunks. The engine owns the account's budgets (submits, queries, running slots), the queue
and latency model, and the one loop that decides when each task is asked about. A waiter gets a
`Watch` and awaits its ``done`` future: the task's final answer, or the error that ended the wait.

Engines are keyed by connection id and event loop (a triggerer runs all its triggers in one loop;
a test or a worker's ``asyncio.run`` gets its own), created on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from airflow_provider_aitryon import api
from airflow_provider_aitryon.connection import ConnectionSettings
from airflow_provider_aitryon.engine import memory
from airflow_provider_aitryon.engine.limits import AccountLimits, Clock, RateLimiter
from airflow_provider_aitryon.engine.model import QueueModel, Watch
from airflow_provider_aitryon.errors import DashScopeAPIError, DashScopeConfigError, is_account_wide, is_throttled
from airflow_provider_aitryon.models import TaskResult
from airflow_provider_aitryon.retry import backoff_delay

log = logging.getLogger(__name__)

# Seconds the connection's settings (and the poll loop's client) are used before being read again.
SETTINGS_TTL = 300.0
# Seconds between two writes of the learned latencies (`engine.memory`).
REMEMBER_EVERY = 60.0

# Event statuses beyond the task outcomes (success / failure) a waiter can end with.
EVENT_TIMEOUT = "timeout"
EVENT_ERROR = "error"


def task_event(
    status: str,
    task_id: str,
    result: TaskResult | None = None,
    message: str | None = None,
    *,
    retryable: bool = False,
) -> dict[str, Any]:
    """The one event shape of a single-task wait: small and JSON-safe (it crosses the metadata DB)."""
    return {
        "status": status,
        "dashscope_task_id": task_id,
        "task": result.to_dict() if result else None,
        "message": message,
        "retryable": retryable,
    }


class Transport(Protocol):
    """What the engine needs of a client: the connection's settings and one unretried request.

    The hook (`hooks.dashscope.DashScopeHook`) is one; the engine never imports it, so the layer
    below the Airflow roles stays below them.
    """

    async def asettings(self) -> ConnectionSettings: ...

    async def arun_once(self, call: api.ApiCall) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


async def _close_later(client: Transport, busy: set[asyncio.Task[None]]) -> None:
    """Close a replaced client once the requests it carries have landed."""
    others = [t for t in busy if t is not asyncio.current_task()]
    if others:
        await asyncio.wait(others, timeout=60)
    await client.aclose()


class AccountEngine:
    """One account's budgets, queue model and poll loop in this process.

    :param conn_id: the connection (one account) whose tasks are watched.
    :param limits: the account's rates and running slots.
    :param clock: monotonic seconds (tests inject a fake one for the limiters).
    :param connect: makes the engine's client for this connection (its poll loop owns it).
    """

    def __init__(
        self,
        conn_id: str,
        limits: AccountLimits | None = None,
        clock: Clock = time.monotonic,
        connect: Callable[[], Transport] | None = None,
    ) -> None:
        limits = limits or AccountLimits()
        self.conn_id = conn_id
        self.connect = connect
        self.clock = clock
        self.submit = RateLimiter(limits.submit_rate, clock=clock)
        self.query = RateLimiter(limits.query_rate, clock=clock)
        self.max_running = limits.max_running
        self.model = QueueModel(limits.max_running)
        self.watches: list[Watch] = []
        self.outstanding = 0  # catalog submits not yet ended (they occupy or wait for running slots)
        self.submitted_total = 0
        self.queries = 0
        self._due: list[tuple[float, int, int, Watch]] = []
        self._seq = itertools.count()
        self._wake: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._submit_lock: asyncio.Lock | None = None
        self._settings: ConnectionSettings | None = None
        self._settings_at = -math.inf
        self._remembered_at = -math.inf
        self._background: set[asyncio.Future[None]] = set()

    # ------------------------------------------------------------------ waiters

    def watch(
        self,
        task_id: str,
        *,
        model: str | None = None,
        submitted_at: float | None = None,
        poll_now: bool = False,
        expected_latency: float | None = None,
        max_interval: float = 5.0,
        max_errors: int | None = None,
        observer: Callable[[DashScopeAPIError], None] | None = None,
    ) -> Watch:
        """Start watching a task; await ``watch.done`` for its final `TaskResult`.

        :param task_id: the DashScope task id.
        :param model: its model (latencies are learned per model); None when the waiter does not know.
        :param submitted_at: when it was submitted, on the engine's clock (None: now).
        :param poll_now: nothing is known of it in this process: ask at once.
        :param expected_latency: the waiter's guess of the run time, used until one end is seen.
        :param max_interval: the longest gap between two looks while the engine has no prediction.
        :param max_errors: failed looks in a row before ``done`` gets the error (None: never).
        :param observer: called with each failed look.
        """
        now = self.clock()
        w = Watch(
            task_id=task_id,
            model=model or "any",
            submitted_at=min(now, submitted_at) if submitted_at is not None else now,
            expected_latency=expected_latency,
            max_interval=max(0.001, float(max_interval)),
            max_errors=max_errors,
            poll_now=poll_now,
            observer=observer,
        )
        w.done = asyncio.get_running_loop().create_future()
        self.watches.append(w)
        self._replan()
        self._ensure_runner()
        return w

    def forget(self, w: Watch) -> None:
        """Stop watching (the waiter timed out, was cancelled, or has its answer)."""
        if w in self.watches:
            self.watches.remove(w)
            self._replan()
        if w.done is not None and not w.done.done():
            w.done.cancel()

    async def settings(self) -> ConnectionSettings:
        """The connection's settings, read again every few minutes (a rotated key is picked up)."""
        if self._settings is None or self.clock() - self._settings_at > SETTINGS_TTL:
            first = self._settings is None
            self._settings = await self._client().asettings()
            self._settings_at = self.clock()
            if first:  # what other processes learned: no blind start where a latency is known
                self.model.prime(await asyncio.to_thread(memory.load, self.conn_id))
        return self._settings

    def _remember(self) -> None:
        """Keep the learned latencies for the next process, at most once a minute."""
        now = self.clock()
        if now - self._remembered_at < REMEMBER_EVERY:
            return
        self._remembered_at = now
        task = asyncio.ensure_future(asyncio.to_thread(memory.save, self.conn_id, self.model.snapshot()))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _client(self) -> Transport:
        if self.connect is None:
            raise DashScopeConfigError(
                f"The DashScope engine for connection {self.conn_id!r} has no client; pass connect= to engine_for."
            )
        return self.connect()

    def submit_lock(self) -> asyncio.Lock:
        """One submit in flight per account at a time, so a lost reply maps to exactly one task.

        Sending one after another still outpaces the account (10 submits/s against replies in
        milliseconds), while it keeps the task list unambiguous when a reply goes missing.
        """
        if self._submit_lock is None:
            self._submit_lock = asyncio.Lock()
        return self._submit_lock

    # ------------------------------------------------------------------ the loop

    def _replan(self) -> None:
        now = self.clock()
        self.model.plan(self.watches, now)
        probes = self.model.probes(self.watches)
        self._due = []
        for w in self.watches:
            if w.polling:
                continue
            w.gen += 1
            due = self.model.due(w, now, probes)
            if due < math.inf:
                self._due.append((due, next(self._seq), w.gen, w))
        heapq.heapify(self._due)
        if self._wake is not None:
            self._wake.set()

    def _ensure_runner(self) -> None:
        if self._runner is None or self._runner.done():
            self._wake = asyncio.Event()
            self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"aitryon-engine-{self.conn_id}")

    async def _run(self) -> None:
        hook = self._client()
        born = self.clock()
        in_flight: set[asyncio.Task[None]] = set()
        try:
            try:
                settings = await self.settings()
            except DashScopeConfigError as exc:
                for w in list(self.watches):
                    self._resolve(w, exc)
                return
            while self.watches:
                now = self.clock()
                if now - born > SETTINGS_TTL:
                    # A busy triggerer never goes idle: renew the client so an edited connection
                    # (a rotated key, a new host) takes effect without a restart.
                    old, hook, born = hook, self._client(), now
                    settings = await self.settings()
                    in_flight.add(asyncio.ensure_future(_close_later(old, in_flight)))
                while self._due and self._due[0][0] <= now:
                    _, _, gen, w = self._due[0]
                    if gen != w.gen or w.polling or w not in self.watches:
                        heapq.heappop(self._due)
                        continue
                    slot = self.query.try_acquire()
                    if slot is None:
                        break
                    heapq.heappop(self._due)
                    w.polling = True
                    task = asyncio.ensure_future(self._look(hook, settings, w, slot))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                waits = [1.0]
                if self._due:
                    waits.append(self._due[0][0] - now)
                    if self._due[0][0] <= now:
                        waits.append(self.query.wait_time())
                assert self._wake is not None
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(0.002, min(waits)))
        except Exception as exc:  # a bug must not leave waiters hanging until their deadlines
            log.exception("The DashScope engine for %s stopped", self.conn_id)
            for w in list(self.watches):
                self._resolve(w, exc)
        finally:
            for task in in_flight:
                task.cancel()
            self._runner = None
            with contextlib.suppress(RuntimeError):  # the event loop itself is closing
                await hook.aclose()
                if self.watches:
                    self._ensure_runner()  # a waiter registered while this loop was shutting down

    async def _look(self, hook: Transport, settings: ConnectionSettings, w: Watch, slot: Any) -> None:
        """One status query of one watched task."""
        self.queries += 1
        w.queries += 1
        try:
            try:
                payload = await hook.arun_once(api.query_call(w.task_id))
            finally:
                self.query.done(slot)
            result = api.parse_task(payload, w.task_id)
        except DashScopeConfigError as exc:
            self._resolve(w, exc)
        except DashScopeAPIError as exc:
            self._failed_look(settings, w, exc)
        else:
            now = self.clock()
            w.errors = 0
            w.last = result
            self.model.observe(w, result, now)
            w.poll_now = False
            if result.status.is_terminal:
                self._resolve(w, result)
                self._remember()
        finally:
            w.polling = False
            self._replan()

    def _failed_look(self, settings: ConnectionSettings, w: Watch, exc: DashScopeAPIError) -> None:
        if w.observer is not None:
            w.observer(exc)
        if is_throttled(exc):
            self.query.throttled_by_service(exc.retry_after)
        if is_account_wide(exc.code) or not exc.retryable:
            self._resolve(w, exc)
            return
        w.errors += 1
        if w.max_errors is not None and w.errors > w.max_errors:
            self._resolve(w, exc)
            return
        # The one retry policy: full jitter, the service's Retry-After as a floor.
        w.not_before = self.clock() + backoff_delay(
            w.errors, base=settings.backoff_base, cap=settings.backoff_max, retry_after=exc.retry_after
        )

    def _resolve(self, w: Watch, outcome: TaskResult | BaseException) -> None:
        if w in self.watches:
            self.watches.remove(w)
        if w.done is None or w.done.done():
            return
        if isinstance(outcome, BaseException):
            w.done.set_exception(outcome)
        else:
            w.done.set_result(outcome)


# One engine per (event loop, connection id): the triggerer's triggers share one loop.
_ENGINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, AccountEngine]] = weakref.WeakKeyDictionary()


def engine_for(
    conn_id: str,
    limits: AccountLimits | None = None,
    clock: Clock = time.monotonic,
    connect: Callable[[], Transport] | None = None,
) -> AccountEngine:
    """The engine of a connection in the running event loop (created on first use with `limits`).

    :param connect: makes a client for the connection (the hook); kept from the first caller that
        gives one.
    """
    engines = _ENGINES.setdefault(asyncio.get_running_loop(), {})
    engine = engines.get(conn_id)
    if engine is None:
        engine = engines[conn_id] = AccountEngine(conn_id, limits, clock, connect)
    elif engine.connect is None:
        engine.connect = connect
    return engine


def forget_engines() -> None:
    """Drop every engine (tests and benchmarks start each scenario from a fresh account)."""
    _ENGINES.clear()


def monotonic_from_epoch(epoch: float | None, clock: Clock = time.monotonic) -> float | None:
    """An epoch time (as kept in the registry or trigger kwargs) on the engine's clock."""
    if epoch is None:
        return None
    return clock() - max(0.0, time.time() - float(epoch))


async def wait_for_task(
    conn_id: str,
    task_id: str,
    *,
    connect: Callable[[], Transport] | None = None,
    model: str | None = None,
    submitted_at: float | None = None,
    end_time: float | None = None,
    poll_interval: float = 5.0,
    max_transient_errors: int = 5,
    logger: Any = log,
) -> dict[str, Any]:
    """Wait for one task through the account's engine; return the one `task_event` that ends it.

    The single waiting routine of the sensor and the submit-and-wait operators, whether it runs in
    the triggerer or in a worker.

    :param conn_id: connection of the task's account.
    :param task_id: the DashScope task id.
    :param connect: makes a client for the connection (the hook), if the engine has none yet.
    :param model: the task's model, when known (latencies are learned per model).
    :param submitted_at: epoch seconds of the submit, when known.
    :param end_time: epoch seconds after which a ``timeout`` event is returned.
    :param poll_interval: the longest gap between two looks while the engine has no prediction.
    :param max_transient_errors: failed looks in a row (counted in the connection's attempts) to bear.
    :param logger: where failed looks are reported.
    """
    engine = engine_for(conn_id, connect=connect)
    try:
        settings = await engine.settings()
    except DashScopeConfigError as exc:
        return task_event(EVENT_ERROR, task_id, None, str(exc))

    def report(exc: DashScopeAPIError) -> None:
        logger.warning("Polling DashScope task %s failed, will poll again: %s", task_id, exc)

    w = engine.watch(
        task_id,
        model=model,
        submitted_at=monotonic_from_epoch(submitted_at, engine.clock),
        max_interval=poll_interval,
        # The same tolerance as before the engine: each failed poll of a waiter used to be
        # `max_attempts` tries; the engine counts tries.
        max_errors=(max_transient_errors + 1) * settings.max_attempts - 1,
        observer=report,
    )
    try:
        remaining = None if end_time is None else max(0.0, end_time - time.time())
        result: TaskResult = await asyncio.wait_for(asyncio.shield(w.done), timeout=remaining)
    except asyncio.TimeoutError:
        last = w.last
        status = last.raw_status if last else "not yet known"
        return task_event(
            EVENT_TIMEOUT,
            task_id,
            last,
            f"DashScope task {task_id} did not finish before the deadline (last status {status}).",
        )
    except DashScopeConfigError as exc:
        return task_event(EVENT_ERROR, task_id, w.last, str(exc))
    except DashScopeAPIError as exc:
        return task_event(EVENT_ERROR, task_id, w.last, str(exc), retryable=exc.retryable)
    finally:
        engine.forget(w)
    return task_event(result.outcome.value, task_id, result, result.message)
