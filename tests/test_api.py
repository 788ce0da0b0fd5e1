"""The wire format in `airflow_provider_aitryon.api`: requests, argument checks and response parsing.

Bodies and headers are checked against the vendor page's own examples
(/work/shared/spec/000_bce052fdf375d505.txt) and the English sheet beside it.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from email.utils import format_datetime
from typing import Any

import pytest
from replies import VENDOR_INPUT, VENDOR_SUBMITTED

from airflow_provider_aitryon import api
from airflow_provider_aitryon.errors import DashScopeAPIError, DashScopeConfigError
from airflow_provider_aitryon.models import Outcome, TaskStatus

# The vendor page's request example, verbatim.
VENDOR_BODY = {"model": "aitryon-refiner", "input": VENDOR_INPUT, "parameters": {"gender": "woman"}}

# The vendor page's response examples.
VENDOR_SUCCEEDED = {
    "output": {
        "task_id": "a8532587-fa8c-4ef8-82be-0c46b17950d1",
        "task_status": "SUCCEEDED",
        "results": {"image_url": "https://dashscope-result.example/refined.jpg"},
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
        "message": "The image resolution is invalid,  please make sure that the largest length of image "
        "is smaller than 4096, and the smallest length of image is larger than 150. and the size of "
        "image ranges from 5kb to 5mb",
    },
}

URL = "https://img.example/a.jpg"


def refiner_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "person_image_url": VENDOR_INPUT["person_image_url"],
        "top_garment_url": VENDOR_INPUT["top_garment_url"],
        "bottom_garment_url": VENDOR_INPUT["bottom_garment_url"],
        "coarse_image_url": VENDOR_INPUT["coarse_image_url"],
        "gender": "woman",
    }
    kwargs.update(overrides)
    return kwargs


# --------------------------------------------------------------------------------------------
# Endpoints and headers
# --------------------------------------------------------------------------------------------


def test_endpoint_paths_match_the_spec():
    assert api.DEFAULT_BASE_URL == "https://dashscope.aliyuncs.com"
    assert api.SUBMIT_PATH == "/api/v1/services/aigc/image2image/image-synthesis"
    assert api.task_path("abc") == "/api/v1/tasks/abc"
    assert api.cancel_path("abc") == "/api/v1/tasks/abc/cancel"


def test_refiner_call_matches_the_vendor_example_exactly():
    call = api.refiner_call(**refiner_kwargs())
    assert call.operation == "submit"
    assert call.method == "POST"
    assert call.path == "/api/v1/services/aigc/image2image/image-synthesis"
    assert call.body == VENDOR_BODY
    assert call.asynchronous is True


def test_submit_headers_carry_key_json_and_async():
    headers = api.refiner_call(**refiner_kwargs()).headers("sk-test-key-123")
    assert headers["Authorization"] == "Bearer sk-test-key-123"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-DashScope-Async"] == "enable"
    assert "X-DashScope-WorkSpace" not in headers


def test_submit_headers_carry_workspace_when_given():
    headers = api.refiner_call(**refiner_kwargs()).headers("sk-test-key-123", "ws-42")
    assert headers["X-DashScope-WorkSpace"] == "ws-42"


@pytest.mark.parametrize("workspace", [None, ""])
def test_no_workspace_header_without_a_workspace(workspace):
    headers = api.refiner_call(**refiner_kwargs()).headers("k", workspace)
    assert "X-DashScope-WorkSpace" not in headers


def test_query_call_is_a_get_without_body_or_async_header():
    call = api.query_call("a8532587-fa8c-4ef8-82be-0c46b17950d1")
    assert (call.operation, call.method, call.path) == (
        "query",
        "GET",
        "/api/v1/tasks/a8532587-fa8c-4ef8-82be-0c46b17950d1",
    )
    assert call.body is None
    headers = call.headers("sk-test-key-123")
    assert headers["Authorization"] == "Bearer sk-test-key-123"
    assert "X-DashScope-Async" not in headers
    assert "Content-Type" not in headers


def test_cancel_call_is_a_post_to_cancel():
    call = api.cancel_call("t-1")
    assert (call.operation, call.method, call.path) == ("cancel", "POST", "/api/v1/tasks/t-1/cancel")
    assert "X-DashScope-Async" not in call.headers("k")


def test_task_id_is_stripped():
    assert api.query_call("  t-1 \n").path == "/api/v1/tasks/t-1"


# --------------------------------------------------------------------------------------------
# Refiner body details
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("absent", [None, "", "   "])
def test_absent_bottom_garment_is_omitted_not_null(absent):
    call = api.refiner_call(**refiner_kwargs(bottom_garment_url=absent))
    assert "bottom_garment_url" not in call.body["input"]
    assert call.body["input"] == {
        "person_image_url": VENDOR_INPUT["person_image_url"],
        "top_garment_url": VENDOR_INPUT["top_garment_url"],
        "coarse_image_url": VENDOR_INPUT["coarse_image_url"],
    }
    assert call.body["parameters"] == {"gender": "woman"}


def test_bottom_garment_defaults_to_absent():
    kwargs = refiner_kwargs()
    del kwargs["bottom_garment_url"]
    assert "bottom_garment_url" not in api.refiner_call(**kwargs).body["input"]


@pytest.mark.parametrize(("given", "sent"), [("man", "man"), ("Woman", "woman"), (" MAN ", "man")])
def test_gender_is_normalised(given, sent):
    assert api.refiner_call(**refiner_kwargs(gender=given)).body["parameters"] == {"gender": sent}


def test_urls_are_stripped():
    call = api.refiner_call(**refiner_kwargs(person_image_url=f"  {URL}\n"))
    assert call.body["input"]["person_image_url"] == URL


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------

REQUIRED_URLS = ["person_image_url", "top_garment_url", "coarse_image_url"]
ALL_URLS = [*REQUIRED_URLS, "bottom_garment_url"]


@pytest.mark.parametrize("missing", [None, "", "  "])
@pytest.mark.parametrize("field_name", REQUIRED_URLS)
def test_missing_required_url_names_the_field(field_name, missing):
    with pytest.raises(DashScopeConfigError) as info:
        api.refiner_call(**refiner_kwargs(**{field_name: missing}))
    assert str(info.value).startswith(f"{field_name} is missing")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "bad",
    [
        "ftp://img.example/a.jpg",
        "img.example/a.jpg",
        "//img.example/a.jpg",
        "http://",
        "javascript:alert(1)",
        "s3://bucket/a.jpg",
    ],
)
@pytest.mark.parametrize("field_name", ALL_URLS)
def test_non_http_url_names_the_field(field_name, bad):
    with pytest.raises(DashScopeConfigError) as info:
        api.refiner_call(**refiner_kwargs(**{field_name: bad}))
    message = str(info.value)
    # http(s) URLs, oss://bucket/key and absolute local paths are image references; nothing else.
    assert message.startswith(f"{field_name} must be an http")
    assert bad.strip() in message


@pytest.mark.parametrize("bad", [123, b"https://img.example/a.jpg", ["https://img.example/a.jpg"], 1.5])
@pytest.mark.parametrize("field_name", ALL_URLS)
def test_non_string_url_names_the_field(field_name, bad):
    with pytest.raises(DashScopeConfigError) as info:
        api.refiner_call(**refiner_kwargs(**{field_name: bad}))
    message = str(info.value)
    assert message.startswith(f"{field_name} must be a URL string, got {type(bad).__name__}")


@pytest.mark.parametrize("bad", [None, "", "female", "women", "m", 1, True, ["woman"]])
def test_bad_gender_names_the_field(bad):
    with pytest.raises(DashScopeConfigError) as info:
        api.refiner_call(**refiner_kwargs(gender=bad))
    message = str(info.value)
    assert message.startswith("gender must be one of woman, man")
    assert "set gender" in message


def test_long_bad_url_is_shortened_in_the_message():
    bad = "ftp://img.example/" + "x" * 500
    with pytest.raises(DashScopeConfigError) as info:
        api.refiner_call(**refiner_kwargs(top_garment_url=bad))
    assert len(str(info.value)) < 300
    assert "top_garment_url" in str(info.value)


@pytest.mark.parametrize("build", [api.query_call, api.cancel_call])
@pytest.mark.parametrize("empty", [None, "", "   ", 42])
def test_empty_task_id_is_refused(build, empty):
    with pytest.raises(DashScopeConfigError) as info:
        build(empty)
    assert str(info.value).startswith("dashscope_task_id is empty")


@pytest.mark.parametrize("build", [api.query_call, api.cancel_call])
@pytest.mark.parametrize("bad", ["a/b", "../tasks", "t-1/cancel", "t?x=1", "t#frag", "x" * 129])
def test_task_id_with_path_characters_is_refused(build, bad):
    with pytest.raises(DashScopeConfigError) as info:
        build(bad)
    message = str(info.value)
    assert message.startswith("dashscope_task_id ")
    assert "is not a DashScope task id" in message


# --------------------------------------------------------------------------------------------
# Submit response
# --------------------------------------------------------------------------------------------


def test_parse_submitted_vendor_example():
    submitted = api.parse_submitted(VENDOR_SUBMITTED)
    assert submitted.task_id == "a8532587-fa8c-4ef8-82be-0c46b17950d1"
    assert submitted.status is TaskStatus.PENDING
    assert submitted.request_id == "7574ee8f-38a3-4b1e-9280-11c33ab46e51"


def test_parse_submitted_without_task_id_is_a_permanent_error():
    with pytest.raises(DashScopeAPIError) as info:
        api.parse_submitted({"output": {"task_status": "PENDING"}, "request_id": "r-1"})
    exc = info.value
    assert exc.operation == "submit"
    assert exc.request_id == "r-1"
    assert exc.retryable is False
    assert "task_id" in str(exc)


def test_parse_submitted_without_output_is_an_error():
    with pytest.raises(DashScopeAPIError) as info:
        api.parse_submitted({"request_id": "r-2"})
    assert info.value.request_id == "r-2"


# --------------------------------------------------------------------------------------------
# Query response: result shapes
# --------------------------------------------------------------------------------------------

IMG = "https://dashscope-result.example/refined.jpg"


def succeeded(**output: Any) -> dict[str, Any]:
    return {"output": {"task_id": "t-1", "task_status": "SUCCEEDED", **output}, "request_id": "r"}


@pytest.mark.parametrize(
    "output",
    [
        pytest.param({"results": {"image_url": IMG}}, id="results-object"),
        pytest.param({"results": [{"image_url": IMG}]}, id="results-list"),
        pytest.param({"results": [{"other": 1}, {"image_url": IMG}]}, id="results-list-second"),
        pytest.param({"results": {"image_url": [IMG]}}, id="results-image_url-array"),
        pytest.param({"image_url": IMG}, id="image_url-direct"),
        pytest.param({"results": [{"url": IMG}]}, id="results-list-url"),
    ],
)
def test_every_result_shape_gives_the_same_image_url(output):
    result = api.parse_task(succeeded(**output))
    assert result.image_url == IMG
    assert result.status is TaskStatus.SUCCEEDED
    assert result.outcome is Outcome.SUCCESS


def test_parse_task_vendor_success_example():
    result = api.parse_task(VENDOR_SUCCEEDED)
    assert result.task_id == "a8532587-fa8c-4ef8-82be-0c46b17950d1"
    assert result.status is TaskStatus.SUCCEEDED
    assert result.raw_status == "SUCCEEDED"
    assert result.image_url == "https://dashscope-result.example/refined.jpg"
    assert result.usage == {"image_count": 1}
    assert result.request_id == "7574ee8f-38a3-4b1e-9280-11c33ab46e51"
    assert result.code is None and result.message is None


def test_parse_task_carries_usage_request_id_and_times():
    payload = {
        "output": {
            "task_id": "t-9",
            "task_status": "SUCCEEDED",
            "results": {"image_url": IMG},
            "submit_time": "2026-01-01 10:00:00.123",
            "scheduled_time": "2026-01-01 10:00:00.456",
            "end_time": "2026-01-01 10:00:12.789",
        },
        "usage": {"image_count": 1},
        "request_id": "req-77",
    }
    result = api.parse_task(payload)
    assert result.submit_time == "2026-01-01 10:00:00.123"
    assert result.scheduled_time == "2026-01-01 10:00:00.456"
    assert result.end_time == "2026-01-01 10:00:12.789"
    assert result.usage == {"image_count": 1}
    assert result.request_id == "req-77"
    assert result.to_xcom() == {
        "task_id": "t-9",
        "task_status": "SUCCEEDED",
        "image_url": IMG,
        "usage": {"image_count": 1},
        "request_id": "req-77",
        "submit_time": "2026-01-01 10:00:00.123",
        "end_time": "2026-01-01 10:00:12.789",
    }


def test_parse_task_vendor_failure_example():
    result = api.parse_task(VENDOR_FAILED)
    assert result.status is TaskStatus.FAILED
    assert result.outcome is Outcome.FAILURE
    assert result.task_id == "e32bd911-5a3d-4687-bf53-9aaef32213e9"
    assert result.code == "InvalidInputLength"
    assert result.message == VENDOR_FAILED["output"]["message"]
    assert result.request_id == "6bf4693b-c6d0-933a-b7b7-f625d098d742"
    assert result.image_url is None


@pytest.mark.parametrize(
    "output",
    [
        pytest.param({}, id="no-results"),
        pytest.param({"results": {}}, id="empty-object"),
        pytest.param({"results": []}, id="empty-list"),
        pytest.param({"results": {"image_url": ""}}, id="empty-url"),
        pytest.param({"results": [{"image_url": None}]}, id="null-url"),
    ],
)
def test_succeeded_without_image_url_is_a_retryable_error(output):
    payload = succeeded(**output)
    payload["request_id"] = "req-no-url"
    with pytest.raises(DashScopeAPIError) as info:
        api.parse_task(payload)
    exc = info.value
    assert exc.retryable is True
    assert exc.operation == "query"
    assert exc.request_id == "req-no-url"
    assert "no image URL" in str(exc)


def test_parse_task_without_output_is_a_retryable_error():
    with pytest.raises(DashScopeAPIError) as info:
        api.parse_task({"request_id": "r-3", "code": None})
    assert info.value.retryable is True
    assert info.value.request_id == "r-3"


def test_parse_task_falls_back_to_the_queried_task_id():
    result = api.parse_task({"output": {"task_status": "RUNNING"}}, "t-asked")
    assert result.task_id == "t-asked"


# --------------------------------------------------------------------------------------------
# Query response: statuses
# --------------------------------------------------------------------------------------------

STATUS_OUTCOMES = [
    ("PENDING", TaskStatus.PENDING, Outcome.RUNNING),
    ("PRE-PROCESSING", TaskStatus.PRE_PROCESSING, Outcome.RUNNING),
    ("RUNNING", TaskStatus.RUNNING, Outcome.RUNNING),
    ("POST-PROCESSING", TaskStatus.POST_PROCESSING, Outcome.RUNNING),
    ("SUSPENDED", TaskStatus.SUSPENDED, Outcome.RUNNING),
    ("SUCCEEDED", TaskStatus.SUCCEEDED, Outcome.SUCCESS),
    ("FAILED", TaskStatus.FAILED, Outcome.FAILURE),
    ("CANCELED", TaskStatus.CANCELED, Outcome.FAILURE),
    ("UNKNOWN", TaskStatus.UNKNOWN, Outcome.FAILURE),
]


def test_the_spec_lists_nine_statuses():
    assert len(TaskStatus) == 9
    assert {raw for raw, _, _ in STATUS_OUTCOMES} == {s.value for s in TaskStatus}


@pytest.mark.parametrize(("raw", "status", "outcome"), STATUS_OUTCOMES)
def test_every_status_maps_to_its_outcome(raw, status, outcome):
    output: dict[str, Any] = {"task_id": "t-1", "task_status": raw}
    if raw == "SUCCEEDED":
        output["results"] = {"image_url": IMG}
    result = api.parse_task({"output": output, "request_id": "r"})
    assert result.status is status
    assert result.raw_status == raw
    assert result.outcome is outcome
    assert status.is_terminal is (outcome is not Outcome.RUNNING)


def test_missing_status_reads_as_unknown():
    result = api.parse_task({"output": {"task_id": "t-1"}})
    assert result.status is TaskStatus.UNKNOWN
    assert result.outcome is Outcome.FAILURE


def test_unknown_status_is_running_and_logged_once(caplog):
    new_status = f"WAITING-FOR-GPU-{uuid.uuid4().hex[:8].upper()}"
    caplog.set_level(logging.WARNING)
    first = api.parse_task({"output": {"task_id": "t-1", "task_status": new_status}})
    second = api.parse_task({"output": {"task_id": "t-1", "task_status": new_status}})
    for result in (first, second):
        assert result.status is TaskStatus.RUNNING
        assert result.outcome is Outcome.RUNNING
        assert result.raw_status == new_status
    mentions = [r for r in caplog.records if new_status in r.getMessage()]
    assert len(mentions) == 1
    assert mentions[0].levelno == logging.WARNING


# --------------------------------------------------------------------------------------------
# Retry-After
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"RETRY-AFTER": "12"}, 12.0),
        ({"Retry-After": "-4"}, 0.0),
        ({}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "soon"}, None),
    ],
)
def test_retry_after_seconds(headers, seconds):
    assert api.retry_after_seconds(headers) == seconds


def test_retry_after_http_date_in_the_future():
    when = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=30)
    seconds = api.retry_after_seconds({"Retry-After": format_datetime(when, usegmt=True)})
    assert seconds is not None
    assert 25.0 <= seconds <= 30.0


def test_retry_after_http_date_in_the_past_is_zero():
    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    assert api.retry_after_seconds({"Retry-After": format_datetime(when, usegmt=True)}) == 0.0


@pytest.mark.parametrize("task_id", ["a/b", "x?y", "h#t", "t" * 129])
def test_a_submit_answered_with_an_impossible_task_id_ends_in_one_sentence(task_id):
    with pytest.raises(DashScopeAPIError, match="cannot be a task id") as info:
        api.parse_submitted({"output": {"task_id": task_id, "task_status": "PENDING"}, "request_id": "r-1"})
    assert info.value.retryable is False
    assert "[request_id r-1]" in str(info.value)
