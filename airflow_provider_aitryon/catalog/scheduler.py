"""The catalog chunk scheduler: carry one chunk of catalog items to saved images.

Per item: [coarse submit → wait] → refine submit → wait → save the refined image. Submits go out
within the account's submit rate, with a bounded number of tasks outstanding (the account runs 5
at a time; the rest queue at DashScope). Waiting is the account engine's (`engine`): every
submitted task is registered with it, and it asks about each when its end is predicted, sharing
the account's query budget and learned latencies with every other waiter in the process.

Restart-safe and rerun-safe: every submit is recorded in the partition's submission registry
(``<output>/registry/items/``, one entry per item and stage) before it is sent, and again the moment
its task id is known. Whatever run carries an item next (rebuilt after a triggerer restart, a
retried task, a rerun with other chunks) replays its entry with `catalog.replay` and waits for what
was submitted instead of paying for it again. While it works it renews the run's lease on the
partition. `triggers.catalog.CatalogChunkTrigger` adapts this to Airflow.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from airflow_provider_aitryon import api
from airflow_provider_aitryon.catalog import (
    DONE,
    FAILED,
    LOOKUP,
    QUEUED,
    STAGE_COARSE,
    STAGE_REFINE,
    WAITING,
    CatalogItem,
    _path,
    has_oss_inputs,
    image_uri,
    is_permanent,
    load_entries,
    partition_lease,
    replay,
)
from airflow_provider_aitryon.connection import DEFAULT_CONN_ID
from airflow_provider_aitryon.engine import AccountEngine, AccountLimits, Slot, Watch, engine_for
from airflow_provider_aitryon.engine.account import Transport
from airflow_provider_aitryon.engine.limits import RateLimiter
from airflow_provider_aitryon.errors import DashScopeAPIError, DashScopeConfigError, is_account_wide, is_throttled
from airflow_provider_aitryon.models import Outcome, SubmittedTask, TaskResult
from airflow_provider_aitryon.oss.settings import OssSettings, aload_settings
from airflow_provider_aitryon.registry import (
    INTENT_WINDOW_SECONDS,
    Submission,
    SubmissionRegistry,
    item_key,
    partition_registry,
)
from airflow_provider_aitryon.registry.lease import PartitionLease
from airflow_provider_aitryon.retry import backoff_delay
from airflow_provider_aitryon.sources import DEFAULT_EXPIRES, DEFAULT_OSS_CONN_ID, asendable
from airflow_provider_aitryon.storage import save_image

# Item phases: those `catalog.replay` reads from the registry (QUEUED, WAITING, DONE, FAILED) and
# the in-flight ones only a running chunk knows. An item is in exactly one; the loop moves it along.
SUBMITTING, SAVING = "submitting", "saving"
_FAILURE_REPORT_SECONDS = 60.0


class ChunkClient(Transport, Protocol):
    """What a chunk run needs of a client beyond the engine's: submitting and finding lost submits.

    The hook is one (`hooks.dashscope.DashScopeHook`); this module never imports it.
    """

    async def asubmit(
        self, call: api.ApiCall, *, claimed: Container[str] | None = None, retry: bool = True
    ) -> SubmittedTask: ...

    async def afind_submitted(
        self, call: api.ApiCall, sent_at: float, lost_at: float, *, claimed: Container[str] | None = None
    ) -> SubmittedTask | None: ...


@dataclass
class ChunkJob:
    """What a chunk run needs to know: the trigger's kwargs, minus anything Airflow-specific.

    :param chunk_uri: JSONL file of the chunk's items (written by the planning task).
    :param output: where refined images are saved; the partition's registry lives below it.
    :param dashscope_conn_id: connection (one account); its engine is shared with other waiters.
    :param coarse_model: model of the coarse stage, for items without a coarse image.
    :param expected_latency: first guess of seconds a task runs, until the engine has seen one end.
    :param max_outstanding: tasks submitted but not ended, per account.
    :param submit_rate: submits per second, the account's limit (DashScope: 10).
    :param query_rate: task queries per second, the account's limit (DashScope: 20).
    :param max_running: tasks the account runs at once (DashScope: 5).
    :param end_time: epoch seconds; then the run stops with a ``timeout`` event.
    :param progress_interval: seconds between progress lines.
    :param max_task_failures: tasks that end FAILED for a transient reason, per item, resubmitted.
    :param storage_conn_id: connection of the object store holding chunk, registry and output.
    :param lease_holder: the run that holds the partition's lease (``<dag_id>/<run_id>``).
    :param oss_conn_id: the ``oss`` connection that signs ``oss://`` images (read once per run).
    :param oss_url_expiry: seconds a signed image URL stays valid.
    """

    chunk_uri: str
    output: str = ""
    dashscope_conn_id: str = DEFAULT_CONN_ID
    coarse_model: str = api.MODEL_TRYON
    expected_latency: float = 10.0
    max_outstanding: int = 20
    submit_rate: float = 10.0
    query_rate: float = 20.0
    max_running: int = 5
    end_time: float | None = None
    progress_interval: float = 30.0
    max_task_failures: int = 2
    storage_conn_id: str | None = None
    lease_holder: str | None = None
    oss_conn_id: str = DEFAULT_OSS_CONN_ID
    oss_url_expiry: float = DEFAULT_EXPIRES.total_seconds()

    def __post_init__(self) -> None:
        # Templated operator arguments arrive as text; the scheduler counts in numbers.
        for name in ("expected_latency", "submit_rate", "query_rate", "progress_interval", "oss_url_expiry"):
            setattr(self, name, float(getattr(self, name)))
        for name in ("max_outstanding", "max_running", "max_task_failures"):
            setattr(self, name, int(getattr(self, name)))
        if self.end_time is not None:
            self.end_time = float(self.end_time)


@dataclass(eq=False)
class ItemState:
    item: CatalogItem
    stage: str
    phase: str = QUEUED
    task_id: str | None = None
    task_ids: dict[str, str] = field(default_factory=dict)
    coarse_url: str | None = None
    result_url: str | None = None
    submitted_at: float = 0.0  # on the engine's clock
    poll_now: bool = False  # restored from the registry: ask at once instead of predicting
    not_before: float = 0.0  # backoff after a transient submit error
    errors: int = 0
    task_failures: int = 0
    entries: dict[str, Submission] = field(default_factory=dict)  # stage → its registry entry
    lookup: bool = False  # an earlier submit's task id was never recorded: find it before sending
    watch: Watch | None = None


class ChunkRun:
    """One run of one chunk: items, submits in flight, the registry and the lease."""

    def __init__(
        self,
        job: ChunkJob,
        hook: ChunkClient,
        log: Any = None,
        connect: Callable[[], Transport] | None = None,
    ) -> None:
        self.t = job
        self.hook = hook
        self.log = log or logging.getLogger(__name__)
        self.engine: AccountEngine = engine_for(
            job.dashscope_conn_id,
            AccountLimits(submit_rate=job.submit_rate, query_rate=job.query_rate, max_running=job.max_running),
            connect=connect,
        )
        self.clock = self.engine.clock
        self.items: list[ItemState] = []
        self.in_flight: set[asyncio.Task[None]] = set()  # submits and saves: let them land
        self.submitting: set[asyncio.Task[None]] = set()
        self.following: set[asyncio.Task[None]] = set()  # waits: cancelled when the run stops
        self.registry: SubmissionRegistry | None = None
        self.dirty: dict[str, Submission] = {}  # registry entries changed since the last flush
        self.lease: PartitionLease | None = None
        self.lease_renewed = 0.0
        self.partition_read = False  # all the partition's recorded task ids remembered as claimed
        self.fatal: str | None = None
        self.oss_settings: OssSettings | None = None  # read once, when an item has an oss:// image
        self.submits = 0
        self.queries = 0
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
        if has_oss_inputs(items):
            # A missing or wrong OSS connection stops the run in one sentence before any submit,
            # instead of failing every item for good.
            self.oss_settings = await aload_settings(self.t.oss_conn_id)
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
            # When it was submitted, moved onto the engine's clock (the registry keeps epoch seconds).
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
            # registry, so the run rebuilt elsewhere waits for them instead of submitting again.
            await self._drain()
            raise

    async def _drain(self) -> None:
        await self._stop_waiting()
        if self.submitting:
            await asyncio.wait(self.submitting, timeout=60)
        await self._flush()
        self._release_outstanding()

    async def _run(self) -> dict[str, Any]:
        try:
            await self._load()
        except DashScopeConfigError as exc:  # the partition is held by another run
            return {"status": "error", "message": str(exc), "counts": self.counts()}
        for state in self.items:
            if state.phase == WAITING:
                self.engine.outstanding += 1
                self._follow(state)
        while self.fatal is None and any(s.phase not in (DONE, FAILED) for s in self.items):
            now = self.clock()
            if self.t.end_time is not None and time.time() >= self.t.end_time:
                return await self._finish("timeout", "the chunk did not finish before its deadline")
            self._launch_submits(now)
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
            if self.engine.outstanding >= self.t.max_outstanding:
                return
            if state.phase != QUEUED or state.not_before > now:
                continue
            slot = self.engine.submit.try_acquire()
            if slot is None:
                return
            state.phase = SUBMITTING
            self.engine.outstanding += 1  # counted now so parallel submits respect the cap
            task = self._spawn(self._submit(state, slot))
            self.submitting.add(task)
            task.add_done_callback(self.submitting.discard)

    async def _idle(self, now: float) -> None:
        """Sleep until something can happen: a request returns, a task ends or a token refills."""
        waits = [1.0]
        if any(s.phase == QUEUED for s in self.items) and self.engine.outstanding < self.t.max_outstanding:
            waits.append(self.engine.submit.wait_time())
            waits.extend(s.not_before - now for s in self.items if s.phase == QUEUED and s.not_before > now)
        timeout = max(0.005, min(waits))
        busy = self.in_flight | self.following
        if busy:
            await asyncio.wait(busy, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(timeout)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)
        return task

    def _follow(self, state: ItemState) -> None:
        """Register a submitted task with the engine and carry the item on when it ends."""
        task = asyncio.ensure_future(self._wait(state))
        self.following.add(task)
        task.add_done_callback(self.following.discard)

    # ------------------------------------------------------------------ actions

    async def _submit(self, state: ItemState, slot: Slot) -> None:
        item = state.item
        assert self.registry is not None
        key = item_key(item.sku, state.stage)
        sending = False  # True once the submit itself is on its way (not the lookup before it)
        try:
            call = item.call(state.stage, coarse_image_url=state.coarse_url, coarse_model=self.t.coarse_model)
            entry = state.entries.get(state.stage)
            async with self.engine.submit_lock():
                try:
                    submitted = None
                    if state.lookup and entry is not None:
                        # An earlier submit's outcome is unknown (a run died before recording its
                        # task id, or a lost reply could not be looked up): find it, never resend blindly.
                        if not self.partition_read:
                            # Every task recorded anywhere in the partition is ours, whichever chunk
                            # holds its item: another chunk of this run may not have read it yet.
                            await asyncio.to_thread(self.registry.entries)
                            self.partition_read = True
                        submitted = await self.hook.afind_submitted(
                            call, entry.intent_at, entry.intent_at + INTENT_WINDOW_SECONDS,
                            claimed=self.registry.claims,
                        )  # fmt: skip
                        state.lookup = False
                    if submitted is None:
                        sending = True
                        entry = self._new_generation(state, call)
                        await asyncio.to_thread(self.registry.put, key, entry)  # the intent, before sending
                        # Signed only now (the fingerprint is the unsigned call's): a fresh URL each send.
                        sent = await asendable(call, oss_conn_id=self.t.oss_conn_id,
                                               expires=timedelta(seconds=self.t.oss_url_expiry),
                                               settings=self.oss_settings)  # fmt: skip
                        submitted = await self.hook.asubmit(sent.call, claimed=self.registry.claims, retry=False)
                        self.submits += 1
                        self.engine.submitted_total += 1
                finally:
                    self.engine.submit.done(slot)
                assert entry is not None
                # Recorded before anything else happens: a restart or rerun must not pay again.
                await asyncio.to_thread(
                    self.registry.record_task, key, entry, submitted.task_id, submitted.request_id,
                    adopted=submitted.adopted,
                )  # fmt: skip
                self.dirty.pop(key, None)
        except DashScopeConfigError as exc:
            self.engine.outstanding -= 1
            self._fail(state, "InvalidParameter", str(exc), retryable=False)
            return
        except DashScopeAPIError as exc:
            self.engine.outstanding -= 1
            if sending and not exc.ambiguous and state.stage in state.entries:
                # The service answered: no task was created, so a rerun submits without a lookup.
                state.entries[state.stage].failed(exc.code or f"HTTP{exc.http_status}", str(exc),
                                                  retryable=exc.retryable)  # fmt: skip
                self.dirty[key] = state.entries[state.stage]
            # Still unknown whether the lost submit created a task: look before sending again.
            state.lookup = state.lookup or (exc.unresolved and state.stage in state.entries)
            self._on_error(state, exc, self.engine.submit, QUEUED)
            return
        state.task_id = submitted.task_id
        state.task_ids[state.stage] = submitted.task_id
        state.submitted_at = self.clock()
        state.errors = 0
        state.phase = WAITING
        self._follow(state)

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

    async def _wait(self, state: ItemState) -> None:
        assert state.task_id is not None
        model = self.t.coarse_model if state.stage == STAGE_COARSE else api.MODEL_REFINER
        watch = state.watch = self.engine.watch(
            state.task_id,
            model=model,
            submitted_at=state.submitted_at,
            poll_now=state.poll_now,
            expected_latency=self.t.expected_latency,
            max_interval=max(1.0, self.t.expected_latency),
            observer=self._count_failure,
        )
        try:
            result: TaskResult = await asyncio.shield(watch.done)
        except DashScopeAPIError as exc:
            self.engine.outstanding -= 1
            self._on_error(state, exc, None, WAITING)
            return
        finally:
            self.queries += watch.queries
            self.engine.forget(watch)
            state.watch = None
        state.poll_now = False
        self.engine.outstanding -= 1
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
        self._spawn(self._save(state))  # a save lands even when the run is stopping

    def _count_failure(self, exc: DashScopeAPIError) -> None:
        self.failures[_failure_class(exc)] += 1

    async def _save(self, state: ItemState) -> None:
        destination = image_uri(self.t.output, state.item.sku)
        try:
            saved = await asyncio.to_thread(
                save_image, state.result_url or "", destination, conn_id=self.t.storage_conn_id, attempts=3,
                report_lineage=False,  # the chunk's operator reports the images folder, per partition
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

    def _on_error(
        self, state: ItemState, exc: DashScopeAPIError, limiter: RateLimiter | None, retry_phase: str
    ) -> None:
        """A submit failed, or a wait ended in an error the engine does not retry."""
        if limiter is not None:  # a wait's failed looks were counted by the engine's observer
            self._count_failure(exc)
        if is_account_wide(exc.code):
            self.fatal = str(exc)  # no item can succeed with this account; stop at once
            state.phase = FAILED
            return
        if limiter is not None and is_throttled(exc):
            limiter.throttled_by_service(exc.retry_after)
        if not exc.retryable:
            self._fail(state, exc.code or f"HTTP{exc.http_status}", exc.api_message or str(exc), retryable=False)
            return
        state.errors += 1
        # The one retry policy: full jitter, the service's Retry-After as a floor.
        state.not_before = self.clock() + backoff_delay(state.errors, base=0.5, cap=30.0, retry_after=exc.retry_after)
        state.phase = retry_phase
        if retry_phase == WAITING:
            self.engine.outstanding += 1
            self._follow(state)

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
            "submits": self.submits,
            "queries": self.queries,
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
        await self._stop_waiting()
        if self.in_flight:
            # Let requests in flight land (a submit's task id must reach the registry), then stop.
            await asyncio.wait(self.in_flight, timeout=60)
        for task in list(self.in_flight):
            task.cancel()
        self._maybe_report_failures(self.clock(), force=True)
        await self._flush()
        self._release_outstanding()
        return {"status": status, "message": message, "counts": self.counts()}

    async def _stop_waiting(self) -> None:
        for task in list(self.following):
            task.cancel()
        if self.following:
            await asyncio.gather(*self.following, return_exceptions=True)

    def _release_outstanding(self) -> None:
        # Tasks this run leaves unfinished stop counting against the account's shared cap.
        self.engine.outstanding -= sum(s.phase in (SUBMITTING, WAITING) for s in self.items)


def _failure_class(exc: DashScopeAPIError) -> str:
    """``query HTTP 503 ModelUnavailable``: the call, the status and the code, nothing item-specific."""
    parts = [exc.operation, f"HTTP {exc.http_status}" if exc.http_status else "no reply", exc.code or ""]
    return " ".join(p for p in parts if p)
