"""DashScopeHook: auth and HTTP for the DashScope try-on API.

Every verb is written once, async; the sync verbs operators call are thin shells that run it on the
process's I/O loop (`http_client.run_sync`). So one request core (`http_client.aexchange`: deadline,
size cap, no redirects) serves both, requests are built and replies parsed by `api`, and retries
follow `retry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Container, Iterator
from typing import Any

import httpx
from airflow.sdk import BaseHook
from tenacity import AsyncRetrying, stop_after_attempt

from airflow_provider_aitryon import api, compat, uploads
from airflow_provider_aitryon.connection import (
    CONN_TYPE,
    DEFAULT_CONN_ID,
    EXTRA_BOOL_FIELDS,
    EXTRA_DESCRIPTIONS,
    UI_FIELD_BEHAVIOUR,
    ConnectionSettings,
    env_connection_problem,
)
from airflow_provider_aitryon.engine.limits import AccountLimits, shared_limiter
from airflow_provider_aitryon.errors import DashScopeAPIError, DashScopeConfigError, is_throttled
from airflow_provider_aitryon.http_client import (
    Bounds,
    Overdue,
    Stalled,
    TooLarge,
    aexchange,
    io_loop,
    is_io_loop,
    new_client,
    run_sync,
)
from airflow_provider_aitryon.models import SubmittedTask, TaskResult, TaskStatus
from airflow_provider_aitryon.registry.claims import CLAIMS
from airflow_provider_aitryon.retry import retry_policy
from airflow_provider_aitryon.service_clock import ServiceClock, service_clock
from airflow_provider_aitryon.sources import require_sendable

# A lost submit is looked for twice, a grace period apart, before it is taken as never arrived.
_LOOKS = 2
# Before a lookup the service's clock offset is narrowed to this (seconds) with at most this many
# probes, each timed so its Date header halves the uncertainty: a task created a second before ours
# by another submitter then falls outside the window.
_PRECISE_ENOUGH = 0.2
_CALIBRATION_PROBES = 6
# Slack for the service's timestamps: milliseconds when they have them, whole seconds otherwise.
_SLACK_PRECISE = 0.05
_SLACK_SECONDS = 1.0
# The task-list query asks for a wider window than the candidates are then held to.
_LIST_MARGIN = 60.0


def _grace(settings: ConnectionSettings) -> float:
    return settings.lost_submit_grace


# A task id that cannot exist: querying it proves the URL and the key without touching real tasks.
_CONNECTION_PROBE_TASK_ID = "airflow-connection-test"
# The account's submit rate (DashScope: 10/s): the ceiling of the process's adaptive submit pace.
SUBMIT_RATE = AccountLimits().submit_rate
# Another one, queried only for the Date header of its reply (clock calibration).
CLOCK_PROBE_TASK_ID = "aitryon-clock-probe"


class DashScopeHook(BaseHook):
    """Talk to DashScope's try-on API with the API key of an Airflow connection.

    :param dashscope_conn_id: connection of type ``dashscope``: password = API key, host = base URL
        (empty for ``https://dashscope.aliyuncs.com``), extra = optional ``workspace``, timeouts and
        retry settings.
    """

    conn_name_attr = "dashscope_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "DashScope (AI try-on)"

    def __init__(self, dashscope_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dashscope_conn_id = dashscope_conn_id
        self._settings: ConnectionSettings | None = None
        self._aclient: httpx.AsyncClient | None = None
        self._aclient_loop: asyncio.AbstractEventLoop | None = None

    # ---------------------------------------------------------------- connection and settings

    @property
    def settings(self) -> ConnectionSettings:
        if self._settings is None:
            try:
                conn = self.get_connection(self.dashscope_conn_id)
            except Exception as exc:
                raise _missing_connection(self.dashscope_conn_id, exc) from None
            self._settings = self._load(conn)
        return self._settings

    async def asettings(self) -> ConnectionSettings:
        """Settings for the async path; the connection is fetched without blocking the event loop."""
        if self._settings is None:
            aget = getattr(BaseHook, "aget_connection", None)
            try:
                if aget is not None:
                    conn = await aget(self.dashscope_conn_id)
                else:  # Airflow releases without the async connection API
                    conn = await asyncio.to_thread(self.get_connection, self.dashscope_conn_id)
            except Exception as exc:
                raise _missing_connection(self.dashscope_conn_id, exc) from None
            self._settings = await self._aload(conn)
        return self._settings

    @staticmethod
    def _load(conn: Any) -> ConnectionSettings:
        settings = ConnectionSettings.from_connection(conn)
        try:
            from airflow.sdk.log import mask_secret

            # Redact the key from every log line, even ones a user's own code might write.
            mask_secret(settings.api_key)
        except ImportError:  # pragma: no cover - very old task SDKs
            pass
        return settings

    @staticmethod
    async def _aload(conn: Any) -> ConnectionSettings:
        """_load for the event loop: the async masker talks to the supervisor without blocking it."""
        settings = ConnectionSettings.from_connection(conn)
        try:
            from airflow.sdk.log import amask_secret
        except ImportError:  # pragma: no cover - task SDKs without the async masker
            return DashScopeHook._load(conn)
        await amask_secret(settings.api_key)
        return settings

    def get_conn(self) -> ConnectionSettings:
        """The connection's settings (base URL, key, timeouts); requests go through `run`."""
        return self.settings

    # ---------------------------------------------------------------- transport

    def run(self, call: api.ApiCall) -> dict[str, Any]:
        """Send one call with retries; return the JSON payload or raise DashScopeAPIError."""
        _ = self.settings  # loaded here, in the caller's thread, where the Airflow connection is
        return run_sync(self.arun(call))

    async def arun(self, call: api.ApiCall) -> dict[str, Any]:
        """Send one call with the connection's retry policy, never blocking the loop."""
        settings = await self.asettings()
        async for attempt in AsyncRetrying(**retry_policy(settings, self.log)):
            with attempt:
                return await self._asend(settings, call)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def arun_once(self, call: api.ApiCall) -> dict[str, Any]:
        """One attempt, no retry: for callers that pace and retry across many calls themselves."""
        return await self._asend(await self.asettings(), call)

    async def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if is_io_loop(loop):
            return io_loop().shared_client()  # a sync caller's request: the I/O loop's client
        if self._aclient is None or self._aclient_loop is not loop:
            # Building a client loads the CA bundle from disk (~0.1 s): do it off the event loop,
            # which the triggerer shares with every other trigger.
            self._aclient, self._aclient_loop = await asyncio.to_thread(new_client), loop
        return self._aclient

    async def _asend(self, settings: ConnectionSettings, call: api.ApiCall) -> dict[str, Any]:
        bounds = Bounds(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            # The deadline covers everything, headers included: a host dripping a byte at a time
            # never trips the read timeout, and must not hold a worker or the triggerer's loop.
            deadline=settings.request_deadline,
            max_bytes=MAX_API_BODY,
        )
        try:
            reply = await aexchange(
                await self._client(),
                call.method,
                settings.base_url + call.path,
                bounds=bounds,
                params=call.params or None,
                json=call.body,
                headers=call.headers(settings.api_key, settings.workspace),
            )
        except Overdue:
            raise _no_reply(call, settings, f"did not finish its reply within {settings.request_deadline:g} s (the "
                            "connection's request_deadline)") from None  # fmt: skip
        except TooLarge:
            raise _no_reply(call, settings, f"sent a reply over {MAX_API_BODY // 1024} KiB (DashScope's are a few "
                            "KB), so it was abandoned unread") from None  # fmt: skip
        except Stalled:  # the read timeout: the same failure whether headers had come or not
            raise _transport_error(call, settings, httpx.ReadTimeout("read timed out")) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _transport_error(call, settings, exc) from None
        service_clock(settings.base_url).observe_date(reply.headers.get("date"), reply.sent, reply.received)
        return api.decode(call, reply.status, reply.headers, reply.body)

    async def aclose(self) -> None:
        if self._aclient is not None:
            client, self._aclient = self._aclient, None
            if self._aclient_loop is asyncio.get_running_loop():
                await client.aclose()

    # ---------------------------------------------------------------- API

    def submit(self, call: api.ApiCall, *, claimed: Container[str] | None = None) -> SubmittedTask:
        """Submit a task built by `api.*_call`; returns its task id and request id.

        A submit whose reply is lost (connection dropped or timed out after sending, a gateway's
        502/504 page, an empty or garbled answer) may still have created a task. Before it would
        ever submit again, the hook looks for it in the task list (see `find_submitted`): one task
        created while the submit was in flight, on the service's clock, that no path of this
        deployment has claimed is adopted (``adopted=True``, logged); several are refused rather
        than guessed; none means the submit never arrived and it is sent again.

        :param claimed: task ids never to adopt; default: the deployment's claim index.
        """
        require_sendable(call)
        _ = self.settings
        return run_sync(self.asubmit(call, claimed=claimed))

    async def asubmit(
        self, call: api.ApiCall, *, claimed: Container[str] | None = None, retry: bool = True
    ) -> SubmittedTask:
        """submit() for the event loop; with retry=False one attempt (a lost reply is still looked up).

        With retry (the submit operators), attempts are paced by the process's adaptive submit
        limiter (`engine.limits`): many workers of one process share the account's 10 submits/s
        and halve their pace on a 429. Callers with retry=False pace themselves (the catalog's engine).
        """
        require_sendable(call)
        settings = await self.asettings()
        policy = retry_policy(settings, self.log)
        if not retry:
            policy["stop"] = stop_after_attempt(1)
        pace = shared_limiter("submit", settings.base_url, SUBMIT_RATE) if retry else None
        submitted: SubmittedTask | None = None
        async for attempt in AsyncRetrying(**policy):
            with attempt:
                sent_at = time.time()
                slot = await pace.acquire() if pace is not None else None
                try:
                    submitted = api.parse_submitted(await self._asend(settings, call))
                except DashScopeAPIError as exc:
                    if pace is not None and is_throttled(exc):
                        pace.throttled_by_service(exc.retry_after)
                    if not exc.ambiguous:
                        raise
                    try:
                        submitted = await self.afind_submitted(call, sent_at, time.time(), claimed=claimed, cause=exc)
                    except DashScopeAPIError as looking:
                        raise _unresolved(exc, looking) from None
                    if submitted is None:
                        raise
                finally:
                    if pace is not None and slot is not None:
                        pace.done(slot)
        assert submitted is not None
        self._log_submitted(call, submitted)
        return submitted

    # ---------------------------------------------------------------- lost replies

    def find_submitted(
        self,
        call: api.ApiCall,
        sent_at: float,
        lost_at: float,
        *,
        claimed: Container[str] | None = None,
        cause: Exception | None = None,
    ) -> SubmittedTask | None:
        """The task a submit sent at ``sent_at`` (epoch, this machine; its reply lost at ``lost_at``) created, if any.

        Looks twice, a grace period apart (a slow service may still be creating it). The window is
        read on the service's clock (`service_clock`): the offset is calibrated first, so a worker
        whose clock is minutes off still finds its task, and a task another submitter created a
        second before ours is not mistaken for it.

        :param claimed: task ids never to adopt; default: the deployment's claim index.
        :param cause: the error that lost the reply, named in logs and messages.
        """
        _ = self.settings
        return run_sync(self.afind_submitted(call, sent_at, lost_at, claimed=claimed, cause=cause))

    async def afind_submitted(
        self,
        call: api.ApiCall,
        sent_at: float,
        lost_at: float,
        *,
        claimed: Container[str] | None = None,
        cause: Exception | None = None,
    ) -> SubmittedTask | None:
        """find_submitted() for the event loop."""
        settings = await self.asettings()
        clock = service_clock(settings.base_url)
        for delay in _calibration_delays(clock):
            await asyncio.sleep(delay)
            await self._aprobe(settings)
        lookup = _Lookup(call, sent_at, lost_at, claimed, settings, cause)
        for _ in range(_LOOKS):
            await asyncio.sleep(_grace(settings))
            rows = api.listed_tasks(await self.arun(lookup.list_call(clock, time.time())))
            await lookup.aresolve_claims(rows)
            for row in lookup.undated(rows):
                lookup.dated[row.task_id] = api.parse_service_time((await self.aget_task(row.task_id)).submit_time)
            found = lookup.pick(rows, clock, self.log)
            if found is not None:
                return found
        return None

    async def _aprobe(self, settings: ConnectionSettings) -> None:
        """One cheap request whose only use is its Date header (the connection test's query)."""
        with contextlib.suppress(DashScopeAPIError):
            await self._asend(settings, api.query_call(CLOCK_PROBE_TASK_ID))

    def _log_submitted(self, call: api.ApiCall, submitted: SubmittedTask) -> None:
        self.log.info(
            "Submitted DashScope %s task %s (request_id %s%s).",
            (call.body or {}).get("model"),
            submitted.task_id,
            submitted.request_id,
            "; adopted after a lost reply" if submitted.adopted else "",
        )

    def submit_refiner(
        self,
        *,
        person_image_url: str,
        top_garment_url: str,
        coarse_image_url: str,
        gender: str,
        bottom_garment_url: str | None = None,
    ) -> str:
        """Submit an aitryon-refiner task and return its DashScope task id."""
        call = api.refiner_call(
            person_image_url=person_image_url,
            top_garment_url=top_garment_url,
            bottom_garment_url=bottom_garment_url,
            coarse_image_url=coarse_image_url,
            gender=gender,
        )
        return self.submit(call).task_id

    def local_time(self, service_time: str | None) -> float | None:
        """A time the service reported (its clock, China Standard Time) as epoch seconds on ours.

        None when the reply had no such time or the service's clock is not known yet.
        """
        epoch = api.parse_service_time(service_time)
        clock = service_clock(self.settings.base_url)
        if epoch is None or not clock.known:
            return None
        return epoch - clock.offset

    def get_task(self, task_id: str) -> TaskResult:
        return api.parse_task(self.run(api.query_call(task_id)), task_id)

    def cancel_task(self, task_id: str) -> None:
        """Cancel a task; DashScope only allows this while it is PENDING."""
        _ = self.settings
        run_sync(self.acancel_task(task_id))

    async def aget_task(self, task_id: str) -> TaskResult:
        return api.parse_task(await self.arun(api.query_call(task_id)), task_id)

    async def acancel_task(self, task_id: str) -> None:
        await self.arun(api.cancel_call(task_id))
        self.log.info("Canceled DashScope task %s.", task_id)

    def upload_local_image(self, field: str, path: str, model: str) -> str:
        """Upload a local image to DashScope's temporary storage (development only); its ``oss://`` URL.

        The account and endpoint are this connection's; the URL serves only ``model`` and is deleted
        after 48 hours. Submit it with `uploads.OSS_RESOURCE_RESOLVE_HEADER`. (`sources.Uploader`.)

        :param field: the argument's name, for error sentences.
        :param path: an absolute path or a ``file://`` URI.
        :param model: the model of the submit that will use the file.
        """
        settings = self.settings
        bounds = Bounds(connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
                        deadline=settings.request_deadline, max_bytes=uploads.DEFAULT_BOUNDS.max_bytes)  # fmt: skip
        return uploads.upload_local_image(path, model=model, base_url=settings.base_url, api_key=settings.api_key,
                                          workspace=settings.workspace, bounds=bounds, field=field)  # fmt: skip

    def test_connection(self) -> tuple[bool, str]:
        """Query a task id that cannot exist: a 200 proves the base URL and the API key."""
        try:
            self.get_task(_CONNECTION_PROBE_TASK_ID)
        except Exception as exc:
            return False, str(exc)
        return True, f"Connected to {self.settings.base_url}; the API key was accepted."

    # ---------------------------------------------------------------- UI form

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The connection form's labels and hints: the same table the provider metadata declares."""
        return copy.deepcopy(UI_FIELD_BEHAVIOUR)

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Extra fields for UIs built on Flask-AppBuilder; Airflow 3.2+ forms read ``conn-fields`` instead."""
        try:
            from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
            from flask_babel import lazy_gettext
            from wtforms import BooleanField, StringField
        except ImportError:
            return {}
        widgets: dict[str, Any] = {}
        for name, description in EXTRA_DESCRIPTIONS.items():
            label = lazy_gettext(name.replace("_", " ").capitalize())
            if name in EXTRA_BOOL_FIELDS:
                widgets[name] = BooleanField(label, description=description, default=EXTRA_BOOL_FIELDS[name])
            else:
                widgets[name] = StringField(label, description=description, widget=BS3TextFieldWidget())
        return widgets


def _missing_connection(conn_id: str, exc: Exception) -> Exception:
    """A connection Airflow cannot find is a setup problem: say which and how to fix it."""
    if "isn't defined" in str(exc) or type(exc).__name__ in ("AirflowNotFoundException", "AirflowRuntimeError"):
        if compat.UNREADABLE_CONNECTION_IS_NOT_FOUND and (problem := env_connection_problem(conn_id)):
            return problem
        return DashScopeConfigError(
            f"Connection {conn_id!r} is not defined; create a connection of type dashscope with that id "
            f"(or set AIRFLOW_CONN_{conn_id.upper()}), or pass dashscope_conn_id of one that exists."
        )
    return exc


def _unresolved(lost: DashScopeAPIError, looking: DashScopeAPIError) -> DashScopeAPIError:
    """A lost submit whose lookup failed as well: still unknown, so not sent again until a later look."""
    if not looking.retryable:  # the lookup refused to guess (several candidates, adoption off)
        return looking
    return DashScopeAPIError(
        operation="submit",
        http_status=lost.http_status,
        message=f"{(lost.api_message or 'the reply to the submit was lost').rstrip('. ')}, and looking for the task "
        f"it may have created failed too ({looking.api_message or looking}); not sending it again until a later "
        "look shows no task was created",
        retryable=True,
        ambiguous=True,
        unresolved=True,
    )


# DashScope's replies are a few kilobytes; a reply past this is a broken proxy or a hostile host.
MAX_API_BODY = 1024 * 1024


def _no_reply(call: api.ApiCall, settings: ConnectionSettings, what: str) -> DashScopeAPIError:
    """A reply that was abandoned (too big, too slow): one sentence, retryable, maybe a task made."""
    return DashScopeAPIError(
        operation=call.operation,
        message=f"{call.describe()} to {settings.base_url} {what}; check the host of connection "
        f"{settings.conn_id!r} and any proxy in between",
        retryable=True,
        # The request was sent: a submit may have created a task (looked up, never resent blindly).
        ambiguous=call.operation == "submit",
    )


def _never_sent(exc: Exception) -> bool:
    """Failed while connecting: the request cannot have reached the service."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


def _transport_error(call: api.ApiCall, settings: ConnectionSettings, exc: Exception) -> DashScopeAPIError:
    """No HTTP answer: say where we tried and why, without the library's traceback (or any header)."""
    reason = "timed out" if isinstance(exc, httpx.TimeoutException) else "could not connect or the connection dropped"
    broken_setup = isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol)
    return DashScopeAPIError(
        operation=call.operation,
        message=f"{call.describe()} to {settings.base_url} {reason} ({type(exc).__name__}); check the host of "
        f"connection {settings.conn_id!r} and that the service is reachable from here",
        retryable=not broken_setup,
        ambiguous=not broken_setup and not _never_sent(exc),
    )


def _calibration_delays(clock: ServiceClock) -> Iterator[float]:
    """Before a lookup: how long to wait before each clock probe, until the offset is known well enough."""
    for _ in range(_CALIBRATION_PROBES):
        if clock.width <= _PRECISE_ENOUGH:
            return
        yield max(0.0, clock.calibrate_at(time.time()) - time.time())


class _Lookup:
    """One lost-reply lookup: the window, the claims and the choice, shared by the sync and async hook."""

    def __init__(
        self,
        call: api.ApiCall,
        sent_at: float,
        lost_at: float,
        claimed: Container[str] | None,
        settings: ConnectionSettings,
        cause: Exception | None,
    ) -> None:
        self.model = str((call.body or {}).get("model") or "")
        self.sent_at, self.lost_at = sent_at, lost_at
        self.until = lost_at
        self.claimed: Container[str] = CLAIMS if claimed is None else claimed
        self.settings = settings
        self.cause = cause
        self.dated: dict[str, float | None] = {}
        self.claim_seen: dict[str, bool] = {}

    def list_call(self, clock: ServiceClock, now: float) -> api.ApiCall:
        # A request that timed out here may still be processed there after we gave up: the task
        # can appear any time until we look, not only while we waited for the reply.
        self.until = max(self.lost_at, now)
        margin = _LIST_MARGIN + clock.width
        return api.list_call(model=self.model, start=self.sent_at + clock.offset - margin,
                             end=now + clock.offset + margin)  # fmt: skip

    def undated(self, rows: list[api.ListedTask]) -> list[api.ListedTask]:
        """Rows without a creation time, unclaimed and not yet queried: their query says when."""
        return [r for r in rows if r.created is None and r.task_id not in self.dated and not self._claimed(r.task_id)]

    def _claimed(self, task_id: str) -> bool:
        if task_id not in self.claim_seen:
            self.claim_seen[task_id] = task_id in self.claimed
        return self.claim_seen[task_id]

    async def aresolve_claims(self, rows: list[api.ListedTask]) -> None:
        """Check claims off the event loop (the deployment's index may be a remote read)."""
        checker = getattr(self.claimed, "ais_claimed", None)
        for row in rows:
            if row.task_id not in self.claim_seen:
                if checker is not None:
                    self.claim_seen[row.task_id] = await checker(row.task_id)
                else:
                    self.claim_seen[row.task_id] = row.task_id in self.claimed

    def pick(self, rows: list[api.ListedTask], clock: ServiceClock, log: Any) -> SubmittedTask | None:
        """The one task our submit created, None if it created none; refuses to guess between several."""
        candidates = []
        for row in rows:
            if self._claimed(row.task_id):
                continue
            created = row.created if row.created is not None else self.dated.get(row.task_id)
            if created is None:
                continue
            slack = _SLACK_PRECISE if row.precise or row.created is None else _SLACK_SECONDS
            # Created after our submit left, read on the service's clock (offset in [lo, hi]).
            if self.sent_at + clock.lo - slack <= created <= self.until + clock.hi + slack:
                candidates.append(row.task_id)
        if not candidates:
            return None
        why = f" ({self.cause})" if self.cause else ""
        if not self.settings.adopt_lost_submits:
            raise DashScopeAPIError(
                operation="submit",
                message=f"the reply to a submit was lost{why} and the task list shows {len(candidates)} unclaimed "
                f"{self.model} task(s) created meanwhile, but adopt_lost_submits is off for connection "
                f"{self.settings.conn_id!r} (a shared account), so whose task it is cannot be told; not submitting "
                "again to avoid paying twice (check the DashScope console, then rerun)",
                retryable=False,
            )
        if len(candidates) > 1:
            raise DashScopeAPIError(
                operation="submit",
                message=f"the reply to a submit was lost{why} and {len(candidates)} unclaimed {self.model} tasks were "
                "created meanwhile (another submitter uses this account), so which one is ours cannot be told; not "
                "submitting again to avoid paying twice (check the DashScope console, then rerun)",
                retryable=False,
            )
        log.warning(
            "The reply to a submit was lost%s, but DashScope had created task %s while it was in flight "
            "(service clock offset %.2f..%.2f s); adopting it instead of submitting again.",
            why, candidates[0], clock.lo, clock.hi,
        )  # fmt: skip
        return SubmittedTask(task_id=candidates[0], status=TaskStatus.PENDING, adopted=True)
