"""DashScopeHook over real HTTP (loopback scripted server): wire format, parsing, async path, secrecy."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from replies import VENDOR_INPUT, VENDOR_SUBMITTED
from scripted_server import Recorded, Reply, ScriptedServer

from airflow_provider_aitryon.errors import DashScopeAPIError, DashScopeConfigError
from airflow_provider_aitryon.hooks.dashscope import DashScopeHook
from airflow_provider_aitryon.models import Outcome, TaskStatus

API_KEY = "sk-test-key-123"
CONN_ID = "ds_hook"

VENDOR_SUCCEEDED = {
    "output": {
        "task_id": "a8532587-fa8c-4ef8-82be-0c46b17950d1",
        "task_status": "SUCCEEDED",
        "results": {"image_url": "https://dashscope-result.example/1.jpg"},
        "submit_time": "2026-01-01 10:00:00.123",
        "scheduled_time": "2026-01-01 10:00:00.200",
        "end_time": "2026-01-01 10:00:09.900",
    },
    "usage": {"image_count": 1},
    "request_id": "7574ee8f-38a3-4b1e-9280-11c33ab46e51",
}
VENDOR_FAILED = {
    "request_id": "6bf4693b-c6d0-933a-b7b7-f625d098d742",
    "output": {
        "task_id": "e32bd911-5a3d-4687-bf53-9aaef32213e9",
        "task_status": "FAILED",
        "code": "InvalidInputLength",
        "message": "The image resolution is invalid",
    },
}
INVALID_KEY = Reply(401, {"request_id": "req-401", "code": "InvalidApiKey", "message": "Invalid API-key provided."})
TASK_ID = "a8532587-fa8c-4ef8-82be-0c46b17950d1"


@pytest.fixture(scope="module")
def shared_server() -> Iterator[ScriptedServer]:
    # One server per module: shutting one down takes half a second (serve_forever's poll interval).
    with ScriptedServer() as s:
        yield s


@pytest.fixture
def server(shared_server: ScriptedServer) -> ScriptedServer:
    shared_server.replies.clear()
    shared_server.requests = []
    return shared_server


def set_conn(monkeypatch: pytest.MonkeyPatch, host: str, conn_id: str = CONN_ID, **extra: Any) -> None:
    values: dict[str, Any] = {"backoff_base": 0.001, "backoff_max": 0.01, "max_attempts": 4, "lost_submit_grace": 0.05}
    values.update(extra)
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps({"conn_type": "dashscope", "host": host, "password": API_KEY, "extra": values}),
    )


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch, server: ScriptedServer) -> DashScopeHook:
    set_conn(monkeypatch, server.base_url)
    return DashScopeHook(dashscope_conn_id=CONN_ID)


def headers_of(recorded: Recorded) -> dict[str, str]:
    return {k.lower(): v for k, v in recorded.headers.items()}


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def submit_vendor_example(hook: DashScopeHook, **overrides: Any) -> str:
    kwargs: dict[str, Any] = {**VENDOR_INPUT, "gender": "woman"}
    kwargs.update(overrides)
    return hook.submit_refiner(**kwargs)


# --------------------------------------------------------------------------------------------
# Wire format, sync path (requests)
# --------------------------------------------------------------------------------------------


def test_submit_refiner_sends_the_vendor_example(hook, server):
    server.add(Reply(200, VENDOR_SUBMITTED))
    assert submit_vendor_example(hook) == TASK_ID
    assert len(server.requests) == 1
    sent = server.requests[0]
    assert sent.method == "POST"
    assert sent.path == "/api/v1/services/aigc/image2image/image-synthesis"
    headers = headers_of(sent)
    assert headers["authorization"] == f"Bearer {API_KEY}"
    assert headers["content-type"] == "application/json"
    assert headers["x-dashscope-async"] == "enable"
    assert "x-dashscope-workspace" not in headers
    assert sent.json() == {"model": "aitryon-refiner", "input": VENDOR_INPUT, "parameters": {"gender": "woman"}}


def test_submit_without_bottom_garment_omits_the_key(hook, server):
    server.add(Reply(200, VENDOR_SUBMITTED))
    submit_vendor_example(hook, bottom_garment_url=None, gender="man")
    body = server.requests[0].json()
    assert "bottom_garment_url" not in body["input"]
    assert b"null" not in server.requests[0].body
    assert body["input"] == {k: v for k, v in VENDOR_INPUT.items() if k != "bottom_garment_url"}
    assert body["parameters"] == {"gender": "man"}


def test_workspace_header_is_sent_when_configured(monkeypatch, server):
    set_conn(monkeypatch, server.base_url, conn_id="ds_ws", workspace="ws-12345")
    hook = DashScopeHook(dashscope_conn_id="ds_ws")
    server.add(Reply(200, VENDOR_SUBMITTED), Reply(200, VENDOR_SUCCEEDED))
    submit_vendor_example(hook)
    hook.get_task(TASK_ID)
    assert [headers_of(r)["x-dashscope-workspace"] for r in server.requests] == ["ws-12345", "ws-12345"]


def test_bad_argument_sends_nothing(hook, server):
    with pytest.raises(DashScopeConfigError, match="coarse_image_url") as info:
        submit_vendor_example(hook, coarse_image_url="file:///tmp/coarse.png")
    assert server.requests == []
    assert API_KEY not in str(info.value)
    with pytest.raises(DashScopeConfigError, match="task_id"):
        hook.get_task("a/b")
    with pytest.raises(DashScopeConfigError, match="task_id"):
        hook.cancel_task("")
    assert server.requests == []


def test_get_task_queries_and_parses_the_vendor_example(hook, server):
    server.add(Reply(200, VENDOR_SUCCEEDED))
    result = hook.get_task(TASK_ID)
    sent = server.requests[0]
    assert (sent.method, sent.path, sent.body) == ("GET", f"/api/v1/tasks/{TASK_ID}", b"")
    headers = headers_of(sent)
    assert headers["authorization"] == f"Bearer {API_KEY}"
    assert "x-dashscope-async" not in headers
    assert result.status is TaskStatus.SUCCEEDED
    assert result.outcome is Outcome.SUCCESS
    assert result.image_url == "https://dashscope-result.example/1.jpg"
    assert result.usage == {"image_count": 1}
    assert result.request_id == "7574ee8f-38a3-4b1e-9280-11c33ab46e51"
    assert (result.submit_time, result.end_time) == ("2026-01-01 10:00:00.123", "2026-01-01 10:00:09.900")


def test_get_task_failed_task_is_a_result_not_an_exception(hook, server):
    server.add(Reply(200, VENDOR_FAILED))
    result = hook.get_task("e32bd911-5a3d-4687-bf53-9aaef32213e9")
    assert result.status is TaskStatus.FAILED
    assert (result.code, result.message) == ("InvalidInputLength", "The image resolution is invalid")
    assert result.request_id == "6bf4693b-c6d0-933a-b7b7-f625d098d742"
    assert len(server.requests) == 1


def test_get_task_succeeded_without_url_raises_retryable(hook, server):
    server.add(Reply(200, {"output": {"task_id": "t-1", "task_status": "SUCCEEDED"}, "request_id": "r-x"}))
    with pytest.raises(DashScopeAPIError) as info:
        hook.get_task("t-1")
    assert info.value.retryable is True
    assert info.value.request_id == "r-x"


def test_cancel_task_posts_to_cancel(hook, server):
    server.add(Reply(200, {"request_id": "req-cancel"}))
    assert hook.cancel_task("t-77") is None
    sent = server.requests[0]
    assert (sent.method, sent.path) == ("POST", "/api/v1/tasks/t-77/cancel")
    headers = headers_of(sent)
    assert headers["authorization"] == f"Bearer {API_KEY}"
    assert "x-dashscope-async" not in headers


def test_cancel_of_a_running_task_is_a_permanent_error(hook, server):
    server.add(Reply(400, {"request_id": "r", "code": "UnsupportedOperation", "message": "not PENDING"}))
    with pytest.raises(DashScopeAPIError) as info:
        hook.cancel_task("t-77")
    assert (info.value.http_status, info.value.code, info.value.retryable) == (400, "UnsupportedOperation", False)
    assert info.value.operation == "cancel"
    assert len(server.requests) == 1


# --------------------------------------------------------------------------------------------
# Async path (httpx)
# --------------------------------------------------------------------------------------------


async def test_aget_task_queries_and_parses(hook, server):
    server.add(Reply(200, VENDOR_SUCCEEDED))
    try:
        result = await hook.aget_task(TASK_ID)
    finally:
        await hook.aclose()
    sent = server.requests[0]
    assert (sent.method, sent.path, sent.body) == ("GET", f"/api/v1/tasks/{TASK_ID}", b"")
    assert headers_of(sent)["authorization"] == f"Bearer {API_KEY}"
    assert "x-dashscope-async" not in headers_of(sent)
    assert result.status is TaskStatus.SUCCEEDED
    assert result.image_url == "https://dashscope-result.example/1.jpg"
    assert result.usage == {"image_count": 1}
    assert result.request_id == "7574ee8f-38a3-4b1e-9280-11c33ab46e51"


async def test_aget_task_failed_and_unknown_statuses(hook, server):
    server.add(Reply(200, VENDOR_FAILED), Reply(200, {"output": {"task_id": "gone", "task_status": "UNKNOWN"}}))
    try:
        failed = await hook.aget_task("e32bd911-5a3d-4687-bf53-9aaef32213e9")
        unknown = await hook.aget_task("gone")
    finally:
        await hook.aclose()
    assert (failed.status, failed.code) == (TaskStatus.FAILED, "InvalidInputLength")
    assert (unknown.status, unknown.outcome) == (TaskStatus.UNKNOWN, Outcome.FAILURE)


async def test_acancel_task_posts_to_cancel(monkeypatch, server):
    set_conn(monkeypatch, server.base_url, conn_id="ds_aws", workspace="ws-async")
    hook = DashScopeHook(dashscope_conn_id="ds_aws")
    server.add(Reply(200, {"request_id": "req-cancel"}))
    try:
        assert await hook.acancel_task("t-88") is None
    finally:
        await hook.aclose()
    sent = server.requests[0]
    assert (sent.method, sent.path) == ("POST", "/api/v1/tasks/t-88/cancel")
    headers = headers_of(sent)
    assert headers["authorization"] == f"Bearer {API_KEY}"
    assert headers["x-dashscope-workspace"] == "ws-async"


async def test_async_errors_are_classified_like_sync(hook, server):
    server.add(Reply(403, {"request_id": "r-403", "code": "AccessDenied.Unpurchased", "message": "buy it"}))
    try:
        with pytest.raises(DashScopeAPIError) as info:
            await hook.aget_task("t-1")
    finally:
        await hook.aclose()
    exc = info.value
    assert (exc.http_status, exc.code, exc.api_message, exc.request_id) == (
        403,
        "AccessDenied.Unpurchased",
        "buy it",
        "r-403",
    )
    assert exc.retryable is False
    assert len(server.requests) == 1


async def test_async_non_json_body_is_an_api_error(hook, server):
    server.add(Reply(404, "<html>Not Found</html>", {"Content-Type": "text/html"}))
    try:
        with pytest.raises(DashScopeAPIError) as info:
            await hook.aget_task("t-1")
    finally:
        await hook.aclose()
    assert info.value.http_status == 404
    assert info.value.retryable is False


async def ticking(coro: Any) -> tuple[Any, int]:
    """Run coro while a ticker counts 20 ms sleeps on the same loop."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        result = await coro
    finally:
        task.cancel()
    return result, ticks


async def test_aget_task_does_not_block_the_event_loop_while_waiting(hook, server):
    server.add(Reply(200, {"output": {"task_id": "t-1", "task_status": "RUNNING"}}, delay=0.5))
    try:
        result, ticks = await ticking(hook.aget_task("t-1"))
    finally:
        await hook.aclose()
    assert result.status is TaskStatus.RUNNING
    assert ticks >= 8


async def test_async_retry_sleep_does_not_block_the_event_loop(hook, server):
    server.add(
        Reply(429, {"code": "Throttling", "message": "slow"}, {"Retry-After": "0.4"}),
        Reply(200, {"output": {"task_id": "t-1", "task_status": "PENDING"}}),
    )
    try:
        result, ticks = await ticking(hook.aget_task("t-1"))
    finally:
        await hook.aclose()
    assert result.status is TaskStatus.PENDING
    assert len(server.requests) == 2
    assert ticks >= 8


async def test_async_read_timeout_then_success(monkeypatch, server):
    set_conn(monkeypatch, server.base_url, conn_id="ds_ato", read_timeout=0.2)
    hook = DashScopeHook(dashscope_conn_id="ds_ato")
    server.add(
        Reply(200, {"output": {"task_id": "t-1", "task_status": "RUNNING"}}, delay=0.6),
        Reply(200, {"output": {"task_id": "t-1", "task_status": "CANCELED"}}),
    )
    try:
        result, ticks = await ticking(hook.aget_task("t-1"))
    finally:
        await hook.aclose()
    assert result.status is TaskStatus.CANCELED
    assert len(server.requests) == 2
    assert ticks >= 5


# --------------------------------------------------------------------------------------------
# test_connection
# --------------------------------------------------------------------------------------------


def test_test_connection_ok(hook, server):
    server.add(Reply(200, {"output": {"task_id": "airflow-connection-test", "task_status": "UNKNOWN"}}))
    ok, message = hook.test_connection()
    assert ok is True
    assert server.base_url in message
    assert "accepted" in message
    assert len(server.requests) == 1
    sent = server.requests[0]
    assert sent.method == "GET"
    assert sent.path.startswith("/api/v1/tasks/")
    assert headers_of(sent)["authorization"] == f"Bearer {API_KEY}"


def test_test_connection_with_wrong_key(hook, server):
    server.add(INVALID_KEY)
    ok, message = hook.test_connection()
    assert ok is False
    assert "InvalidApiKey" in message
    assert "HTTP 401" in message
    assert API_KEY not in message
    assert len(server.requests) == 1


def test_test_connection_unreachable(monkeypatch):
    url = closed_port_url()
    set_conn(monkeypatch, url, conn_id="ds_down", max_attempts=2)
    ok, message = DashScopeHook(dashscope_conn_id="ds_down").test_connection()
    assert ok is False
    assert url in message
    assert "could not connect" in message


def test_test_connection_without_key(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_DS_NOKEY_T", json.dumps({"conn_type": "dashscope", "host": "http://x"}))
    ok, message = DashScopeHook(dashscope_conn_id="ds_nokey_t").test_connection()
    assert ok is False
    assert "'ds_nokey_t' has no API key" in message


# --------------------------------------------------------------------------------------------
# The API key never reaches an exception or a log line
# --------------------------------------------------------------------------------------------


def assert_key_absent(exc: BaseException) -> None:
    assert API_KEY not in str(exc)
    assert API_KEY not in repr(exc)
    assert API_KEY not in repr(getattr(exc, "args", ()))
    cause = exc.__cause__
    assert cause is None or API_KEY not in str(cause)


def test_invalid_api_key_reply_sync(hook, server):
    server.add(INVALID_KEY)
    with pytest.raises(DashScopeAPIError) as info:
        hook.get_task("t-1")
    assert (info.value.http_status, info.value.code, info.value.request_id) == (401, "InvalidApiKey", "req-401")
    assert "set the API key as the password" in str(info.value)
    assert_key_absent(info.value)


async def test_invalid_api_key_reply_async(hook, server):
    server.add(INVALID_KEY)
    try:
        with pytest.raises(DashScopeAPIError) as info:
            await hook.aget_task("t-1")
    finally:
        await hook.aclose()
    assert (info.value.http_status, info.value.code) == (401, "InvalidApiKey")
    assert_key_absent(info.value)


def test_transport_error_sync(monkeypatch):
    url = closed_port_url()
    set_conn(monkeypatch, url, conn_id="ds_refused", max_attempts=2)
    with pytest.raises(DashScopeAPIError) as info:
        DashScopeHook(dashscope_conn_id="ds_refused").get_task("t-1")
    exc = info.value
    assert exc.http_status is None
    assert exc.retryable is True
    assert f"GET /api/v1/tasks/t-1 to {url} could not connect" in str(exc)
    assert_key_absent(exc)


async def test_transport_error_async(monkeypatch):
    url = closed_port_url()
    set_conn(monkeypatch, url, conn_id="ds_arefused", max_attempts=2)
    hook = DashScopeHook(dashscope_conn_id="ds_arefused")
    try:
        with pytest.raises(DashScopeAPIError) as info:
            await hook.acancel_task("t-1")
    finally:
        await hook.aclose()
    assert info.value.http_status is None
    assert f"POST /api/v1/tasks/t-1/cancel to {url}" in str(info.value)
    assert_key_absent(info.value)


def test_timeout_error_names_the_timeout(monkeypatch, server):
    set_conn(monkeypatch, server.base_url, conn_id="ds_slow", read_timeout=0.2, max_attempts=1)
    server.add(Reply(200, {"output": {"task_id": "t-1", "task_status": "RUNNING"}}, delay=0.6))
    with pytest.raises(DashScopeAPIError) as info:
        DashScopeHook(dashscope_conn_id="ds_slow").get_task("t-1")
    assert "timed out" in str(info.value)
    assert info.value.retryable is True
    assert_key_absent(info.value)


def test_config_error_from_the_hook(monkeypatch):
    set_conn(monkeypatch, "http://127.0.0.1:9", conn_id="ds_badextra", read_timeout="soon")
    with pytest.raises(DashScopeConfigError) as info:
        DashScopeHook(dashscope_conn_id="ds_badextra").get_task("t-1")
    assert "read_timeout" in str(info.value)
    assert_key_absent(info.value)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_key_not_logged_after_a_retried_call(monkeypatch, server, caplog, capsys, mode):
    caplog.set_level(logging.DEBUG)
    set_conn(monkeypatch, server.base_url)
    hook = DashScopeHook(dashscope_conn_id=CONN_ID)
    # Route the hook's own log through stdlib logging so caplog sees exactly what it writes, unmasked.
    hook._log = logging.getLogger("test_hook.dashscope")
    server.add(
        Reply(429, {"code": "Throttling", "message": "slow", "request_id": "r1"}),
        Reply(drop=True),
        Reply(200, {"output": {"task_id": "t-1", "task_status": "RUNNING"}}),
    )
    if mode == "sync":
        result = hook.get_task("t-1")
    else:

        async def go() -> Any:
            try:
                return await hook.aget_task("t-1")
            finally:
                await hook.aclose()

        result = asyncio.run(go())
    assert result.status is TaskStatus.RUNNING
    assert len(server.requests) == 3
    retry_lines = [r.getMessage() for r in caplog.records if r.name == "test_hook.dashscope"]
    assert len(retry_lines) == 2
    assert retry_lines[0].startswith("Attempt 1 of 4 failed")
    assert retry_lines[1].startswith("Attempt 2 of 4 failed")
    assert API_KEY not in caplog.text
    captured = capsys.readouterr()
    assert API_KEY not in captured.out
    assert API_KEY not in captured.err


def test_settings_are_read_once_per_hook(hook, server, monkeypatch):
    first = hook.settings
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", "dashscope://:other-key@elsewhere")
    assert hook.settings is first
    assert DashScopeHook(dashscope_conn_id=CONN_ID).settings.base_url == "https://elsewhere"
