"""DashScopeBatchTrigger: one trigger carries a whole chunk of catalog items to saved images.

Per item: [coarse submit → wait] → refine submit → wait → save the refined image. The trigger
submits within the account's submit rate and keeps only a bounded number of tasks outstanding (the
account runs 5 at a time; the rest queue at DashScope), and it spends status queries where
completions are due: each task gets a predicted end time from its place in the account's queue and
the observed task latency, and is queried then, not round-robin.

Restart-safe and rerun-safe: every submit is recorded in the partition's submission registry
(``<output>/registry/items/``, one entry per item and stage) before it is sent, and again the moment
its task id is known. Whatever trigger carries an item next (rebuilt after a triggerer restart, a
retried task, a rerun with other chunks) replays its entry with `catalog.replay` and polls what was
submitted instead of paying for it again. While it works it renews the run's lease on the
partition. Yields one small event (status, message and counts).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import math
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_aitryon import api
from airflow_provider_aitryon.budget import AccountBudget, Slot, account_budget
from airflow_provider_aitryon.catalog import (
    DONE,
    FAILED,
    LOOKUP,
    QUEUED,
    STAGE_COARSE,
    STAGE_REFINE,
    WAITING,
    CatalogItem,
    image_uri,
    is_permanent,
    load_entries,
    partition_lease,
    replay,
)
from airflow_provider_aitryon.connection import DEFAULT_CONN_ID
from airflow_provider_aitryon.errors import DashScopeAPIError, DashScopeConfigError, is_account_wide
from airflow_provider_aitryon.hooks.dashscope import DashScopeHook
from airflow_provider_aitryon.models import Outcome, TaskResult
from airflow_provider_aitryon.registry import (
    INTENT_WINDOW_SECONDS,
    Submission,
    SubmissionRegistry,
    item_key,
    partition_registry,
)
from airflow_provider_aitryon.registry.lease import PartitionLease
from airflow_provider_aitryon.retry import backoff_delay

# Item phases: those `catalog.replay` reads from the registry (QUEUED, WAITING, DONE, FAILED) and
# the in-flight ones only a running trigger knows. An item is in exactly one; the loop moves it along.
SUBMITTING, POLLING, SAVING = "submitting", "polling", "saving"
_FAILURE_REPORT_SECONDS = 60.0


@dataclass
class ItemState:
    item: CatalogItem
    stage: str
    phase: str = QUEUED
    task_id: str | None = None
    task_ids: dict[str, str] = field(default_factory=dict)
    coarse_url: str | None = None
    result_url: str | None = None
    submitted_at: float = 0.0
    started_at: float | None = None
    not_started_by: float = 0.0  # last time a query found it PENDING: it starts after this
    predicted_end: float = 0.0
    last_seen: float = 0.0  # when we last learned its status (submit or query)
    late_looks: int = 0  # queries that found it still running past its predicted end
    gen: int = 0  # due-heap entries of older generations are stale
    owner: Any = None  # the BatchRun polling it (several share one account's queue)
    not_before: float = 0.0  # backoff after a transient error
    errors: int = 0
    task_failures: int = 0
    entries: dict[str, Submission] = field(default_factory=dict)  # stage → its registry entry
    lookup: bool = False  # an earlier submit's task id was never recorded: find it before sending
    poll_now: bool = False  # restored from the registry: ask at once instead of predicting


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()
    except ValueError:
        try:
            return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").timestamp()
        except ValueError:
            return None


class DashScopeBatchTrigger(BaseTrigger):
    """Carry one chunk of catalog items through DashScope and save the results.

    :param chunk_uri: JSONL file of the chunk's items (written by the planning task).
    :param journal_uri: unused; accepted so triggers serialized by earlier releases still load.
    :param output: where refined images are saved (``<output>/images/<sku file name>.png``); the
        partition's submission registry lives in ``<output>/registry``.
    :param dashscope_conn_id: connection; its budget is shared with other triggers of it.
    :param expected_latency: first guess of seconds a task runs; learned from the API's times.
    :param max_outstanding: tasks submitted but not ended, per account (account runs 5 at a time).
    :param submit_rate, query_rate, max_running: the account's limits (DashScope: 10/s, 20/s, 5).
    :param end_time: epoch seconds; then the trigger stops with a ``timeout`` event.
    :param progress_interval: seconds between progress lines in the triggerer log.
    :param lease_holder: the run that holds the partition's lease (``<dag_id>/<run_id>``); the
        trigger renews it while it works and stops, in one sentence, if another run holds it.
    """

    def __init__(
        self,
        chunk_uri: str,
        journal_uri: str | None = None,
        output: str = "",
        dashscope_conn_id: str = DEFAULT_CONN_ID,
        coarse_model: str = api.MODEL_TRYON,
        expected_latency: float = 10.0,
        max_outstanding: int = 20,
        submit_rate: float = 10.0,
        query_rate: float = 20.0,
        max_running: int = 5,
        end_time: float | None = None,
        progress_interval: float = 30.0,
        max_task_failures: int = 2,
        storage_conn_id: str | None = None,
        lease_holder: str | None = None,
    ) -> None:
        super().__init__()
        self.chunk_uri = chunk_uri
        self.journal_uri = journal_uri
        self.output = output
        self.dashscope_conn_id = dashscope_conn_id
        self.coarse_model = coarse_model
        self.expected_latency = float(expected_latency)
        self.max_outstanding = int(max_outstanding)
        self.submit_rate = float(submit_rate)
        self.query_rate = float(query_rate)
        self.max_running = int(max_running)
        self.end_time = end_time
        self.progress_interval = float(progress_interval)
        self.max_task_failures = int(max_task_failures)
        self.storage_conn_id = storage_conn_id
        self.lease_holder = lease_holder
        self.clock = time.monotonic  # replaced in tests
        self.queries = 0
        self.submits = 0

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "chunk_uri": self.chunk_uri,
                "journal_uri": self.journal_uri,
                "output": self.output,
                "dashscope_conn_id": self.dashscope_conn_id,
                "coarse_model": self.coarse_model,
                "expected_latency": self.expected_latency,
                "max_outstanding": self.max_outstanding,
                "submit_rate": self.submit_rate,
                "query_rate": self.query_rate,
                "max_running": self.max_running,
                "end_time": self.end_time,
                "progress_interval": self.progress_interval,
                "max_task_failures": self.max_task_failures,
                "storage_conn_id": self.storage_conn_id,
                "lease_holder": self.lease_holder,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = DashScopeHook(dashscope_conn_id=self.dashscope_conn_id)
        try:
            event = await BatchRun(self, hook).run()
        finally:
            await hook.aclose()
        yield TriggerEvent(event)


class BatchRun:
    """The state of one trigger run: items, the due-time heap, in-flight requests and the registry."""

    def __init__(self, trigger: DashScopeBatchTrigger, hook: DashScopeHook) -> None:
        self.t = trigger
        self.hook = hook
        self.clock = trigger.clock
        self.log = trigger.log
        self.budget: AccountBudget = account_budget(
            trigger.dashscope_conn_id,
            submit_rate=trigger.submit_rate,
            query_rate=trigger.query_rate,
            max_running=trigger.max_running,
            clock=self.clock,
        )
        if self.budget.latency is None:
            self.budget.latency = trigger.expected_latency
        self.items: list[ItemState] = []
        self.due: list[tuple[float, int, int, ItemState]] = []
        self.seq = itertools.count()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.submitting: set[asyncio.Task[None]] = set()
        self.registry: SubmissionRegistry | None = None
        self.dirty: dict[str, Submission] = {}  # registry entries changed since the last flush
        self.lease: PartitionLease | None = None
        self.lease_renewed = 0.0
        self.fatal: str | None = None
        self.started = self.clock()
        self.last_progress = self.started
        # Failures by class (call, HTTP status, code) since they were last logged: a chunk that
        # keeps failing says so at least once a minute instead of only at its deadline.
        self.failures: Counter[str] = Counter()
        self.last_failure_report = self.last_failure_report_start = self.started
        self.last_flush = self.started
        self.flush_lock = asyncio.Lock()

    # ------------------------------------------------------------------ set-up

    async def _load(self) -> None:
        from airflow_provider_aitryon.catalog import _path

        chunk_text = await asyncio.to_thread(lambda: _path(self.t.chunk_uri, self.t.storage_conn_id).read_text())
        items = [CatalogItem(**json.loads(line)) for line in chunk_text.splitlines() if line.strip()]
        if self.t.lease_holder:
            self.lease = partition_lease(self.t.output, self.t.lease_holder, conn_id=self.t.storage_conn_id)
            await asyncio.to_thread(self.lease.renew)  # another run took the partition: stop here
            self.lease_renewed = self.clock()
        self.registry = registry = await asyncio.to_thread(
            partition_registry, self.t.output, conn_id=self.t.storage_conn_id
        )
        entries = await asyncio.to_thread(load_entries, registry, items)
        for item in items:
            self.items.append(self._restore(item, entries.get(item.sku, {})))

    def _restore(self, item: CatalogItem, entries: dict[str, Submission]) -> ItemState:
        """Pick up an item where the registry left it: never submit what was already submitted."""
        progress = replay(item, entries, coarse_model=self.t.coarse_model)
        state = ItemState(item=item, stage=progress.stage, entries=dict(entries))
        state.task_ids = {stage: e.task_id for stage, e in entries.items() if e.task_id}
        state.coarse_url = progress.coarse_url
        phase = progress.phase
        if phase == FAILED:
            phase = progress.retry or FAILED  # a new run tries a transient failure again
        if phase in (DONE, FAILED):
            state.phase = phase
        elif phase == WAITING:
            # Submitted and not seen ending, or ended well and not saved: ask at once.
            state.phase, state.task_id, state.poll_now = WAITING, progress.task_id, True
            # When it was submitted, moved onto this run's clock (the registry keeps epoch seconds).
            recorded = entries[progress.stage].submitted_at if progress.stage in entries else None
            now = self.clock()
            state.submitted_at = now - max(0.0, time.time() - recorded) if recorded else now
        else:
            state.phase, state.lookup = QUEUED, phase == LOOKUP
        return state

    # ------------------------------------------------------------------ main loop

    async def run(self) -> dict[str, Any]:
        try:
            return await self._run()
        except asyncio.CancelledError:
            # The triggerer is stopping (restart, redeploy): let submits in flight land in the
            # registry, so the trigger rebuilt elsewhere polls them instead of submitting again.
            await self._drain()
            raise

    async def _drain(self) -> None:
        if self.submitting:
            await asyncio.wait(self.submitting, timeout=60)
        await self._flush()

    async def _run(self) -> dict[str, Any]:
        try:
            await self._load()
        except DashScopeConfigError as exc:  # the partition is held by another run
            return {"status": "error", "message": str(exc), "counts": self.counts()}
        for state in self.items:
            if state.phase == WAITING:
                self.budget.outstanding += 1
                self._track(state)
        self._replan(self.clock())
        while self.fatal is None and any(s.phase not in (DONE, FAILED) for s in self.items):
            now = self.clock()
            if self.t.end_time is not None and time.time() >= self.t.end_time:
                return await self._finish("timeout", "the chunk did not finish before its deadline")
            self._launch_submits(now)
            self._launch_polls(now)
            await self._maybe_flush(now)
            await self._maybe_renew_lease(now)
            self._maybe_report(now)
            self._maybe_report_failures(now)
            await self._idle(now)
        if self.fatal is not None:
            return await self._finish("error", self.fatal)
        return await self._finish("done", None)

    def _launch_submits(self, now: float) -> None:
        for state in self.items:
            if self.budget.outstanding >= self.t.max_outstanding:
                return
            if state.phase != QUEUED or state.not_before > now:
                continue
            slot = self.budget.submit.try_acquire()
            if slot is None:
                return
            state.phase = SUBMITTING
            self.budget.outstanding += 1  # counted now so parallel submits respect the cap
            task = self._spawn(self._submit(state, slot))
            self.submitting.add(task)
            task.add_done_callback(self.submitting.discard)

    def _launch_polls(self, now: float) -> None:
        while self.due and self.due[0][0] <= now:
            _, _, gen, state = self.due[0]
            if state.phase != WAITING or gen != state.gen:  # stale: the item moved on or was replanned
                heapq.heappop(self.due)
                continue
            slot = self.budget.query.try_acquire()
            if slot is None:
                return
            heapq.heappop(self.due)
            state.phase = POLLING
            self._spawn(self._poll(state, slot))

    async def _idle(self, now: float) -> None:
        """Sleep until something can happen: a request returns, a task is due or a token refills."""
        waits = [1.0]
        if self.due:
            waits.append(max(0.0, self.due[0][0] - now))
            waits.append(self.budget.query.wait_time())
        if any(s.phase == QUEUED for s in self.items) and self.budget.outstanding < self.t.max_outstanding:
            waits.append(self.budget.submit.wait_time())
            waits.extend(s.not_before - now for s in self.items if s.phase == QUEUED and s.not_before > now)
        timeout = max(0.005, min(waits))
        if self.in_flight:
            await asyncio.wait(self.in_flight, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(timeout)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)
        return task

    # ------------------------------------------------------------------ actions

    async def _submit(self, state: ItemState, slot: Slot) -> None:
        item = state.item
        assert self.registry is not None
        key = item_key(item.sku, state.stage)
        sending = False  # True once the submit itself is on its way (not the lookup before it)
        try:
            call = item.call(state.stage, coarse_image_url=state.coarse_url, coarse_model=self.t.coarse_model)
            entry = state.entries.get(state.stage)
            async with self.budget.submit_lock():
                try:
                    submitted = None
                    if state.lookup and entry is not None:
                        # An earlier submit's outcome is unknown (a run died before recording its
                        # task id, or a lost reply could not be looked up): find it, never resend blindly.
                        submitted = await self.hook.afind_submitted(
                            call, entry.intent_at, entry.intent_at + INTENT_WINDOW_SECONDS,
                            claimed=self.registry.claims,
                        )  # fmt: skip
                        state.lookup = False
                    if submitted is None:
                        sending = True
                        entry = self._new_generation(state, call)
                        await asyncio.to_thread(self.registry.put, key, entry)  # the intent, before sending
                        submitted = await self.hook.asubmit(call, claimed=self.registry.claims, retry=False)
                        self.t.submits += 1
                        self.budget.submitted_total += 1
                finally:
                    self.budget.submit.done(slot)
                assert entry is not None
                # Recorded before anything else happens: a restart or rerun must not pay again.
                await asyncio.to_thread(
                    self.registry.record_task, key, entry, submitted.task_id, submitted.request_id,
                    adopted=submitted.adopted,
                )  # fmt: skip
                self.dirty.pop(key, None)
        except DashScopeConfigError as exc:
            self.budget.outstanding -= 1
            self._fail(state, "InvalidParameter", str(exc), retryable=False)
            return
        except DashScopeAPIError as exc:
            self.budget.outstanding -= 1
            if sending and not exc.ambiguous and state.stage in state.entries:
                # The service answered: no task was created, so a rerun submits without a lookup.
                state.entries[state.stage].failed(exc.code or f"HTTP{exc.http_status}", str(exc),
                                                  retryable=exc.retryable)  # fmt: skip
                self.dirty[key] = state.entries[state.stage]
            # Still unknown whether the lost submit created a task: look before sending again.
            state.lookup = state.lookup or (exc.unresolved and state.stage in state.entries)
            self._on_error(state, exc, self.budget.submit, QUEUED)
            return
        now = self.clock()
        state.task_id = submitted.task_id
        state.task_ids[state.stage] = submitted.task_id
        state.submitted_at = now
        state.started_at = None
        state.errors = 0
        state.phase = WAITING
        self._track(state)
        self._replan(now)

    def _new_generation(self, state: ItemState, call: api.ApiCall) -> Submission:
        """The registry entry for a submit about to be sent (a new one, or the next generation)."""
        model = str((call.body or {}).get("model"))
        entry = state.entries.get(state.stage)
        if entry is None:
            entry = Submission(scope=f"{self.t.output} sku {state.item.sku} {state.stage}",
                               fingerprint=call.fingerprint(), model=model, owner=self.t.lease_holder)  # fmt: skip
            state.entries[state.stage] = entry
        else:
            entry.new_generation(call.fingerprint(), model, self.t.lease_holder)
        return entry

    async def _poll(self, state: ItemState, slot: Slot) -> None:
        assert state.task_id is not None
        self.t.queries += 1
        try:
            try:
                result = api.parse_task(await self.hook.arun_once(api.query_call(state.task_id)), state.task_id)
            finally:
                self.budget.query.done(slot)
        except DashScopeAPIError as exc:
            self._on_error(state, exc, self.budget.query, WAITING)
            if state.phase == WAITING:
                self._push_due(state, state.not_before)
            return
        state.errors = 0
        state.poll_now = False
        now = self.clock()
        if result.outcome is Outcome.RUNNING:
            state.phase = WAITING
            if result.raw_status == "PENDING":
                state.not_started_by = now
            elif state.started_at is None:
                state.started_at = self._start_time(result, state, now)
            if now >= state.predicted_end:
                state.late_looks += 1
                if state.started_at is not None and self.budget.latency is not None:
                    # Still running after the predicted latency: the latency is at least this long.
                    self.budget.latency = max(self.budget.latency, now - state.started_at)
            state.last_seen = now
            self._replan(now)
            return
        self.budget.outstanding -= 1
        self._untrack(state)
        self._learn_latency(result, state, now)
        self.budget.task_ended(self._end_time(result, state, now))
        self._replan(now)
        entry = state.entries.get(state.stage)
        if entry is not None and entry.task_id == state.task_id:
            # Only a coarse result's URL is kept (the refine request needs it); a refined image is
            # fetched through a fresh query, so its signed URL is never written down.
            entry.status = result.status.value
            entry.image_url = result.image_url if state.stage == STAGE_COARSE else None
            entry.code, entry.message, entry.failure = result.code, result.message, None
            self.dirty[item_key(state.item.sku, state.stage)] = entry
        if result.outcome is Outcome.FAILURE:
            code = result.code or result.status.value
            retryable = not is_permanent(result.code) and state.task_failures < self.t.max_task_failures
            if retryable:
                state.task_failures += 1
                state.phase, state.task_id = QUEUED, None  # not charged: submit it again
                self.log.info("Item %s: DashScope task ended %s (%s); submitting again.", state.item.sku,
                              result.raw_status, code)  # fmt: skip
                return
            self._fail(state, code, result.message or f"the task ended {result.raw_status}",
                       retryable=not is_permanent(result.code))  # fmt: skip
            return
        if state.stage == STAGE_COARSE:
            state.coarse_url = result.image_url
            state.stage, state.phase, state.task_id = STAGE_REFINE, QUEUED, None
            return
        state.result_url = result.image_url
        state.phase = SAVING
        await self._save(state)

    async def _save(self, state: ItemState) -> None:
        from airflow_provider_aitryon.storage import save_image

        destination = image_uri(self.t.output, state.item.sku)
        try:
            saved = await asyncio.to_thread(
                save_image, state.result_url or "", destination, conn_id=self.t.storage_conn_id, attempts=3
            )
        except Exception as exc:  # the URL expired or storage refused: the paid image is not kept
            self._fail(state, "SaveFailed", str(exc), retryable=True)
            return
        entry = state.entries.get(STAGE_REFINE)
        if entry is not None:
            entry.saved_uri, entry.saved_sha256, entry.failure = saved["uri"], saved["sha256"], None
            self.dirty[item_key(state.item.sku, STAGE_REFINE)] = entry
        state.phase = DONE

    # ------------------------------------------------------------------ bookkeeping

    # ------------------------------------------------------------------ predicting ends

    def _track(self, state: ItemState) -> None:
        state.owner = self
        self.budget.tracked.append(state)

    def _untrack(self, state: ItemState) -> None:
        if state in self.budget.tracked:
            self.budget.tracked.remove(state)

    def _replan(self, now: float) -> None:
        """Predict when every outstanding task of the account ends, and when to query it.

        The account runs `max_running` tasks at a time, first come first served. Tasks seen
        running end one latency after they started; the others start, in submit order, when a
        slot frees (never before a query last found them PENDING). Each task is queried just after
        its predicted end, so a query usually finds it done. At most `max_outstanding` tasks are
        outstanding, so this is cheap to redo on every submit and every answer.
        """
        budget = self.budget
        latency = budget.latency or self.t.expected_latency
        budget.tracked = [s for s in budget.tracked if s.phase in (WAITING, POLLING)]
        slots: list[float] = []
        waiting: list[ItemState] = []
        for state in budget.tracked:
            if state.started_at is not None:
                state.predicted_end = state.started_at + latency
                heapq.heappush(slots, state.predicted_end)
            else:
                waiting.append(state)
        # The slots nobody is seen running in were freed when the last tasks ended.
        free_since = sorted(budget.recent_ends, reverse=True)[: max(0, budget.max_running - len(slots))]
        for freed in free_since:
            heapq.heappush(slots, freed)
        while len(slots) < budget.max_running:
            heapq.heappush(slots, -math.inf)
        for state in sorted(waiting, key=lambda s: s.submitted_at):
            start = max(state.submitted_at, state.not_started_by, heapq.heappop(slots))
            state.predicted_end = start + latency
            heapq.heappush(slots, state.predicted_end)
        oldest = min(budget.tracked, key=lambda s: s.submitted_at, default=None)
        for state in budget.tracked:
            if state.phase != WAITING:
                continue
            due = state.predicted_end + 0.05 * latency + 0.02
            if due <= now:
                # Running past its prediction: nearly done. Look again soon, then less and less
                # often, so a slow spell at the service costs a few queries, not one every instant.
                due = now + max(0.2 * latency * 2 ** min(state.late_looks, 5), 0.05)
            if state.poll_now:
                due = now  # restored from the registry: its status is not known in this run yet
            elif budget.ends_seen == 0 and oldest is not None and state is oldest:
                # No task has ended yet, so the latency is only the user's guess: check the oldest
                # task about once a second until the first end teaches the real latency.
                due = min(due, max(state.last_seen, now) + min(1.0, latency / 4))
            state.owner._push_due(state, max(due, state.not_before))

    def _push_due(self, state: ItemState, due: float) -> None:
        state.gen += 1
        heapq.heappush(self.due, (due, next(self.seq), state.gen, state))

    def _start_time(self, result: TaskResult, state: ItemState, now: float) -> float:
        """When a task seen RUNNING started: from the service's own times if it gave them."""
        submitted, scheduled = _parse_time(result.submit_time), _parse_time(result.scheduled_time)
        if submitted is not None and scheduled is not None and scheduled >= submitted:
            # Differences of the service's times only: its clock and zone are not ours.
            return min(now, state.submitted_at + (scheduled - submitted))
        # It started after it was submitted and after we last saw it not running: never before
        # that (a default 0 would put the start at half the machine's uptime on this clock).
        return (max(state.last_seen, state.not_started_by, state.submitted_at) + now) / 2

    def _end_time(self, result: TaskResult, state: ItemState, now: float) -> float:
        """When a task that is seen ended freed its slot, on our clock."""
        submitted, ended = _parse_time(result.submit_time), _parse_time(result.end_time)
        if submitted is not None and ended is not None and ended >= submitted:
            return min(now, state.submitted_at + (ended - submitted))
        return now

    def _learn_latency(self, result: TaskResult, state: ItemState, now: float) -> None:
        start, end = _parse_time(result.scheduled_time), _parse_time(result.end_time)
        observed = end - start if start is not None and end is not None and end > start else None
        if observed is None and state.started_at is not None:
            observed = now - state.started_at
        if observed is not None and observed > 0:
            self.budget.learn_latency(observed)

    def _on_error(self, state: ItemState, exc: DashScopeAPIError, bucket: Any, retry_phase: str) -> None:
        self.failures[_failure_class(exc)] += 1
        if is_account_wide(exc.code):
            self.fatal = str(exc)  # no item can succeed with this account; stop at once
            state.phase = FAILED
            return
        if exc.http_status == 429 or (exc.code or "").startswith("Throttling"):
            bucket.pause(exc.retry_after if exc.retry_after is not None else 1.0)
        if not exc.retryable:
            self._fail(state, exc.code or f"HTTP{exc.http_status}", exc.api_message or str(exc), retryable=False)
            return
        state.errors += 1
        # The one retry policy: full jitter, the service's Retry-After as a floor.
        state.not_before = self.clock() + backoff_delay(state.errors, base=0.5, cap=30.0, retry_after=exc.retry_after)
        state.phase = retry_phase

    def _fail(self, state: ItemState, code: str, message: str, *, retryable: bool) -> None:
        state.phase = FAILED
        entry = state.entries.get(state.stage)
        if entry is None:  # failed before any submit was recorded (its request could not be built)
            entry = state.entries[state.stage] = Submission(
                scope=f"{self.t.output} sku {state.item.sku} {state.stage}", fingerprint="unbuildable",
                model=self.t.coarse_model if state.stage == STAGE_COARSE else api.MODEL_REFINER,
                owner=self.t.lease_holder,
            )  # fmt: skip
        entry.failed(code, message, retryable=retryable)
        self.dirty[item_key(state.item.sku, state.stage)] = entry

    async def _flush(self) -> None:
        if self.registry is None:
            return
        # One writer at a time: a slower, older snapshot must never land after a newer one.
        async with self.flush_lock:
            batch, self.dirty = self.dirty, {}
            registry = self.registry

            def write() -> None:
                for key, entry in batch.items():
                    registry.put(key, entry)

            if batch:
                await asyncio.to_thread(write)
        self.last_flush = self.clock()

    async def _maybe_flush(self, now: float) -> None:
        if now - self.last_flush >= 0.5:
            await self._flush()

    async def _maybe_renew_lease(self, now: float) -> None:
        if self.lease is None or now - self.lease_renewed < self.lease.ttl / 3:
            return
        self.lease_renewed = now
        try:
            await asyncio.to_thread(self.lease.renew)
        except DashScopeConfigError as exc:  # another run took the partition (ours had expired)
            self.fatal = str(exc)

    def counts(self) -> dict[str, int]:
        done = sum(s.phase == DONE for s in self.items)
        failed = sum(s.phase == FAILED for s in self.items)
        return {
            "items": len(self.items),
            "succeeded": done,
            "failed": failed,
            "outstanding": len(self.items) - done - failed,
            "submits": self.t.submits,
            "queries": self.t.queries,
        }

    def _maybe_report_failures(self, now: float, *, force: bool = False) -> None:
        every = min(_FAILURE_REPORT_SECONDS, self.t.progress_interval)
        if not self.failures or (not force and now - self.last_failure_report < every):
            return
        self.last_failure_report = now
        summary = ", ".join(f"{count} x {kind}" for kind, count in self.failures.most_common())
        self.log.warning("Chunk failures in the last %.0f s (retried with backoff): %s.",
                         now - self.last_failure_report_start, summary)  # fmt: skip
        self.failures.clear()
        self.last_failure_report_start = now

    def _maybe_report(self, now: float) -> None:
        if now - self.last_progress < self.t.progress_interval:
            return
        self.last_progress = now
        c = self.counts()
        finished = c["succeeded"] + c["failed"]
        rate = finished / max(1e-9, now - self.started)
        eta = f"{c['outstanding'] / rate:.0f}s" if rate > 0 else "unknown"
        self.log.info(
            "Chunk progress: %d done, %d failed, %d outstanding of %d; %d submits, %d queries; ETA %s.",
            c["succeeded"], c["failed"], c["outstanding"], c["items"], c["submits"], c["queries"], eta,
        )  # fmt: skip

    async def _finish(self, status: str, message: str | None) -> dict[str, Any]:
        if self.in_flight:
            # Let requests in flight land (a submit's task id must reach the registry), then stop.
            await asyncio.wait(self.in_flight, timeout=60)
        for task in list(self.in_flight):
            task.cancel()
        self._maybe_report_failures(self.clock(), force=True)
        await self._flush()
        # Tasks this run leaves unfinished stop counting against the shared budget.
        self.budget.outstanding -= sum(s.phase in (SUBMITTING, WAITING, POLLING) for s in self.items)
        self.budget.tracked = [s for s in self.budget.tracked if s.owner is not self]
        return {"status": status, "message": message, "counts": self.counts()}


def _failure_class(exc: DashScopeAPIError) -> str:
    """``query HTTP 503 ModelUnavailable``: the call, the status and the code, nothing item-specific."""
    parts = [exc.operation, f"HTTP {exc.http_status}" if exc.http_status else "no reply", exc.code or ""]
    return " ".join(p for p in parts if p)
