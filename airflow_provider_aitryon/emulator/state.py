"""Accounts, the task queue, rate windows, faults and counters: the emulator's service logic.

Scheduling is an exact, lazy discrete-event simulation over an injectable clock. Nothing ticks
in the background: whenever a request (or a finished render) touches an account, the account is
advanced to "now" by replaying every event that happened since, in time order. When a running
task ends at time t, the oldest queued task of the same account starts at t, not at the time of
the request that happens to observe it. Under a ``ManualClock`` the whole history is therefore a
pure function of the submit times and the clock readings, which is what makes queueing tests
deterministic and lets benchmarks run minutes of simulated load in seconds.

Rendering, however, is real work on real threads. A task's simulated end is therefore
``max(start + latency, ready_at)``, where ``ready_at`` is the clock reading when its output was
ready: a task never reads SUCCEEDED before its PNG can be downloaded. Renders start at submit
time in a small pool of daemon threads (``workers``); ``wait_idle()`` lets a test wait for them
before moving a manual clock.

Accounts: every distinct API key is one account (its own queue, ``max_running`` slots and rate
windows). A task is only visible to the account that created it; any other key reads UNKNOWN.

Error codes chosen where the vendor is silent:

* cancel of a task that exists but is not PENDING: HTTP 400 ``UnsupportedOperation``;
* cancel of an unknown or expired task: HTTP 404 ``NotFound``;
* a throttled request (over ``submit_rate`` / ``query_rate``, sliding one-second window per
  key): HTTP 429 ``Throttling.RateQuota`` with ``Retry-After: 1``; it creates nothing and does not
  use up the window. A request that passes the rate check uses it up even if it is then refused
  as invalid, as a gateway in front of the service would count it. Auth and the async header
  are checked before the rate.

Every task takes ``latency`` (or ``latency_by_model[model]``) seconds of RUNNING, whether it will
succeed or fail; a task whose inputs are bad ends FAILED after the same time.

Wall-clock times: a task stores simulated-clock instants; they become the vendor's wall-clock text
only when reported, as ``epoch + (instant - clock origin) + clock_skew_seconds`` in the
``tz_offset_hours`` zone. The task list's ``start_time``/``end_time`` filters are read as wall times
of that same (skewed) clock. Because the skew is added at reporting time, changing it at runtime
shifts every later reply, old tasks included, exactly as a service whose clock was adjusted would.

Lost replies (``lost_reply_submits``): the decision is taken here, after a submit was accepted and
its task created, and handed to the HTTP layer in ``Reply.lost_reply``; a rejected submit never
consumes it. With ``neighbor_submit_seconds`` set, a lost reply is preceded by a neighbour's task
(same account, model and inputs, ``submitted`` backdated by that many seconds, rendered with a
marker so its PNG differs from ours). It joins the queue just ahead of ours and runs through the
normal scheduling, so its ``scheduled_time`` is no earlier than our submit's arrival. It counts in
``submits_accepted`` but does not use up the account's submit rate window (its slot, that far in
the past, would have slid out already).

Every accepted submit gets a ``request_digest``: the first 16 hex digits of the sha256 of the
canonical JSON (sorted keys, no spaces) of ``{"model", "input", "parameters"}`` as the service
understood them (defaults filled in, empty optional URLs dropped; see ``request_digest``), so an
audit can count how many tasks one logical request cost.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import math
import queue
import random
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_aitryon import downloads
from airflow_provider_aitryon.downloads import DownloadBounds, DownloadError
from airflow_provider_aitryon.emulator.config import EmulatorConfig, apply_updates
from airflow_provider_aitryon.emulator.imaging import (
    FetchError,
    FetchTooLarge,
    RenderCache,
    Rendered,
    TaskFailure,
    run_task,
)
from airflow_provider_aitryon.emulator.protocol import (
    MODELS,
    MSG_CANCEL_NOT_PENDING,
    MSG_INVALID_API_KEY,
    MSG_INVALID_PARAMETER,
    MSG_MODEL_NOT_FOUND,
    MSG_RATE_QUOTA,
    MSG_SYNC_NOT_SUPPORTED,
    MSG_TASK_NOT_FOUND,
    ApiError,
    SubmitRequest,
    validate_submit,
)
from airflow_provider_aitryon.emulator.temp_storage import (
    UPLOAD_ROUTE,
    TemporaryStorage,
    Unresolvable,
    UploadRefused,
)
from airflow_provider_aitryon.image_rules import MAX_BYTES

SIM_STATUSES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED")
STATS_STATUSES = (*SIM_STATUSES, "EXPIRED")
FAULT_KINDS = ("5xx", "429", "drop", "slow", "malformed")
# The User-Agent of the emulator's input fetches (an image host, or a test, can tell them from a worker's).
EMULATOR_FETCH_AGENT = "aitryon-emulator-fetch"

# A fetch larger than this is not read to the end: it already breaks the 5 MB rule.
FETCH_CAP = 4 * MAX_BYTES
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
SUBMITTER_CLIENT = "client"
SUBMITTER_NEIGHBOR = "neighbor"


class ManualClock:
    """A clock that only moves when told to; pass it as ``EmulatorConfig(clock=...)``."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, when: float) -> None:
        with self._lock:
            self._now = float(when)


@dataclass
class Reply:
    """What the HTTP layer should send back for one API call.

    ``lost_reply`` (one of ``config.LOST_REPLY_KINDS``) tells the HTTP layer to lose this reply
    instead of sending it; the service side of the call has already happened.
    """

    status: int
    body: dict[str, Any] | list[Any]
    headers: dict[str, str] = field(default_factory=dict)
    accepted_task: str | None = None
    lost_reply: str | None = None


@dataclass(frozen=True)
class FaultPlan:
    """The infrastructure misbehaviour drawn for one API request.

    ``after`` means the request is processed normally first (a drop then loses the response; a
    malformed reply is the real body, truncated); otherwise the request never reaches the service.
    """

    slow: bool
    kind: str | None
    after: bool
    server_error_status: int


@dataclass
class Task:
    seq: int
    task_id: str
    account: str
    model: str
    input: dict[str, str]
    parameters: dict[str, Any]
    submitted: float
    duration: float
    request_id: str
    status: str = "PENDING"
    started: float | None = None
    ended: float | None = None
    ready_at: float | None = None
    result: Rendered | None = None
    failure: TaskFailure | None = None
    # "client" for tasks the client under test submitted, "neighbor" for the injected other submitter.
    submitter: str = SUBMITTER_CLIENT
    request_digest: str = ""
    # The submit carried X-DashScope-OssResourceResolve: enable, so its oss:// inputs are resolved.
    oss_resolve: bool = False


@dataclass
class Account:
    queue: collections.deque[Task] = field(default_factory=collections.deque)
    running: list[Task] = field(default_factory=list)
    submit_window: collections.deque[float] = field(default_factory=collections.deque)
    query_window: collections.deque[float] = field(default_factory=collections.deque)
    max_running: int = 0


def _new_id() -> str:
    return str(uuid.uuid4())


def request_digest(req: SubmitRequest) -> str:
    """Short digest of what a submit asks for: model + input + parameters, canonical JSON, sha256[:16].

    Computed over the validated request, so bodies that differ only in spelled-out defaults or an
    empty optional URL count as the same request, as they cost the same task.
    """
    canonical = json.dumps(
        {"model": req.model, "input": req.input, "parameters": req.parameters}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _error_body(code: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    return {"request_id": request_id or _new_id(), "code": code, "message": message}


def _fresh_counters() -> dict[str, Any]:
    return {
        "requests_total": 0,
        "submit_requests": 0,
        "submits_accepted": 0,
        "submits_by_model": {},
        "submits_rejected": 0,
        "rejections_by_code": {},
        "queries": 0,
        "list_requests": 0,
        "cancel_requests": 0,
        "cancels_accepted": 0,
        "throttled_429": 0,
        "throttled_by_endpoint": {"submit": 0, "query": 0, "upload_policy": 0},
        "faults": {**{kind: 0 for kind in FAULT_KINDS}, "lost_submit_responses": 0},
        "results_served": 0,
        "results_missing": 0,
        "fetches": 0,
        "fetch_errors": 0,
        "neighbor_tasks": 0,
        # DashScope's temporary storage (temp_storage.py): getPolicy calls on arrival, uploads
        # stored or refused (by OSS error code), oss:// inputs read from it or refused.
        "upload_policy_requests": 0,
        "uploads": 0,
        "uploads_rejected": 0,
        "upload_rejections_by_code": {},
        "oss_inputs_resolved": 0,
        "oss_inputs_refused": 0,
    }


class EmulatorState:
    """Thread-safe service state; the HTTP handler turns requests into calls on this object."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.base_url = f"http://{config.host}:{config.port}"
        self._lock = threading.RLock()
        self._clock_origin = config.clock()
        self._epoch = config.epoch if config.epoch is not None else dt.datetime.now(dt.timezone.utc).timestamp()
        self._rng = random.Random(config.seed)
        self._tasks: dict[str, Task] = {}
        self._accounts: dict[str, Account] = {}
        self._seq = 0
        self._generation = 0
        self._counters = _fresh_counters()
        self._request_log: collections.deque[dict[str, Any]] = collections.deque(maxlen=config.request_log_size)
        self._fingerprint_key = secrets.token_bytes(16)
        self._request_seq = 0
        self._jobs: queue.Queue[tuple[int, str] | None] = queue.Queue()
        self._busy = 0
        self._idle = threading.Condition(self._lock)
        self._workers: list[threading.Thread] = []
        self._render_cache = RenderCache()
        self._temp_storage = TemporaryStorage(clock=self.now, wall=self.wall_time)
        self._policy_windows: dict[tuple[str, str], collections.deque[float]] = {}

    # ------------------------------------------------------------------ lifecycle

    def start_workers(self) -> None:
        for i in range(self.config.workers):
            t = threading.Thread(target=self._work, name=f"aitryon-emulator-render-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def stop_workers(self) -> None:
        for _ in self._workers:
            self._jobs.put(None)
        self._workers.clear()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until every queued render has finished; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout=timeout)

    def update(self, updates: dict[str, Any], *, started: bool) -> EmulatorConfig:
        with self._lock:
            new = apply_updates(self.config, updates, started=started)
            if new.request_log_size != self.config.request_log_size:
                self._request_log = collections.deque(self._request_log, maxlen=new.request_log_size)
            if "seed" in updates:
                self._rng = random.Random(new.seed)
            if "clock" in updates and not self._tasks:
                self._clock_origin = new.clock()
            self.config = new
            return new

    def reset(self) -> None:
        """Forget tasks, accounts, counters and the request log; re-seed the fault generator."""
        with self._lock:
            self._generation += 1
            self._tasks.clear()
            self._accounts.clear()
            self._counters = _fresh_counters()
            self._request_log.clear()
            self._rng = random.Random(self.config.seed)
            self._temp_storage.clear()
            self._policy_windows.clear()

    # ------------------------------------------------------------------ time

    def now(self) -> float:
        return self.config.clock()

    def wall_time(self, t: float) -> float:
        """The service's Unix time for a simulated instant, clock skew included (the current skew)."""
        return self._epoch + (t - self._clock_origin) + self.config.clock_skew_seconds

    def format_time(self, t: float) -> str:
        """Wall-clock text for a simulated instant, like the vendor's "2026-01-01 10:00:00.123"."""
        wall = self.wall_time(t)
        tz = dt.timezone(dt.timedelta(hours=self.config.tz_offset_hours))
        stamp = dt.datetime.fromtimestamp(wall, tz=tz)
        return stamp.strftime("%Y-%m-%d %H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"

    # ------------------------------------------------------------------ simulation

    def _account(self, key: str) -> Account:
        acct = self._accounts.get(key)
        if acct is None:
            acct = self._accounts[key] = Account()
        return acct

    def _end_time(self, task: Task) -> float | None:
        if task.ready_at is None or task.started is None:
            return None
        return max(task.started + task.duration, task.ready_at)

    def _fill(self, acct: Account, at: float) -> None:
        while acct.queue and len(acct.running) < self.config.max_running:
            task = acct.queue.popleft()
            task.status = "RUNNING"
            task.started = max(at, task.submitted)
            acct.running.append(task)
        acct.max_running = max(acct.max_running, len(acct.running))

    def _advance(self, acct: Account, now: float) -> None:
        """Replay, in time order, every task end up to ``now`` and the queue starts it causes."""
        while True:
            best: Task | None = None
            best_end = math.inf
            for task in acct.running:
                end = self._end_time(task)
                if end is None or end > now:
                    continue
                if best is None or (end, task.seq) < (best_end, best.seq):
                    best, best_end = task, end
            if best is None:
                break
            acct.running.remove(best)
            best.ended = best_end
            best.status = "SUCCEEDED" if best.failure is None else "FAILED"
            self._fill(acct, best_end)
        # Only a runtime increase of max_running can leave free slots next to a non-empty queue;
        # those tasks start now.
        self._fill(acct, now)

    def _advance_all(self, now: float) -> None:
        for acct in self._accounts.values():
            self._advance(acct, now)

    def _expired(self, task: Task, now: float) -> bool:
        anchor = task.ended if task.ended is not None else task.submitted
        return now >= anchor + self.config.expiry_seconds

    def _visible_task(self, account: str, task_id: str, now: float) -> Task | None:
        task = self._tasks.get(task_id)
        if task is None or task.account != account:
            return None
        self._advance(self._accounts[account], now)
        if self._expired(task, now):
            task.result = None  # free the PNG; its URL is dead from now on
            return None
        return task

    # ------------------------------------------------------------------ workers

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            generation, task_id = job
            try:
                self._process(generation, task_id)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _process(self, generation: int, task_id: str) -> None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or generation != self._generation:
                return
            model, urls, params = task.model, dict(task.input), dict(task.parameters)
            canceled = task.status == "CANCELED"
            marker = task.submitter == SUBMITTER_NEIGHBOR
            oss_scope = (task.oss_resolve, task.account, task.model)
        if canceled:  # nobody will ever see this output
            with self._lock:
                task.ready_at = self.now()
            return
        rendered: Rendered | None = None
        failure: TaskFailure | None = None
        try:
            rendered = run_task(
                model, urls, params, lambda url: self._fetch(url, oss_scope), self._render_cache, marker=marker
            )
        except TaskFailure as exc:
            failure = exc
        except Exception as exc:  # a render bug must fail the task, not kill the worker
            failure = TaskFailure("InternalError.Algo", "An internal error has occured during execution.", repr(exc))
        with self._lock:
            if generation != self._generation or self._tasks.get(task_id) is not task:
                return
            task.result, task.failure = rendered, failure
            task.ready_at = self.now()
            self._advance(self._account(task.account), task.ready_at)

    def _fetch(self, url: str, oss_scope: tuple[bool, str, str] | None = None) -> bytes:
        """An input's bytes: ``oss://`` from the temporary storage (``oss_scope`` = the task's
        (resolve header, account, model)), anything else over HTTP."""
        if url.startswith("oss://"):
            return self._read_uploaded(url, oss_scope or (False, "", ""))
        with self._lock:
            self._counters["fetches"] += 1
            allow_external = self.config.allow_external_fetch
            timeout = self.config.fetch_timeout
        host = (urllib.parse.urlsplit(url).hostname or "").lower()
        try:
            if not allow_external and host not in LOOPBACK_HOSTS and not host.startswith("127."):
                raise FetchError(f"the emulator only fetches loopback URLs (allow_external_fetch is off): {url}")
            # The provider's own downloader, as a real fetcher would be: bounded in time and size.
            bounds = DownloadBounds(connect_timeout=timeout, read_timeout=timeout, deadline=3 * timeout,
                                    max_bytes=FETCH_CAP)  # fmt: skip
            try:
                reply = downloads.fetch(url, bounds=bounds, headers={"User-Agent": EMULATOR_FETCH_AGENT})
            except DownloadError as exc:
                if exc.kind == "too_large":
                    raise FetchTooLarge(f"{url} is over {FETCH_CAP} bytes") from None
                raise FetchError(f"cannot fetch {url}: it {exc.reason}") from None
            if not 200 <= reply.status < 300:
                raise FetchError(f"HTTP {reply.status} fetching {url}")
            data = reply.body
        except FetchError:
            with self._lock:
                self._counters["fetch_errors"] += 1
            raise
        return data

    def _read_uploaded(self, url: str, oss_scope: tuple[bool, str, str]) -> bytes:
        resolve, account, model = oss_scope
        with self._lock:
            try:
                if not resolve:
                    raise Unresolvable(
                        f"{url} is an oss:// URL but the submit did not send X-DashScope-OssResourceResolve: enable"
                    )
                data = self._temp_storage.resolve(url, account, model, ttl=self.config.upload_ttl_seconds)
            except Unresolvable as exc:
                self._counters["oss_inputs_refused"] += 1
                raise FetchError(str(exc)) from None
            self._counters["oss_inputs_resolved"] += 1
        if len(data) > FETCH_CAP:
            raise FetchTooLarge(f"{url} is over {FETCH_CAP} bytes")
        return data

    # ------------------------------------------------------------------ faults

    def draw_fault(self) -> FaultPlan:
        """Decide the misbehaviour for one API request; always draws 3 numbers to stay repeatable."""
        with self._lock:
            cfg = self.config
            r_slow, r_kind, r_variant = self._rng.random(), self._rng.random(), self._rng.random()
            slow = r_slow < cfg.fault_slow
            kind: str | None = None
            edge = 0.0
            for name, p in (
                ("5xx", cfg.fault_5xx),
                ("429", cfg.fault_429),
                ("drop", cfg.fault_drop),
                ("malformed", cfg.fault_malformed),
            ):
                edge += p
                if r_kind < edge:
                    kind = name
                    break
            faults = self._counters["faults"]
            if slow:
                faults["slow"] += 1
            if kind is not None:
                faults[kind] += 1
            return FaultPlan(
                slow=slow, kind=kind, after=r_variant < 0.5, server_error_status=500 if r_variant < 0.5 else 503
            )

    def note_lost_submit(self) -> None:
        with self._lock:
            self._counters["faults"]["lost_submit_responses"] += 1

    # ------------------------------------------------------------------ API

    def note_request(self, kind: str) -> None:
        """Count an API request as received, before faults or checks."""
        with self._lock:
            self._counters["requests_total"] += 1
            counter = {
                "submit": "submit_requests",
                "query": "queries",
                "list": "list_requests",
                "cancel": "cancel_requests",
                "upload_policy": "upload_policy_requests",
            }
            if kind in counter:
                self._counters[counter[kind]] += 1

    def _authenticate(self, authorization: str | None) -> str:
        value = (authorization or "").strip()
        scheme, _, key = value.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise ApiError(401, "InvalidApiKey", MSG_INVALID_API_KEY)
        if self.config.api_key is not None and key != self.config.api_key:
            raise ApiError(401, "InvalidApiKey", MSG_INVALID_API_KEY)
        return key

    def _check_rate(self, window: collections.deque[float], rate: float | None, now: float, endpoint: str) -> None:
        if not rate:
            return
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= rate:
            self._counters["throttled_429"] += 1
            self._counters["throttled_by_endpoint"][endpoint] += 1
            raise ApiError(429, "Throttling.RateQuota", MSG_RATE_QUOTA)
        window.append(now)

    def _error_reply(self, err: ApiError) -> Reply:
        headers = {"Retry-After": "1"} if err.status == 429 and err.code == "Throttling.RateQuota" else {}
        return Reply(err.status, _error_body(err.code, err.message), headers)

    def handle_submit(
        self, authorization: str | None, async_header: str | None, raw_body: bytes, oss_resolve: str | None = None
    ) -> Reply:
        """``POST`` submit; ``oss_resolve`` is the X-DashScope-OssResourceResolve header (``enable``: the
        task reads ``oss://`` inputs from the temporary storage)."""
        resolve = (oss_resolve or "").strip().lower() == "enable"
        with self._lock:
            now = self.now()
            try:
                account = self._authenticate(authorization)
                if (async_header or "").strip().lower() != "enable":
                    raise ApiError(403, "AccessDenied", MSG_SYNC_NOT_SUPPORTED)
                acct = self._account(account)
                if self.config.throttle_submits > 0:
                    self.config = dataclasses.replace(self.config, throttle_submits=self.config.throttle_submits - 1)
                    self._counters["throttled_429"] += 1
                    self._counters["throttled_by_endpoint"]["submit"] += 1
                    raise ApiError(429, "Throttling.RateQuota", MSG_RATE_QUOTA)
                self._check_rate(acct.submit_window, self.config.submit_rate, now, "submit")
                try:
                    body = json.loads(raw_body.decode("utf-8")) if raw_body.strip() else None
                except (UnicodeDecodeError, ValueError) as exc:
                    raise ApiError(
                        400, "InvalidParameter", f"{MSG_INVALID_PARAMETER} (body is not valid JSON)"
                    ) from exc
                req = validate_submit(body)
            except ApiError as err:
                self._counters["submits_rejected"] += 1
                by_code = self._counters["rejections_by_code"]
                by_code[err.code] = by_code.get(err.code, 0) + 1
                return self._error_reply(err)

            self._advance(acct, now)
            digest = request_digest(req)
            # Decided only now, once the submit is accepted: a rejected submit never uses it up.
            lost_reply: str | None = None
            if self.config.lost_reply_submits > 0:
                lost_reply = self.config.lost_reply_kind
                self.config = dataclasses.replace(self.config, lost_reply_submits=self.config.lost_reply_submits - 1)
                self._counters["faults"]["lost_submit_responses"] += 1
                neighbor_delay = self.config.neighbor_submit_seconds
                if neighbor_delay is not None:
                    # Created first so it queues ahead of ours, as its earlier submit would have.
                    self._create_task(
                        acct, account, req, digest, now - neighbor_delay, now, SUBMITTER_NEIGHBOR, resolve
                    )
                    self._counters["neighbor_tasks"] += 1
            task = self._create_task(acct, account, req, digest, now, now, SUBMITTER_CLIENT, resolve)
            body_out = {"output": {"task_id": task.task_id, "task_status": "PENDING"}, "request_id": task.request_id}
            return Reply(200, body_out, accepted_task=task.task_id, lost_reply=lost_reply)

    def _create_task(
        self,
        acct: Account,
        account: str,
        req: SubmitRequest,
        digest: str,
        submitted: float,
        now: float,
        submitter: str,
        oss_resolve: bool = False,
    ) -> Task:
        """Create, count and queue one accepted task and hand its render to the workers (lock held)."""
        self._seq += 1
        task = Task(
            seq=self._seq,
            task_id=_new_id(),
            account=account,
            model=req.model,
            input=dict(req.input),
            parameters=dict(req.parameters),
            submitted=submitted,
            duration=self.config.latency_for(req.model),
            request_id=_new_id(),
            submitter=submitter,
            request_digest=digest,
            oss_resolve=oss_resolve,
        )
        self._tasks[task.task_id] = task
        acct.queue.append(task)
        self._fill(acct, now)
        self._counters["submits_accepted"] += 1
        by_model = self._counters["submits_by_model"]
        by_model[req.model] = by_model.get(req.model, 0) + 1
        self._busy += 1
        self._jobs.put((self._generation, task.task_id))
        return task

    # ------------------------------------------------------------------ temporary storage

    def handle_upload_policy(self, authorization: str | None, query: dict[str, list[str]]) -> Reply:
        """``GET /api/v1/uploads?action=getPolicy&model=...``: a fresh upload policy (see temp_storage)."""
        with self._lock:
            now = self.now()
            try:
                account = self._authenticate(authorization)
                if query.get("action", [""])[0] != "getPolicy":
                    raise ApiError(400, "InvalidParameter", f"{MSG_INVALID_PARAMETER} (action must be getPolicy)")
                model = query.get("model", [""])[0]
                if not model:
                    raise ApiError(400, "InvalidParameter", "Field required: model")
                if model not in MODELS:
                    raise ApiError(404, "ModelNotFound", MSG_MODEL_NOT_FOUND)
                window = self._policy_windows.setdefault((account, model), collections.deque())
                self._check_rate(window, self.config.upload_policy_rate, now, "upload_policy")
            except ApiError as err:
                return self._error_reply(err)
            data = self._temp_storage.issue_policy(
                account,
                model,
                upload_host=self.base_url + UPLOAD_ROUTE,
                policy_seconds=self.config.upload_policy_seconds,
                max_file_size_mb=self.config.upload_max_file_size_mb,
            )
            return Reply(200, {"request_id": _new_id(), "data": data})

    def handle_upload(self, content_type: str | None, body: bytes) -> tuple[int, bytes]:
        """``POST`` of an OSS PostObject form to the upload route: (HTTP status, XML error body or b"")."""
        with self._lock:
            try:
                status, _key = self._temp_storage.accept(content_type, body, ttl=self.config.upload_ttl_seconds)
            except UploadRefused as refused:
                self._counters["uploads_rejected"] += 1
                by_code = self._counters["upload_rejections_by_code"]
                by_code[refused.code] = by_code.get(refused.code, 0) + 1
                return refused.status, refused.xml(_new_id())
            self._counters["uploads"] += 1
            return status, b""

    def handle_upload_too_large(self) -> None:
        """Count an upload refused from its Content-Length alone (the HTTP layer answered it)."""
        with self._lock:
            self._counters["uploads_rejected"] += 1
            by_code = self._counters["upload_rejections_by_code"]
            by_code["EntityTooLarge"] = by_code.get("EntityTooLarge", 0) + 1

    def uploaded_object(self, url: str) -> bytes | None:
        """The bytes stored for an ``oss://`` URL of the temporary storage, if any (tests compare them)."""
        with self._lock:
            obj = self._temp_storage.objects.get(url.removeprefix("oss://"))
            return obj.data if obj is not None else None

    def _task_output(self, task: Task) -> dict[str, Any]:
        out: dict[str, Any] = {"task_id": task.task_id, "task_status": task.status}
        if not self.config.report_times:  # the seed's examples show no time fields at all
            return out
        out["submit_time"] = self.format_time(task.submitted)
        if task.started is not None:
            out["scheduled_time"] = self.format_time(task.started)
        if task.ended is not None:
            out["end_time"] = self.format_time(task.ended)
        return out

    def result_url(self, task_id: str) -> str:
        return f"{self.base_url}/results/{task_id}.png"

    def handle_query(self, authorization: str | None, task_id: str) -> Reply:
        with self._lock:
            now = self.now()
            try:
                account = self._authenticate(authorization)
                self._check_rate(self._account(account).query_window, self.config.query_rate, now, "query")
            except ApiError as err:
                return self._error_reply(err)
            task = self._visible_task(account, task_id, now)
            if task is None:
                return Reply(200, {"request_id": _new_id(), "output": {"task_id": task_id, "task_status": "UNKNOWN"}})
            body: dict[str, Any] = {"request_id": _new_id(), "output": self._task_output(task)}
            if task.status == "SUCCEEDED":
                url = self.result_url(task.task_id)
                shape = self.config.result_shape
                if shape == "list":
                    body["output"]["results"] = [{"image_url": url}]
                elif shape == "flat":
                    body["output"]["image_url"] = url
                else:
                    body["output"]["results"] = {"image_url": url}
                body["usage"] = {"image_count": 1}
            elif task.status == "FAILED" and task.failure is not None:
                body["output"]["code"] = task.failure.code
                body["output"]["message"] = task.failure.message
            return Reply(200, body)

    def handle_cancel(self, authorization: str | None, task_id: str) -> Reply:
        with self._lock:
            now = self.now()
            try:
                account = self._authenticate(authorization)
                task = self._visible_task(account, task_id, now)
                if task is None:
                    raise ApiError(404, "NotFound", MSG_TASK_NOT_FOUND)
                if task.status != "PENDING":
                    raise ApiError(400, "UnsupportedOperation", MSG_CANCEL_NOT_PENDING)
            except ApiError as err:
                return self._error_reply(err)
            self._accounts[account].queue.remove(task)
            task.status = "CANCELED"
            task.ended = now
            self._counters["cancels_accepted"] += 1
            return Reply(200, {"request_id": _new_id()})

    def handle_list(self, authorization: str | None, query: dict[str, list[str]]) -> Reply:
        """``GET /api/v1/tasks``: filter by status / model_name / start_time / end_time, paginate."""
        with self._lock:
            now = self.now()
            try:
                account = self._authenticate(authorization)
                acct = self._account(account)
                self._check_rate(acct.query_window, self.config.query_rate, now, "query")
                page_no = int(query.get("page_no", ["1"])[0])
                page_size = int(query.get("page_size", ["10"])[0])
                if page_no < 1 or not 1 <= page_size <= 100:
                    raise ValueError
                start = self._parse_compact(query.get("start_time", [""])[0])
                end = self._parse_compact(query.get("end_time", [""])[0])
            except ApiError as err:
                return self._error_reply(err)
            except ValueError:
                return self._error_reply(ApiError(400, "InvalidParameter", MSG_INVALID_PARAMETER))
            self._advance(acct, now)
            status = query.get("status", [""])[0]
            model = query.get("model_name", [""])[0]
            rows = []
            for task in sorted(self._tasks.values(), key=lambda t: t.seq, reverse=True):
                if task.account != account or self._expired(task, now):
                    continue
                if (status and task.status != status) or (model and task.model != model):
                    continue
                # start_time / end_time are the service's (skewed) wall times, like gmt_create.
                wall = self.wall_time(task.submitted)
                if (start is not None and wall < start) or (end is not None and wall > end):
                    continue
                rows.append(
                    {
                        "task_id": task.task_id,
                        "status": task.status,
                        "model_name": task.model,
                        "request_id": task.request_id,
                        "gmt_create": self.format_time(task.submitted),
                        "start_time": self.format_time(task.started) if task.started is not None else None,
                        "end_time": self.format_time(task.ended) if task.ended is not None else None,
                    }
                )
            total = len(rows)
            page = rows[(page_no - 1) * page_size : page_no * page_size]
            body = {
                "request_id": _new_id(),
                "data": page,
                "total": total,
                "total_page": max(1, math.ceil(total / page_size)),
                "page_no": page_no,
                "page_size": page_size,
            }
            return Reply(200, body)

    def _parse_compact(self, text: str) -> float | None:
        if not text:
            return None
        tz = dt.timezone(dt.timedelta(hours=self.config.tz_offset_hours))
        return dt.datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=tz).timestamp()

    def result_png(self, task_id: str) -> bytes | None:
        """The output PNG while the task is SUCCEEDED and unexpired, else None."""
        with self._lock:
            now = self.now()
            task = self._tasks.get(task_id)
            png: bytes | None = None
            if task is not None:
                self._advance(self._accounts[task.account], now)
                if task.status == "SUCCEEDED" and not self._expired(task, now) and task.result is not None:
                    png = task.result.png
            self._counters["results_served" if png is not None else "results_missing"] += 1
            return png

    # ------------------------------------------------------------------ introspection

    def record_request(self, entry: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._request_seq += 1
            entry["seq"] = self._request_seq
            entry["time"] = self.now()
            self._request_log.append(entry)
            return entry

    def key_fingerprint(self, api_key: str) -> str:
        """A short keyed hash of an API key: the request log's stand-in for the key itself.

        Keyed with a secret of this emulator instance, so a fingerprint read from the log cannot be
        matched against guessed keys without that secret.
        """
        return hmac.new(self._fingerprint_key, api_key.encode(), hashlib.sha256).hexdigest()[:16]

    def request_log(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._request_log]

    def stats(self) -> dict[str, Any]:
        """Counters since start or the last reset, for tests and benchmarks.

        Requests: ``requests_total`` (API calls received), ``submit_requests``, ``queries``
        (task GETs), ``list_requests``, ``cancel_requests`` — all counted on arrival, before
        faults. Outcomes: ``submits_accepted`` (tasks created), ``submits_by_model``,
        ``submits_rejected`` (4xx from the service logic, throttling included) with
        ``rejections_by_code``, ``cancels_accepted``, ``throttled_429`` (rate-limit 429s) with
        ``throttled_by_endpoint``. ``faults``: injected ``5xx``, ``429``, ``drop``, ``slow``,
        ``malformed`` and ``lost_submit_responses`` (tasks created whose id the client never
        received, by a drop or truncated reply after acceptance). Tasks: ``tasks_total``,
        ``tasks_by_status`` (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED, EXPIRED),
        ``max_running_observed`` (most tasks RUNNING at once in any one account),
        ``running_now``, ``pending_now``, ``accounts``, ``renders_in_progress``,
        ``render_cache_hits``. Downloads:
        ``results_served``, ``results_missing``; input fetches: ``fetches``, ``fetch_errors``.
        Audit: ``tasks_per_request`` (client-submitted tasks per ``request_digest``, see
        ``tasks_per_request()``) and ``neighbor_tasks`` (tasks created by the injected other
        submitter of ``neighbor_submit_seconds``; they are also in ``submits_accepted``).
        ``lost_submit_responses`` includes the replies lost by ``lost_reply_submits``.
        Temporary storage: ``upload_policy_requests`` (getPolicy calls, on arrival), ``uploads``
        (files stored), ``uploads_rejected`` with ``upload_rejections_by_code`` (OSS codes),
        ``uploaded_objects`` (held now), ``oss_inputs_resolved`` / ``oss_inputs_refused`` (oss://
        inputs read from it, or failing their task).
        """
        with self._lock:
            now = self.now()
            self._advance_all(now)
            by_status = dict.fromkeys(STATS_STATUSES, 0)
            for task in self._tasks.values():
                by_status["EXPIRED" if self._expired(task, now) else task.status] += 1
            c = self._counters
            out = {
                **c,
                "submits_by_model": dict(c["submits_by_model"]),
                "rejections_by_code": dict(c["rejections_by_code"]),
                "throttled_by_endpoint": dict(c["throttled_by_endpoint"]),
                "upload_rejections_by_code": dict(c["upload_rejections_by_code"]),
                "uploaded_objects": len(self._temp_storage.objects),
                "faults": dict(c["faults"]),
                "tasks_total": len(self._tasks),
                "tasks_by_status": by_status,
                "max_running_observed": max((a.max_running for a in self._accounts.values()), default=0),
                "running_now": sum(len(a.running) for a in self._accounts.values()),
                "pending_now": sum(len(a.queue) for a in self._accounts.values()),
                "accounts": len(self._accounts),
                "renders_in_progress": self._busy,
                "render_cache_hits": self._render_cache.hits,
                "tasks_per_request": self._tasks_per_request(),
            }
            return out

    def _tasks_per_request(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for task in self._tasks.values():
            if task.submitter == SUBMITTER_CLIENT:
                counts[task.request_digest] = counts.get(task.request_digest, 0) + 1
        return counts

    def tasks_per_request(self) -> dict[str, int]:
        """Client-submitted tasks (neighbour tasks excluded) per ``request_digest``, since start or reset.

        Expired tasks still count: they were paid for. A value above 1 means one logical request
        was turned into several billed tasks.
        """
        with self._lock:
            return self._tasks_per_request()

    def tasks(self) -> list[dict[str, Any]]:
        """Every task (including expired ones) with simulated times in clock seconds and as text.

        The text times are the service's wall clock (``clock_skew_seconds`` included); ``submitter``
        is ``"client"`` or ``"neighbor"``; ``request_digest`` identifies the logical request.
        """
        with self._lock:
            now = self.now()
            self._advance_all(now)
            rows = []
            for task in sorted(self._tasks.values(), key=lambda t: t.seq):
                expired = self._expired(task, now)
                rows.append(
                    {
                        "id": task.task_id,
                        "task_id": task.task_id,
                        "seq": task.seq,
                        "account": _mask(task.account),
                        "model": task.model,
                        "input": dict(task.input),
                        "parameters": dict(task.parameters),
                        "status": task.status,
                        "expired": expired,
                        "reported_status": "UNKNOWN" if expired else task.status,
                        "submitted": task.submitted,
                        "started": task.started,
                        "ended": task.ended,
                        "ready_at": task.ready_at,
                        "submit_time": self.format_time(task.submitted),
                        "scheduled_time": self.format_time(task.started) if task.started is not None else None,
                        "end_time": self.format_time(task.ended) if task.ended is not None else None,
                        "failure_code": task.failure.code if task.failure else None,
                        "failure_detail": task.failure.detail if task.failure else None,
                        "result_url": self.result_url(task.task_id) if task.status == "SUCCEEDED" else None,
                        "result_size": [task.result.width, task.result.height] if task.result else None,
                        "submitter": task.submitter,
                        "request_digest": task.request_digest,
                    }
                )
            return rows


def _mask(key: str) -> str:
    # The tasks listing has no auth; never echo a whole key.
    return key[:3] + "***" if len(key) > 6 else "***"
