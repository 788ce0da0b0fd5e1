from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import replies
from airflow.sdk.module_loading import import_string
from conftest import API_KEY, set_connection

from airflow_provider_aitryon.triggers.dashscope import DashScopeTaskTrigger


async def events_of(trigger: DashScopeTaskTrigger) -> list[dict[str, Any]]:
    return [event.payload async for event in trigger.run()]


def make(**kwargs: Any) -> DashScopeTaskTrigger:
    kwargs.setdefault("dashscope_task_id", "task-1")
    kwargs.setdefault("poll_interval", 0.01)
    return DashScopeTaskTrigger(**kwargs)


def test_serialise_and_rebuild_round_trip():
    trigger = make(dashscope_conn_id="dashscope_other", poll_interval=7, end_time=1_900_000_000.5)
    classpath, kwargs = trigger.serialize()
    rebuilt = import_string(classpath)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert classpath == "airflow_provider_aitryon.triggers.dashscope.DashScopeTaskTrigger"
    assert kwargs == {
        "dashscope_task_id": "task-1",
        "dashscope_conn_id": "dashscope_other",
        "poll_interval": 7.0,
        "end_time": 1_900_000_000.5,
        "max_transient_errors": 5,
        "cancel_on_kill": True,
        "model": None,
        "submitted_at": None,
    }


def test_kwargs_never_hold_the_key(scripted):
    # Settings are loaded (key included) before serialising, as after a real poll.
    trigger = make()
    scripted.add(replies.task("RUNNING"))
    asyncio.run(trigger._hook().aget_task("task-1"))
    assert API_KEY not in json.dumps(trigger.serialize()[1])


async def test_polls_until_success_and_yields_one_json_safe_event(scripted):
    scripted.add(
        replies.task("PENDING"),
        replies.task("PRE-PROCESSING"),
        replies.task("RUNNING"),
        replies.task("POST-PROCESSING"),
        replies.task("SUCCEEDED"),
    )
    events = await events_of(make())
    assert len(events) == 1
    event = events[0]
    assert json.loads(json.dumps(event)) == event
    assert event["status"] == "success"
    assert event["task"]["image_url"] == "http://results.example/refined.png"
    assert event["task"]["usage"] == {"image_count": 1}
    assert [r.path for r in scripted.requests] == ["/api/v1/tasks/task-1"] * 5


@pytest.mark.parametrize("status", ["FAILED", "CANCELED", "UNKNOWN"])
async def test_terminal_failures_end_the_wait(scripted, status):
    scripted.add(replies.task("RUNNING"), replies.task(status, code="InvalidPerson", message="no person"))
    (event,) = await events_of(make())
    assert event["status"] == "failure"
    assert event["task"]["status"] == status
    assert event["task"]["code"] == "InvalidPerson"
    assert len(scripted.requests) == 2


async def test_unlisted_status_keeps_polling(scripted):
    scripted.add(replies.task("WARMING-UP"), replies.task("SUCCEEDED"))
    (event,) = await events_of(make())
    assert event["status"] == "success"
    assert len(scripted.requests) == 2


async def test_deadline_gives_a_timeout_event_with_the_last_status(scripted):
    scripted.default = replies.task("PENDING")
    (event,) = await events_of(make(end_time=time.time() + 0.5))
    assert event["status"] == "timeout"
    assert event["task"]["status"] == "PENDING"
    assert "did not finish before the deadline" in event["message"]


async def test_survives_a_short_transient_streak(scripted, monkeypatch):
    set_connection(monkeypatch, scripted.base_url, max_attempts=1)
    scripted.add(replies.error(503, "ModelUnavailable"), replies.error(500, "InternalError"), replies.task("SUCCEEDED"))
    (event,) = await events_of(make(max_transient_errors=2))
    assert event["status"] == "success"


async def test_a_long_transient_streak_is_bounded(scripted, monkeypatch):
    set_connection(monkeypatch, scripted.base_url, max_attempts=1)
    scripted.default = replies.error(503, "ModelUnavailable")
    (event,) = await events_of(make(max_transient_errors=2))
    assert event["status"] == "error"
    assert "ModelUnavailable" in event["message"]
    assert len(scripted.requests) == 3


async def test_permanent_error_stops_at_once_without_leaking_the_key(scripted):
    scripted.default = replies.error(401, "InvalidApiKey", "Invalid API-key provided.")
    (event,) = await events_of(make())
    assert event["status"] == "error"
    assert "InvalidApiKey" in event["message"]
    assert API_KEY not in json.dumps(event)
    assert len(scripted.requests) == 1


async def test_on_kill_cancels_a_pending_task(scripted):
    scripted.add(replies.task("PENDING"), replies.Reply(200, {"request_id": "req-cancel"}))
    await make().on_kill()
    assert [(r.method, r.path) for r in scripted.requests] == [
        ("GET", "/api/v1/tasks/task-1"),
        ("POST", "/api/v1/tasks/task-1/cancel"),
    ]


async def test_on_kill_leaves_a_running_task_alone(scripted):
    scripted.add(replies.task("RUNNING"))
    await make().on_kill()
    assert [r.method for r in scripted.requests] == ["GET"]


async def test_cleanup_does_not_cancel(scripted):
    # cleanup() runs on triggerer restarts too: it must never cancel the paid task.
    await make().cleanup()
    assert scripted.requests == []
