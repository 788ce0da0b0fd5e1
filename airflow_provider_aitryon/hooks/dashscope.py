"""DashScopeHook: auth and HTTP for the DashScope try-on API, sync (requests) and async (httpx).

Both paths build requests and parse responses with `airflow_provider_aitryon.api` and retry with
`airflow_provider_aitryon.retry`; only the transport differs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Container
from typing import Any

import httpx
import requests
from airflow.sdk import BaseHook
from tenacity import AsyncRetrying, Retrying, stop_after_attempt

from airflow_provider_aitryon import api
from airflow_provider_aitryon.connection import (
    CONN_TYPE,
    DEFAULT_CONN_ID,
    EXTRA_FIELDS,
    ConnectionSettings,
)
from airflow_provider_aitryon.errors import DashScopeAPIError, DashScopeConfigError
from airflow_provider_aitryon.models import SubmittedTask, TaskResult, TaskStatus
from airflow_provider_aitryon.retry import retry_policy

# A lost submit is looked for twice, a grace period apart, before it is taken as never arrived.
_LOOKS = 2


def _grace(settings: ConnectionSettings) -> float:
    return settings.lost_submit_grace


# A task id that cannot exist: querying it proves the URL and the key without touching real tasks.
_CONNECTION_PROBE_TASK_ID = "airflow-connection-test"


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
        self._session: requests.Session | None = None
        self._aclient: httpx.AsyncClient | None = None

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

    def get_conn(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
        return self._session

    # ---------------------------------------------------------------- transport

    def run(self, call: api.ApiCall) -> dict[str, Any]:
        """Send one call with retries; return the JSON payload or raise DashScopeAPIError."""
        settings = self.settings
        for attempt in Retrying(**retry_policy(settings, self.log)):
            with attempt:
                return self._send(settings, call)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _send(self, settings: ConnectionSettings, call: api.ApiCall) -> dict[str, Any]:
        try:
            response = self.get_conn().request(
                call.method,
                settings.base_url + call.path,
                params=call.params or None,
                json=call.body,
                headers=call.headers(settings.api_key, settings.workspace),
                timeout=(settings.connect_timeout, settings.read_timeout),
            )
        except requests.RequestException as exc:
            raise _transport_error(call, settings, exc) from None
        return api.decode(call, response.status_code, response.headers, response.content)

    async def arun(self, call: api.ApiCall) -> dict[str, Any]:
        """Async twin of run(): same request, parsing and retry policy, never blocks the loop."""
        settings = await self.asettings()
        async for attempt in AsyncRetrying(**retry_policy(settings, self.log)):
            with attempt:
                return await self._asend(settings, call)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def arun_once(self, call: api.ApiCall) -> dict[str, Any]:
        """One attempt, no retry: for callers that pace and retry across many calls themselves."""
        return await self._asend(await self.asettings(), call)

    async def _asend(self, settings: ConnectionSettings, call: api.ApiCall) -> dict[str, Any]:
        if self._aclient is None:
            # Building a client loads the CA bundle from disk (~0.1 s): do it off the event loop,
            # which the triggerer shares with every other trigger.
            self._aclient = await asyncio.to_thread(
                httpx.AsyncClient, timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout)
            )
        try:
            response = await self._aclient.request(
                call.method,
                settings.base_url + call.path,
                params=call.params or None,
                json=call.body,
                headers=call.headers(settings.api_key, settings.workspace),
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _transport_error(call, settings, exc) from None
        return api.decode(call, response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None

    # ---------------------------------------------------------------- API

    def submit(self, call: api.ApiCall, *, claimed: Container[str] = frozenset()) -> SubmittedTask:
        """Submit a task built by `api.*_call`; returns its task id and request id.

        A submit whose reply is lost (connection dropped or timed out after sending, or a garbled
        2xx) may still have created a task. Before it would ever submit again, the hook looks in
        the task list for a task of that model created meanwhile that nobody here submitted
        (`claimed`): one such task is adopted, several are refused rather than guessed, none means
        the submit never arrived and it is retried.
        """
        settings = self.settings
        submitted: SubmittedTask | None = None
        for attempt in Retrying(**retry_policy(settings, self.log)):
            with attempt:
                sent_at = time.time()
                try:
                    submitted = api.parse_submitted(self._send(settings, call))
                except DashScopeAPIError as exc:
                    if not exc.ambiguous:
                        raise
                    submitted = self._find_lost_task(settings, call, sent_at, claimed)
                    if submitted is None:
                        raise
        assert submitted is not None
        self._log_submitted(call, submitted)
        return submitted

    async def asubmit(
        self, call: api.ApiCall, *, claimed: Container[str] = frozenset(), retry: bool = True
    ) -> SubmittedTask:
        """Async twin of submit(); with retry=False one attempt (a lost reply is still looked up)."""
        settings = await self.asettings()
        policy = retry_policy(settings, self.log)
        if not retry:
            policy["stop"] = stop_after_attempt(1)
        submitted: SubmittedTask | None = None
        async for attempt in AsyncRetrying(**policy):
            with attempt:
                sent_at = time.time()
                try:
                    submitted = api.parse_submitted(await self._asend(settings, call))
                except DashScopeAPIError as exc:
                    if not exc.ambiguous:
                        raise
                    submitted = await self._afind_lost_task(settings, call, sent_at, claimed)
                    if submitted is None:
                        raise
        assert submitted is not None
        self._log_submitted(call, submitted)
        return submitted

    def _find_lost_task(
        self, settings: ConnectionSettings, call: api.ApiCall, sent_at: float, claimed: Container[str]
    ) -> SubmittedTask | None:
        for _ in range(_LOOKS):
            # A slow service may still be creating the task: give it time before each look.
            time.sleep(_grace(settings))
            payload = self.run(api.reconcile_call(call, sent_at, time.time()))
            found = self._adopt(call, api.unclaimed_tasks(payload, claimed))
            if found is not None:
                return found
        return None

    async def _afind_lost_task(
        self, settings: ConnectionSettings, call: api.ApiCall, sent_at: float, claimed: Container[str]
    ) -> SubmittedTask | None:
        for _ in range(_LOOKS):
            await asyncio.sleep(_grace(settings))
            payload = await self.arun(api.reconcile_call(call, sent_at, time.time()))
            found = self._adopt(call, api.unclaimed_tasks(payload, claimed))
            if found is not None:
                return found
        return None

    def _adopt(self, call: api.ApiCall, candidates: list[str]) -> SubmittedTask | None:
        if not candidates:
            return None
        if len(candidates) > 1:
            raise DashScopeAPIError(
                operation=call.operation,
                message=f"the reply to a submit was lost and {len(candidates)} unknown tasks of this model "
                "were created meanwhile (another submitter uses this account), so which one is ours cannot be "
                "told; not submitting again to avoid paying twice (check the DashScope console, then re-run)",
                retryable=False,
            )
        self.log.warning(
            "The reply to a submit was lost, but DashScope had created task %s; using it instead of "
            "submitting again.", candidates[0],
        )  # fmt: skip
        return SubmittedTask(task_id=candidates[0], status=TaskStatus.PENDING)

    def _log_submitted(self, call: api.ApiCall, submitted: SubmittedTask) -> None:
        self.log.info(
            "Submitted DashScope %s task %s (request_id %s).",
            (call.body or {}).get("model"),
            submitted.task_id,
            submitted.request_id,
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

    def get_task(self, task_id: str) -> TaskResult:
        return api.parse_task(self.run(api.query_call(task_id)), task_id)

    def cancel_task(self, task_id: str) -> None:
        """Cancel a task; DashScope only allows this while it is PENDING."""
        self.run(api.cancel_call(task_id))
        self.log.info("Canceled DashScope task %s.", task_id)

    async def aget_task(self, task_id: str) -> TaskResult:
        return api.parse_task(await self.arun(api.query_call(task_id)), task_id)

    async def acancel_task(self, task_id: str) -> None:
        await self.arun(api.cancel_call(task_id))
        self.log.info("Canceled DashScope task %s.", task_id)

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
        return {
            "hidden_fields": ["schema", "login", "port"],
            "relabeling": {"password": "API key", "host": "Base URL"},
            "placeholders": {
                "host": f"{api.DEFAULT_BASE_URL} (empty) or http://127.0.0.1:8089 for the emulator",
                "password": "sk-…",
                "extra": '{"workspace": "ws-…", "read_timeout": 30, "max_attempts": 6}',
            },
        }

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        try:
            from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
            from flask_babel import lazy_gettext
            from wtforms import StringField
        except ImportError:  # Airflow 3 UIs read conn-fields from get_provider_info instead
            return {}
        widgets: dict[str, Any] = {"workspace": StringField(lazy_gettext("Workspace"), widget=BS3TextFieldWidget())}
        for name in EXTRA_FIELDS:
            widgets[name] = StringField(lazy_gettext(name.replace("_", " ").capitalize()), widget=BS3TextFieldWidget())
        return widgets


def _missing_connection(conn_id: str, exc: Exception) -> Exception:
    """A connection Airflow cannot find is a setup problem: say which and how to fix it."""
    if "isn't defined" in str(exc) or type(exc).__name__ in ("AirflowNotFoundException", "AirflowRuntimeError"):
        return DashScopeConfigError(
            f"Connection {conn_id!r} is not defined; create a connection of type dashscope with that id "
            f"(or set AIRFLOW_CONN_{conn_id.upper()}), or pass dashscope_conn_id of one that exists."
        )
    return exc


def _never_sent(exc: Exception) -> bool:
    """Failed while connecting: the request cannot have reached the service."""
    if isinstance(exc, requests.exceptions.ConnectTimeout | httpx.ConnectError | httpx.ConnectTimeout):
        return True
    return isinstance(exc, requests.exceptions.ConnectionError) and "NewConnectionError" in repr(exc.args)


def _transport_error(call: api.ApiCall, settings: ConnectionSettings, exc: Exception) -> DashScopeAPIError:
    """No HTTP answer: say where we tried and why, without the library's traceback (or any header)."""
    timeouts = (requests.Timeout, httpx.TimeoutException)
    reason = "timed out" if isinstance(exc, timeouts) else "could not connect or the connection dropped"
    broken_setup = isinstance(exc, requests.exceptions.InvalidURL | httpx.InvalidURL | httpx.UnsupportedProtocol)
    return DashScopeAPIError(
        operation=call.operation,
        message=f"{call.describe()} to {settings.base_url} {reason} ({type(exc).__name__}); check the host of "
        f"connection {settings.conn_id!r} and that the service is reachable from here",
        retryable=not broken_setup,
        ambiguous=not broken_setup and not _never_sent(exc),
    )
