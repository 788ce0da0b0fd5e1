from __future__ import annotations

import pytest
import replies
from conftest import FakeTI, remember, set_connection

from airflow_provider_aitryon.compat import AirflowException, AirflowFailException, TaskDeferred
from airflow_provider_aitryon.operators.refiner import RefinerSubmitOperator
from airflow_provider_aitryon.operators.tryon import TryOnSubmitOperator
from airflow_provider_aitryon.triggers.dashscope import task_event

PERSON = "http://img.example/person.png"
TOP = "http://img.example/top.png"
BOTTOM = "http://img.example/bottom.png"


def tryon(**overrides):
    kwargs = {"task_id": "submit", "person_image_url": PERSON, "top_garment_url": TOP, "validate_inputs": False}
    kwargs.update(overrides)
    return TryOnSubmitOperator(**kwargs)


# ------------------------------------------------------------------------- coarse wire format


@pytest.mark.parametrize("model", ["aitryon", "aitryon-plus"])
def test_coarse_submit_body_for_the_refiner(scripted, context, model):
    scripted.add(replies.submitted("coarse-1"))
    assert tryon(model=model, bottom_garment_url=BOTTOM).execute(context) == "coarse-1"
    (request,) = scripted.requests
    assert request.path == "/api/v1/services/aigc/image2image/image-synthesis"
    assert request.headers["X-DashScope-Async"] == "enable"
    assert request.json() == {
        "model": model,
        "input": {"person_image_url": PERSON, "top_garment_url": TOP, "bottom_garment_url": BOTTOM},
        "parameters": {"resolution": -1, "restore_face": True},
    }


def test_coarse_bottom_only_and_free_resolution_when_not_for_the_refiner(scripted, context):
    scripted.add(replies.submitted())
    tryon(top_garment_url=None, bottom_garment_url=BOTTOM, for_refiner=False, resolution=1280,
          restore_face=False).execute(context)  # fmt: skip
    assert scripted.requests[0].json()["input"] == {"person_image_url": PERSON, "bottom_garment_url": BOTTOM}
    assert scripted.requests[0].json()["parameters"] == {"resolution": 1280, "restore_face": False}


def test_coarse_needs_a_garment(scripted, context):
    with pytest.raises(AirflowFailException, match="top_garment_url and bottom_garment_url are both empty"):
        tryon(top_garment_url="").execute(context)
    assert scripted.requests == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"resolution": 1024}, "resolution is 1024 but a coarse image for the refiner must keep"),
        ({"restore_face": False}, "restore_face is false but a coarse image for the refiner"),
        ({"resolution": 720}, "resolution must be one of -1, 1024 or 1280, got 720"),
    ],
)
def test_for_refiner_is_enforced_when_the_dag_is_parsed(settings, message):
    with pytest.raises(AirflowFailException, match=message):
        tryon(**settings)


def test_for_refiner_is_enforced_at_run_time_for_templated_values(scripted, context):
    op = tryon(resolution="{{ params.resolution }}")
    op.resolution = "1024"  # what rendering the template produced
    with pytest.raises(AirflowFailException, match="resolution is 1024"):
        op.execute(context)
    assert scripted.requests == []


# ------------------------------------------------------------------------- no double charge


def refiner(**overrides):
    kwargs = {"task_id": "submit", "person_image_url": PERSON, "top_garment_url": TOP,
              "coarse_image_url": "http://img.example/coarse.png", "gender": "man",
              "validate_inputs": False}  # fmt: skip
    kwargs.update(overrides)
    return RefinerSubmitOperator(**kwargs)


@pytest.mark.parametrize("status", ["PENDING", "RUNNING", "SUCCEEDED"])
def test_retry_reuses_a_live_or_finished_task(scripted, memory_registry, status, capsys):
    op = refiner()
    remember(memory_registry, op)
    scripted.add(replies.task(status, task_id="earlier-task"))
    context = {"ti": FakeTI(try_number=2)}
    assert op.execute(context) == "earlier-task"
    assert [r.method for r in scripted.requests] == ["GET"]  # looked, did not submit
    assert context["ti"].pushed["dashscope_task_id"] == "earlier-task"
    assert "Reusing DashScope task earlier-task, submitted earlier by dag/manual__2026-01-01/submit#1" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize("status", ["FAILED", "CANCELED", "UNKNOWN"])
def test_retry_submits_again_after_a_dead_task(scripted, memory_registry, status, capsys):
    op = refiner()
    remember(memory_registry, op)
    scripted.add(replies.task(status, task_id="earlier-task"), replies.submitted("new-task"))
    assert op.execute({"ti": FakeTI(try_number=2)}) == "new-task"
    assert [r.method for r in scripted.requests] == ["GET", "POST"]
    assert f"the earlier task earlier-task ended {status}" in capsys.readouterr().out


def test_changed_inputs_are_a_new_request(scripted, memory_registry):
    remember(memory_registry, refiner(gender="woman"))
    scripted.add(replies.submitted("new-task"))
    assert refiner(gender="man").execute({"ti": FakeTI(try_number=2)}) == "new-task"
    assert [r.method for r in scripted.requests] == ["POST"]


def test_unreadable_previous_task_fails_rather_than_paying_twice(scripted, memory_registry, monkeypatch):
    set_connection(monkeypatch, scripted.base_url, max_attempts=1)
    op = refiner()
    remember(memory_registry, op)
    scripted.default = replies.error(503, "ModelUnavailable")
    with pytest.raises(AirflowException):
        op.execute({"ti": FakeTI(try_number=2)})
    assert [r.method for r in scripted.requests] == ["GET"]


def test_a_finished_task_instance_keeps_its_entry_so_a_clear_reuses_the_task(scripted, memory_registry, context):
    scripted.add(replies.submitted("task-1"), replies.task("RUNNING", task_id="task-1"))
    assert refiner().execute(context) == "task-1"
    (entry,) = memory_registry.entries().values()
    assert entry.task_id == "task-1" and entry.status == "PENDING"
    # The user clears the run (the sensor timed out while the task ran): same task, no second submit.
    assert refiner().execute({"ti": FakeTI(try_number=2)}) == "task-1"
    assert [r.method for r in scripted.requests] == ["POST", "GET"]


def test_resubmit_asks_for_a_new_generation_and_keeps_the_old_id(scripted, memory_registry, context, capsys):
    scripted.add(replies.submitted("task-1"), replies.submitted("task-2"))
    assert refiner().execute(context) == "task-1"
    assert refiner(resubmit=True).execute({"ti": FakeTI(try_number=2)}) == "task-2"
    (entry,) = memory_registry.entries().values()
    assert entry.task_id == "task-2" and entry.superseded == ["task-1"]
    assert "resubmit=True: submitting a new generation" in capsys.readouterr().out


def test_ledger_entry_is_written_before_anything_can_fail(scripted, memory_registry):
    class DiesAfterSubmitting(RefinerSubmitOperator):
        def submit_once(self, context, hook, call):
            super().submit_once(context, hook, call)
            raise RuntimeError("worker lost")

    scripted.add(replies.submitted("task-1"), replies.task("RUNNING", task_id="task-1"))
    with pytest.raises(RuntimeError):
        DiesAfterSubmitting(**{**refiner_kwargs()}).execute({"ti": FakeTI()})
    (entry,) = memory_registry.entries().values()
    assert entry.task_id == "task-1"
    # The next try reuses it.
    assert refiner().execute({"ti": FakeTI(try_number=2)}) == "task-1"
    assert [r.method for r in scripted.requests] == ["POST", "GET"]


def refiner_kwargs():
    return {"task_id": "submit", "person_image_url": PERSON, "top_garment_url": TOP,
            "coarse_image_url": "http://img.example/coarse.png", "gender": "man",
            "validate_inputs": False}  # fmt: skip


# ------------------------------------------------------------------------- submit and wait


def test_submit_and_wait_in_the_worker(scripted, memory_registry, context):
    scripted.add(replies.submitted("task-1"), replies.task("RUNNING"), replies.task("SUCCEEDED"))
    result = tryon(wait_for_completion=True, deferrable=False, poll_interval=0.01).execute(context)
    assert result["task_id"] == "task-1"
    assert result["image_url"] == "http://results.example/refined.png"
    assert result["adopted"] is False
    assert [e.task_id for e in memory_registry.entries().values()] == ["task-1"]  # kept for 24 h


def test_submit_and_wait_failure_is_permanent(scripted, context):
    scripted.add(replies.submitted("task-1"), replies.task("FAILED", code="InvalidPerson", message="no person"))
    with pytest.raises(AirflowFailException, match="InvalidPerson"):
        tryon(wait_for_completion=True, deferrable=False, poll_interval=0.01).execute(context)


def test_submit_and_wait_deferred(scripted, memory_registry, context):
    scripted.add(replies.submitted("task-1"))
    op = refiner(wait_for_completion=True, poll_interval=3, wait_timeout=120)
    with pytest.raises(TaskDeferred) as info:
        op.execute(context)
    kwargs = info.value.trigger.serialize()[1]
    assert kwargs["dashscope_task_id"] == "task-1"
    assert kwargs["poll_interval"] == 3
    assert memory_registry.entries()  # a retry meanwhile must reuse

    from airflow_provider_aitryon.api import parse_task

    event = task_event("success", "task-1", parse_task(replies.task("SUCCEEDED").body))
    assert op.execute_complete(context, event)["image_url"] == "http://results.example/refined.png"
    assert memory_registry.entries()  # kept after success: a clear reuses the task
