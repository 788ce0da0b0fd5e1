"""Retry policy: the backoff formula, the tenacity policy, and retries over real HTTP (sync and async)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import random
import time
from collections.abc import Iterator
from email.utils import format_datetime
from typing import Any

import pytest
from scripted_server import Reply, ScriptedServer
from tenacity import Retrying

from airflow_provider_aitryon import api
from airflow_provider_aitryon.connection import ConnectionSettings
from airflow_provider_aitryon.errors import DashScopeAPIError
from airflow_provider_aitryon.hooks.dashscope import DashScopeHook
from airflow_provider_aitryon.models import TaskStatus
from airflow_provider_aitryon.retry import backoff_delay, is_retryable, retry_policy

API_KEY = "sk-test-key-123"
CONN_ID = "ds_retry"


# --------------------------------------------------------------------------------------------
# backoff_delay
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", range(1, 10))
def test_full_jitter_stays_within_the_exponential_ceiling(attempt):
    base, cap = 0.5, 6.0
    ceiling = min(cap, base * 2 ** (attempt - 1))
    rng = random.Random(1234 + attempt)
    delays = [backoff_delay(attempt, base=base, cap=cap, rng=rng) for _ in range(500)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # Full jitter: the whole range [0, ceiling] is used, not just its top half.
    assert min(delays) < 0.05 * ceiling
    assert max(delays) > 0.95 * ceiling


def test_jitter_is_drawn_uniformly_from_the_given_rng():
    seed = 99
    expected = random.Random(seed)
    rng = random.Random(seed)
    for attempt in range(1, 8):
        ceiling = min(10.0, 0.25 * 2 ** (attempt - 1))
        assert backoff_delay(attempt, base=0.25, cap=10.0, rng=rng) == expected.uniform(0.0, ceiling)


def test_ceiling_doubles_until_the_cap():
    # uniform(a, b) with a generator returning 1.0-ish: use a stub that returns the upper bound.
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    ceilings = [backoff_delay(n, base=1.0, cap=30.0, rng=Top()) for n in range(1, 9)]
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


@pytest.mark.parametrize("seed", range(5))
def test_retry_after_is_a_floor(seed):
    rng = random.Random(seed)
    assert backoff_delay(1, base=0.001, cap=0.01, retry_after=0.3, rng=rng) == 0.3


def test_retry_after_is_never_shortened_by_the_cap():
    assert backoff_delay(3, base=1.0, cap=30.0, retry_after=120.0, rng=random.Random(0)) == 120.0


def test_jitter_above_retry_after_wins():
    rng, twin = random.Random(7), random.Random(7)
    jitter = twin.uniform(0.0, 8.0)
    assert jitter > 0.5
    assert backoff_delay(4, base=1.0, cap=30.0, retry_after=0.5, rng=rng) == jitter


def test_zero_cap_means_no_wait():
    assert backoff_delay(5, base=1.0, cap=0.0, rng=random.Random(0)) == 0.0


# --------------------------------------------------------------------------------------------
# retry_policy with tenacity, no HTTP
# --------------------------------------------------------------------------------------------


def settings(**overrides: Any) -> ConnectionSettings:
    values: dict[str, Any] = {
        "conn_id": "ds",
        "base_url": "http://127.0.0.1:9",
        "api_key": API_KEY,
        "max_attempts": 4,
        "backoff_base": 0.001,
        "backoff_max": 0.01,
    }
    values.update(overrides)
    return ConnectionSettings(**values)


def run_with_policy(outcomes: list[Any], logger: logging.Logger, **overrides: Any) -> tuple[Any, list[float], int]:
    """Drive tenacity with the provider's policy, recording sleeps instead of sleeping."""
    sleeps: list[float] = []
    calls = 0
    script = iter(outcomes)

    def attempt() -> Any:
        nonlocal calls
        calls += 1
        item = next(script)
        if isinstance(item, BaseException):
            raise item
        return item

    result: Any = None
    try:
        for state in Retrying(sleep=sleeps.append, **retry_policy(settings(**overrides), logger)):
            with state:
                result = attempt()
    except BaseException as exc:
        result = exc
    return result, sleeps, calls


def throttled(retry_after: float | None = None) -> DashScopeAPIError:
    return DashScopeAPIError(operation="query", http_status=429, code="Throttling", retry_after=retry_after)


def test_policy_retries_transient_errors_then_succeeds():
    log = logging.getLogger("test.retry")
    result, sleeps, calls = run_with_policy([throttled(), throttled(), "ok"], log)
    assert result == "ok"
    assert calls == 3
    assert len(sleeps) == 2
    assert all(0.0 <= s <= 0.01 for s in sleeps)


def test_policy_sleeps_at_least_retry_after():
    log = logging.getLogger("test.retry")
    result, sleeps, calls = run_with_policy([throttled(0.3), throttled(0.7), "ok"], log)
    assert (result, calls, sleeps) == ("ok", 3, [0.3, 0.7])


def test_policy_does_not_retry_permanent_errors():
    log = logging.getLogger("test.retry")
    permanent = DashScopeAPIError(operation="query", http_status=400, code="InvalidParameter")
    result, sleeps, calls = run_with_policy([permanent, "ok"], log)
    assert result is permanent
    assert (calls, sleeps) == (1, [])


def test_policy_does_not_retry_foreign_exceptions():
    log = logging.getLogger("test.retry")
    boom = KeyError("output")
    result, _, calls = run_with_policy([boom, "ok"], log)
    assert result is boom
    assert calls == 1


@pytest.mark.parametrize("max_attempts", [1, 2, 5])
def test_policy_stops_after_max_attempts_and_reraises_the_last_error(max_attempts):
    log = logging.getLogger("test.retry")
    errors = [throttled() for _ in range(10)]
    result, sleeps, calls = run_with_policy(errors, log, max_attempts=max_attempts)
    assert calls == max_attempts
    assert len(sleeps) == max_attempts - 1
    assert result is errors[max_attempts - 1]


def test_policy_stops_when_the_next_wait_would_pass_max_retry_seconds():
    log = logging.getLogger("test.retry")
    first = throttled(retry_after=30.0)
    result, sleeps, calls = run_with_policy([first, "ok"], log, max_retry_seconds=1.0)
    assert result is first
    assert (calls, sleeps) == (1, [])


def test_policy_logs_each_retry(caplog):
    caplog.set_level(logging.WARNING, logger="test.retry.log")
    log = logging.getLogger("test.retry.log")
    run_with_policy([throttled(0.25), "ok"], log)
    messages = [r.getMessage() for r in caplog.records if r.name == "test.retry.log"]
    assert len(messages) == 1
    assert messages[0].startswith("Attempt 1 of 4 failed, retrying in 0.25s: DashScope query failed (HTTP 429")


def test_is_retryable():
    assert is_retryable(throttled()) is True
    assert is_retryable(DashScopeAPIError(operation="query", http_status=401, code="InvalidApiKey")) is False
    assert is_retryable(ValueError("x")) is False


# --------------------------------------------------------------------------------------------
# Over real HTTP: the scripted server, sync (requests) and async (httpx)
# --------------------------------------------------------------------------------------------


class Stamped(list):
    """server.requests replacement that also records when each request arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: Any) -> None:
        self.times.append(time.monotonic())
        super().append(item)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[ScriptedServer]:
    # One server per module: shutting one down takes half a second (serve_forever's poll interval).
    with ScriptedServer() as s:
        yield s


@pytest.fixture
def server(shared_server: ScriptedServer) -> ScriptedServer:
    shared_server.replies.clear()
    shared_server.requests = Stamped()
    return shared_server


def make_hook(monkeypatch: pytest.MonkeyPatch, server: ScriptedServer, **extra: Any) -> DashScopeHook:
    values: dict[str, Any] = {"backoff_base": 0.001, "backoff_max": 0.01, "max_attempts": 4, "lost_submit_grace": 0.05}
    values.update(extra)
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        json.dumps({"conn_type": "dashscope", "host": server.base_url, "password": API_KEY, "extra": values}),
    )
    return DashScopeHook(dashscope_conn_id=CONN_ID)


def get_task(hook: DashScopeHook, mode: str, task_id: str = "t-1") -> Any:
    if mode == "sync":
        return hook.get_task(task_id)

    async def go() -> Any:
        try:
            return await hook.aget_task(task_id)
        finally:
            await hook.aclose()

    return asyncio.run(go())


def running(task_id: str = "t-1") -> Reply:
    return Reply(200, {"output": {"task_id": task_id, "task_status": "RUNNING"}, "request_id": "req-ok"})


def error(status: int, code: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"request_id": f"req-{code}", "code": code, "message": f"{code} says no"}, headers or {})


MODES = ["sync", "async"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "first",
    [
        pytest.param(error(429, "Throttling"), id="429"),
        pytest.param(error(429, "Throttling.RateQuota"), id="429-rate"),
        pytest.param(error(503, "ModelUnavailable"), id="503"),
        pytest.param(error(500, "InternalError.Timeout"), id="500"),
        pytest.param(error(408, "RequestTimeOut"), id="408"),
        pytest.param(Reply(502, b"<html><body>502 Bad Gateway</body></html>"), id="502-html"),
        pytest.param(Reply(200, b'{"output": {"task_id": "t-1", "task_sta'), id="200-truncated"),
        pytest.param(Reply(drop=True), id="dropped"),
    ],
)
def test_transient_failure_is_retried_once_then_succeeds(monkeypatch, server, mode, first):
    hook = make_hook(monkeypatch, server)
    server.add(first, running())
    result = get_task(hook, mode)
    assert result.status is TaskStatus.RUNNING
    assert result.request_id == "req-ok"
    assert len(server.requests) == 2
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/api/v1/tasks/t-1")] * 2


@pytest.mark.parametrize("mode", MODES)
def test_several_transient_failures_in_a_row(monkeypatch, server, mode):
    hook = make_hook(monkeypatch, server)
    server.add(error(429, "Throttling"), Reply(drop=True), error(500, "SystemError"), running())
    assert get_task(hook, mode).status is TaskStatus.RUNNING
    assert len(server.requests) == 4


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "InvalidParameter"),
        (400, "InvalidURL"),
        (401, "InvalidApiKey"),
        (403, "AccessDenied"),
        (404, "ModelNotFound"),
    ],
)
def test_permanent_error_is_not_retried(monkeypatch, server, mode, status, code):
    hook = make_hook(monkeypatch, server)
    server.add(error(status, code), running())
    with pytest.raises(DashScopeAPIError) as info:
        get_task(hook, mode)
    assert (info.value.http_status, info.value.code, info.value.retryable) == (status, code, False)
    assert info.value.request_id == f"req-{code}"
    assert len(server.requests) == 1


@pytest.mark.parametrize("mode", MODES)
def test_read_timeout_is_retried(monkeypatch, server, mode):
    hook = make_hook(monkeypatch, server, read_timeout=0.2)
    server.add(Reply(200, {"output": {"task_id": "t-1", "task_status": "SUCCEEDED"}}, delay=0.8), running())
    result = get_task(hook, mode)
    assert result.status is TaskStatus.RUNNING  # the late SUCCEEDED answer was never read
    assert len(server.requests) == 2


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("max_attempts", [1, 3])
def test_max_attempts_bounds_the_requests(monkeypatch, server, mode, max_attempts):
    hook = make_hook(monkeypatch, server, max_attempts=max_attempts)
    # No script: the server answers every request with 500 InternalError.
    with pytest.raises(DashScopeAPIError) as info:
        get_task(hook, mode)
    assert info.value.http_status == 500
    assert info.value.code == "InternalError"
    assert len(server.requests) == max_attempts


@pytest.mark.parametrize("mode", MODES)
def test_max_attempts_bounds_dropped_connections(monkeypatch, server, mode):
    hook = make_hook(monkeypatch, server, max_attempts=3)
    server.add(*[Reply(drop=True) for _ in range(5)])
    with pytest.raises(DashScopeAPIError) as info:
        get_task(hook, mode)
    exc = info.value
    assert exc.http_status is None
    assert exc.retryable is True
    assert "connection dropped" in str(exc)
    assert server.base_url in str(exc)
    assert len(server.requests) == 3


@pytest.mark.parametrize("mode", MODES)
def test_retry_after_seconds_is_honoured(monkeypatch, server, mode):
    # backoff_max 0.01: without honouring the header the gap would be ~10 ms at most.
    hook = make_hook(monkeypatch, server)
    server.add(error(429, "Throttling", {"Retry-After": "0.3"}), running())
    start = time.monotonic()
    assert get_task(hook, mode).status is TaskStatus.RUNNING
    elapsed = time.monotonic() - start
    assert len(server.requests) == 2
    gap = server.requests.times[1] - server.requests.times[0]
    assert gap >= 0.29
    assert elapsed >= 0.29


@pytest.mark.parametrize("mode", MODES)
def test_retry_after_http_date_is_honoured(monkeypatch, server, mode):
    hook = make_hook(monkeypatch, server)
    # An HTTP date has whole seconds: two seconds past the current whole second waits 1 to 2 s.
    when = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=2)
    server.add(error(503, "ModelUnavailable", {"Retry-After": format_datetime(when, usegmt=True)}), running())
    assert get_task(hook, mode).status is TaskStatus.RUNNING
    assert len(server.requests) == 2
    gap = server.requests.times[1] - server.requests.times[0]
    assert gap >= 0.9


@pytest.mark.parametrize("mode", MODES)
def test_retry_after_beyond_max_retry_seconds_fails_at_once(monkeypatch, server, mode):
    hook = make_hook(monkeypatch, server, max_retry_seconds=1)
    server.add(error(429, "Throttling.AllocationQuota", {"Retry-After": "60"}), running())
    with pytest.raises(DashScopeAPIError) as info:
        get_task(hook, mode)
    assert info.value.code == "Throttling.AllocationQuota"
    assert info.value.retry_after == 60.0
    assert len(server.requests) == 1


@pytest.mark.parametrize("mode", MODES)
def test_unreadable_retry_after_falls_back_to_backoff(monkeypatch, server, mode):
    hook = make_hook(monkeypatch, server)
    server.add(error(429, "Throttling", {"Retry-After": "whenever"}), running())
    assert get_task(hook, mode).status is TaskStatus.RUNNING
    assert len(server.requests) == 2


def test_throttled_submit_is_retried(monkeypatch, server):
    hook = make_hook(monkeypatch, server)
    server.add(
        error(429, "Throttling"),
        Reply(200, {"output": {"task_id": "t-new", "task_status": "PENDING"}, "request_id": "r"}),
    )
    task_id = hook.submit_refiner(
        person_image_url="https://img.example/p.png",
        top_garment_url="https://img.example/t.jpg",
        coarse_image_url="https://img.example/c.png",
        gender="man",
    )
    assert task_id == "t-new"
    assert len(server.requests) == 2
    assert server.requests[0].json() == server.requests[1].json()


def test_truncated_submit_recovers_the_task_id_without_resubmitting(monkeypatch, server):
    hook = make_hook(monkeypatch, server)
    server.add(
        Reply(200, b'{"output": {"task_id": "a8532587-fa8c-4ef8-82be-0c46b17950d1", "task_st'),
        Reply(200, {"output": {"task_id": "duplicate", "task_status": "PENDING"}}),
    )
    task_id = hook.submit_refiner(
        person_image_url="https://img.example/p.png",
        top_garment_url="https://img.example/t.jpg",
        coarse_image_url="https://img.example/c.png",
        gender="woman",
    )
    assert task_id == "a8532587-fa8c-4ef8-82be-0c46b17950d1"
    assert len(server.requests) == 1


def submit_in(hook: DashScopeHook, mode: str) -> Any:
    call = api.refiner_call(
        person_image_url="https://img.example/p.png",
        top_garment_url="https://img.example/t.jpg",
        coarse_image_url="https://img.example/c.png",
        gender="woman",
    )
    if mode == "sync":
        return hook.submit(call)

    async def go() -> Any:
        try:
            return await hook.asubmit(call)
        finally:
            await hook.aclose()

    return asyncio.run(go())


def task_list(*task_ids: str, offset: float = 0.001) -> Reply:
    """The task list after a lost submit: its tasks created `offset` s after the server received the submit."""

    def rows(server: Any) -> dict[str, Any]:
        created = next(r.at for r in server.requests if r.method == "POST") + offset
        china = dt.timezone(dt.timedelta(hours=8))
        stamp = dt.datetime.fromtimestamp(created, china).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        return {"request_id": "req-list",
                "data": [{"task_id": t, "status": "PENDING", "gmt_create": stamp} for t in task_ids]}  # fmt: skip

    return Reply(200, rows)


LOST_REPLIES = [
    pytest.param(Reply(200, b'{"output": {"task_'), id="truncated-200"),
    pytest.param(Reply(drop=True), id="dropped"),
    pytest.param(Reply(504, b"<html><body><h1>504 Gateway Time-out</h1></body></html>"), id="gateway-504-html"),
    pytest.param(Reply(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>"), id="gateway-502-html"),
    pytest.param(Reply(200, b""), id="empty-200"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lost", LOST_REPLIES)
def test_a_lost_submit_reply_is_found_in_the_task_list_not_submitted_again(monkeypatch, server, mode, lost):
    hook = make_hook(monkeypatch, server)
    server.add(lost, task_list("created-before-the-reply-was-lost"))
    submitted = submit_in(hook, mode)
    assert submitted.task_id == "created-before-the-reply-was-lost" and submitted.adopted is True
    assert [r.method for r in server.requests] == ["POST", "GET"]  # one submit, one look
    query = server.requests[1].path
    assert query.startswith("/api/v1/tasks?") and "model_name=aitryon-refiner" in query


@pytest.mark.parametrize("mode", MODES)
def test_a_submit_that_never_arrived_is_sent_again(monkeypatch, server, mode):
    hook = make_hook(monkeypatch, server)
    server.add(Reply(drop=True), task_list(), task_list(), Reply(200, {"output": {"task_id": "t-2"}}))
    assert submit_in(hook, mode).task_id == "t-2"
    assert [r.method for r in server.requests] == ["POST", "GET", "GET", "POST"]


@pytest.mark.parametrize("mode", MODES)
def test_several_unknown_tasks_are_not_guessed(monkeypatch, server, mode):
    hook = make_hook(monkeypatch, server)
    server.add(Reply(drop=True), task_list("someone-elses", "maybe-ours"))
    with pytest.raises(DashScopeAPIError, match="2 unclaimed aitryon-refiner tasks") as info:
        submit_in(hook, mode)
    assert info.value.retryable is False
    assert [r.method for r in server.requests] == ["POST", "GET"]


def test_delay_is_finite_for_many_attempts():
    assert 0.0 <= backoff_delay(60, base=1.0, cap=30.0, rng=random.Random(0)) <= 30.0


def test_delay_survives_very_many_attempts():
    delay = backoff_delay(1025, base=1.0, cap=30.0, rng=random.Random(0))
    assert math.isfinite(delay)
    assert 0.0 <= delay <= 30.0


@pytest.mark.parametrize("mode", MODES)
def test_a_task_created_a_second_before_our_submit_is_not_ours(monkeypatch, server, mode):
    hook = make_hook(monkeypatch, server)
    server.add(Reply(504, b"<html>504 Gateway Time-out</html>"), task_list("someone-elses", offset=-1.0),
               task_list("someone-elses", offset=-1.0), Reply(200, {"output": {"task_id": "ours"}}))  # fmt: skip
    assert submit_in(hook, mode).task_id == "ours"  # not adopted: created before we sent ours
    assert [r.method for r in server.requests] == ["POST", "GET", "GET", "POST"]


@pytest.mark.parametrize("mode", MODES)
def test_a_claimed_task_is_never_adopted(monkeypatch, server, mode):
    from airflow_provider_aitryon.registry import CLAIMS

    hook = make_hook(monkeypatch, server)
    CLAIMS.remember(["another-path-of-this-deployment"])
    server.add(Reply(drop=True), task_list("another-path-of-this-deployment"),
               task_list("another-path-of-this-deployment"), Reply(200, {"output": {"task_id": "ours"}}))  # fmt: skip
    assert submit_in(hook, mode).task_id == "ours"


@pytest.mark.parametrize("mode", MODES)
def test_adoption_off_fails_in_one_sentence(monkeypatch, server, mode):
    hook = make_hook(monkeypatch, server, adopt_lost_submits=False)
    server.add(Reply(drop=True), task_list("maybe-ours"))
    with pytest.raises(DashScopeAPIError, match="adopt_lost_submits is off for connection") as info:
        submit_in(hook, mode)
    assert info.value.retryable is False
    assert [r.method for r in server.requests] == ["POST", "GET"]  # nothing sent twice


def test_a_json_error_from_the_service_is_not_a_lost_reply(monkeypatch, server):
    hook = make_hook(monkeypatch, server)
    server.add(Reply(503, {"code": "ModelUnavailable", "message": "busy"}), Reply(200, {"output": {"task_id": "t"}}))
    assert submit_in(hook, "sync").task_id == "t"
    assert [r.method for r in server.requests] == ["POST", "POST"]  # the service said no task: no lookup
