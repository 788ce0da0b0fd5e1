from __future__ import annotations

import time

import pytest
import replies
from conftest import API_KEY, set_connection

from airflow_provider_aitryon.compat import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)
from airflow_provider_aitryon.operators.refiner import RefinerSubmitOperator
from airflow_provider_aitryon.sensors.refiner import RefinerTaskSensor
from airflow_provider_aitryon.triggers.dashscope import DashScopeTaskTrigger, task_event

URLS = {
    "person_image_url": "http://img.example/person.png",
    "top_garment_url": "http://img.example/top.png",
    "coarse_image_url": "http://img.example/coarse.png",
}


def submit_op(**overrides):
    kwargs = {**URLS, "gender": "woman", "task_id": "submit", "validate_inputs": False}
    kwargs.update(overrides)
    return RefinerSubmitOperator(**kwargs)


def sensor(**overrides):
    kwargs = {"task_id": "wait", "dashscope_task_id": "task-1", "poke_interval": 0.01, "timeout": 60}
    kwargs.update(overrides)
    return RefinerTaskSensor(**kwargs)


# ------------------------------------------------------------------------- RefinerSubmitOperator


def test_operator_templates_every_url_and_gender():
    assert set(RefinerSubmitOperator.template_fields) >= {
        "person_image_url", "top_garment_url", "bottom_garment_url", "coarse_image_url", "gender",
    }  # fmt: skip


def test_operator_submits_and_returns_task_id(scripted, context):
    scripted.add(replies.submitted("task-42"))
    assert submit_op(bottom_garment_url="http://img.example/bottom.png").execute(context) == "task-42"
    assert context["ti"].pushed == {"dashscope_task_id": "task-42", "request_id": "req-submit", "adopted": False}
    (request,) = scripted.requests
    assert request.json()["input"]["bottom_garment_url"] == "http://img.example/bottom.png"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"person_image_url": ""}, "person_image_url is missing"),
        ({"top_garment_url": "ftp://img.example/top.png"}, "top_garment_url must be an http\\(s\\) URL"),
        ({"coarse_image_url": "coarse.png"}, "coarse_image_url must be an http\\(s\\) URL"),
        ({"bottom_garment_url": "file:///tmp/b.png"}, "bottom_garment_url is a local file"),
        ({"gender": "female"}, "gender must be one of woman, man"),
    ],
)
def test_operator_checks_arguments_before_any_request(scripted, context, overrides, field):
    with pytest.raises(AirflowFailException, match=field):
        submit_op(**overrides).execute(context)
    assert scripted.requests == []


def test_permanent_api_error_fails_without_retries(scripted, context):
    scripted.add(replies.error(400, "InvalidURL", "The request URL is invalid"))
    with pytest.raises(AirflowFailException) as info:
        submit_op().execute(context)
    message = str(info.value)
    assert "InvalidURL" in message
    assert "The request URL is invalid" in message
    assert "req-InvalidURL" in message
    assert len(scripted.requests) == 1


def test_transient_api_error_is_left_to_airflow_retries(scripted, context):
    scripted.default = replies.error(503, "ModelUnavailable")
    with pytest.raises(AirflowException) as info:
        submit_op().execute(context)
    assert not isinstance(info.value, AirflowFailException)
    assert len(scripted.requests) == 3  # the connection's max_attempts


def test_missing_api_key_is_one_sentence(monkeypatch, context):
    monkeypatch.setenv("AIRFLOW_CONN_DASHSCOPE_DEFAULT", '{"conn_type": "dashscope", "host": "http://127.0.0.1:9"}')
    with pytest.raises(AirflowFailException, match="has no API key; set its password"):
        submit_op().execute(context)


# ------------------------------------------------------------------------- RefinerTaskSensor


def test_sensor_defers_with_an_absolute_deadline(scripted, context):
    scripted.add(replies.task("RUNNING"))
    before = time.time()
    with pytest.raises(TaskDeferred) as info:
        sensor(timeout=600).execute(context)
    trigger = info.value.trigger
    assert isinstance(trigger, DashScopeTaskTrigger)
    assert info.value.method_name == "execute_complete"
    kwargs = trigger.serialize()[1]
    assert kwargs["dashscope_task_id"] == "task-1"
    assert kwargs["poll_interval"] == 0.01
    assert before + 600 <= kwargs["end_time"] <= time.time() + 600
    assert API_KEY not in repr(kwargs)


def test_sensor_checks_once_before_deferring(scripted, context):
    scripted.add(replies.task("SUCCEEDED"))
    result = sensor().execute(context)
    assert result["task_status"] == "SUCCEEDED"
    assert result["image_url"] == "http://results.example/refined.png"
    assert len(scripted.requests) == 1


def test_sensor_first_look_failure_fails_at_once(scripted, context):
    scripted.add(replies.task("FAILED", code="InvalidPerson", message="no person"))
    with pytest.raises(AirflowFailException, match="InvalidPerson: no person"):
        sensor().execute(context)


def test_sensor_in_poke_mode_polls_until_done(scripted, context):
    scripted.add(replies.task("PENDING"), replies.task("RUNNING"), replies.task("SUCCEEDED"))
    result = sensor(deferrable=False).execute(context)
    assert set(result) >= {"task_id", "task_status", "image_url", "usage", "request_id"}
    assert result["usage"] == {"image_count": 1}
    assert len(scripted.requests) == 3


def test_sensor_in_poke_mode_rides_out_a_transient_error(scripted, monkeypatch, context):
    set_connection(monkeypatch, scripted.base_url, max_attempts=1)
    scripted.add(replies.error(500, "InternalError"), replies.task("SUCCEEDED"))
    assert sensor(deferrable=False).execute(context)["task_status"] == "SUCCEEDED"


def test_sensor_in_poke_mode_times_out_and_soft_fails(scripted, context):
    scripted.default = replies.task("RUNNING")
    with pytest.raises(AirflowSensorTimeout):
        sensor(deferrable=False, timeout=0.05).execute(context)
    with pytest.raises(AirflowSkipException):
        sensor(deferrable=False, timeout=0.05, soft_fail=True).execute(context)


def result_of(status: str, **fields):
    from airflow_provider_aitryon.api import parse_task

    return parse_task(replies.task(status, **fields).body)


def test_execute_complete_success(context):
    event = task_event("success", "task-1", result_of("SUCCEEDED"))
    result = sensor().execute_complete(context, event)
    assert result["task_id"] == "task-1"
    assert result["image_url"] == "http://results.example/refined.png"
    assert result["request_id"] == "req-succeeded"


@pytest.mark.parametrize("status", ["FAILED", "CANCELED", "UNKNOWN"])
def test_execute_complete_failure_names_code_and_message(context, status):
    event = task_event("failure", "task-1", result_of(status, code="InvalidGarment", message="no garment"))
    with pytest.raises(AirflowFailException, match="InvalidGarment: no garment") as info:
        sensor().execute_complete(context, event)
    assert "task-1" in str(info.value)


def test_execute_complete_timeout_cancels_a_pending_task(scripted, context):
    scripted.add(replies.Reply(200, {"request_id": "req-cancel"}))
    event = task_event("timeout", "task-1", result_of("PENDING"), "did not finish before the deadline")
    with pytest.raises(AirflowSensorTimeout, match="deadline"):
        sensor().execute_complete(context, event)
    assert [(r.method, r.path) for r in scripted.requests] == [("POST", "/api/v1/tasks/task-1/cancel")]


def test_execute_complete_timeout_leaves_a_running_task(scripted, context):
    event = task_event("timeout", "task-1", result_of("RUNNING"), "did not finish before the deadline")
    with pytest.raises(AirflowSensorTimeout):
        sensor().execute_complete(context, event)
    assert scripted.requests == []


def test_execute_complete_error_and_garbage(context):
    with pytest.raises(AirflowFailException, match="InvalidApiKey"):
        sensor().execute_complete(context, task_event("error", "task-1", None, "HTTP 401 InvalidApiKey"))
    with pytest.raises(AirflowFailException, match="unexpected event"):
        sensor().execute_complete(context, {"status": "weird"})


def test_sensor_in_reschedule_mode_frees_the_slot_until_the_next_poke(scripted, context):
    from airflow_provider_aitryon.compat import AirflowRescheduleException

    scripted.add(replies.task("RUNNING"), replies.task("SUCCEEDED"))
    with pytest.raises(AirflowRescheduleException):
        sensor(deferrable=False, mode="reschedule").execute(context)
    # the next try, after the reschedule: done
    assert sensor(deferrable=False, mode="reschedule").execute(context)["task_status"] == "SUCCEEDED"
