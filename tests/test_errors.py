"""Errors: the spec's code table, non-JSON bodies, truncated submits, and the key kept out of messages."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from airflow_provider_aitryon import api
from airflow_provider_aitryon.connection import ConnectionSettings
from airflow_provider_aitryon.errors import (
    PERMANENT_CODES,
    TRANSIENT_CODES,
    DashScopeAPIError,
    DashScopeConfigError,
    DashScopeError,
    classify_retryable,
)

API_KEY = "sk-test-key-123"
QUERY = api.query_call("t-1")
SUBMIT = api.refiner_call(
    person_image_url="https://img.example/person.png",
    top_garment_url="https://img.example/top.jpg",
    coarse_image_url="https://img.example/coarse.png",
    gender="woman",
)
CANCEL = api.cancel_call("t-1")

# The spec's error table: (HTTP status, code, retry?).
ERROR_TABLE = [
    (400, "InvalidParameter", False),
    (400, "InvalidURL", False),
    (400, "InvalidPerson", False),
    (400, "InvalidGarment", False),
    (400, "InvalidInputLength", False),
    (400, "DataInspectionFailed", False),
    (400, "Arrearage", False),
    (401, "InvalidApiKey", False),
    (403, "AccessDenied", False),
    (403, "Model.AccessDenied", False),
    (403, "AccessDenied.Unpurchased", False),
    (404, "ModelNotFound", False),
    (408, "RequestTimeOut", True),
    (429, "Throttling", True),
    (429, "Throttling.RateQuota", True),
    (429, "Throttling.AllocationQuota", True),
    (500, "InternalError", True),
    (500, "InternalError.Algo", True),
    (500, "InternalError.Timeout", True),
    (500, "SystemError", True),
    (503, "ModelUnavailable", True),
]


def error_body(code: str, message: str, request_id: str) -> bytes:
    return json.dumps({"request_id": request_id, "code": code, "message": message}).encode()


@pytest.mark.parametrize("call", [QUERY, SUBMIT, CANCEL], ids=["query", "submit", "cancel"])
@pytest.mark.parametrize(("http_status", "code", "retryable"), ERROR_TABLE)
def test_every_spec_error_code(call, http_status, code, retryable):
    message = f"message for {code}"
    with pytest.raises(DashScopeAPIError) as info:
        api.decode(call, http_status, {}, error_body(code, message, f"req-{code}"))
    exc = info.value
    assert exc.http_status == http_status
    assert exc.code == code
    assert exc.api_message == message
    assert exc.request_id == f"req-{code}"
    assert exc.retryable is retryable
    assert exc.operation == call.operation
    text = str(exc)
    assert text.startswith(f"DashScope {call.operation} failed (HTTP {http_status} {code}): {message}")
    assert f"[request_id req-{code}]" in text
    assert exc.to_dict() == {
        "operation": call.operation,
        "http_status": http_status,
        "code": code,
        "message": message,
        "request_id": f"req-{code}",
        "retryable": retryable,
        "ambiguous": False,
    }


@pytest.mark.parametrize(("http_status", "code", "retryable"), ERROR_TABLE)
def test_classify_retryable_matches_the_table(http_status, code, retryable):
    assert classify_retryable(http_status, code) is retryable
    # The same codes can arrive in a FAILED task's output, with no HTTP error status.
    assert classify_retryable(200, code) is retryable
    assert classify_retryable(None, code) is retryable


def test_code_tables_cover_the_spec_exactly():
    assert {code for _, code, r in ERROR_TABLE if not r} == set(PERMANENT_CODES)
    assert {code for _, code, r in ERROR_TABLE if r} == set(TRANSIENT_CODES)


@pytest.mark.parametrize(
    ("http_status", "code", "retryable"),
    [
        (502, None, True),
        (504, None, True),
        (500, "SomethingNew", True),
        (400, "SomethingNew", False),
        (409, None, False),
        (429, "Throttling.SomeNewQuota", True),
        (400, "InternalError.NewKind", True),
        (None, None, True),  # no answer at all
    ],
)
def test_unlisted_codes_fall_back_to_the_http_status(http_status, code, retryable):
    assert classify_retryable(http_status, code) is retryable


def test_error_message_is_one_actionable_sentence():
    with pytest.raises(DashScopeAPIError) as info:
        api.decode(QUERY, 401, {}, error_body("InvalidApiKey", "Invalid API-key provided.", "req-1"))
    assert str(info.value) == (
        "DashScope query failed (HTTP 401 InvalidApiKey): Invalid API-key provided [request_id req-1]; "
        "set the API key as the password of the DashScope connection."
    )


def test_transient_error_without_a_fix_says_it_is_retried():
    with pytest.raises(DashScopeAPIError) as info:
        api.decode(QUERY, 500, {}, error_body("InternalError", "boom", "req-2"))
    assert str(info.value).endswith("; a transient error, retried with backoff.")


def test_exceptions_share_a_base_class():
    assert issubclass(DashScopeAPIError, DashScopeError)
    assert issubclass(DashScopeConfigError, DashScopeError)
    assert issubclass(DashScopeConfigError, ValueError)


# --------------------------------------------------------------------------------------------
# Bodies that are not the JSON object the spec promises
# --------------------------------------------------------------------------------------------

HTML = b"<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>"


@pytest.mark.parametrize(
    ("http_status", "body", "retryable", "hint"),
    [
        pytest.param(502, HTML, True, "not JSON", id="html-502"),
        pytest.param(503, HTML, True, "not JSON", id="html-503"),
        pytest.param(403, HTML, False, "not JSON", id="html-403-waf"),
        pytest.param(500, b"", True, "empty", id="empty-500"),
        pytest.param(404, b"", False, "empty", id="empty-404"),
        pytest.param(429, b"  \r\n", True, "empty", id="blank-429"),
        pytest.param(400, b'{"code": "InvalidPar', False, "not JSON", id="truncated-400"),
        pytest.param(429, b'{"request_id": "r", "code": "Thrott', True, "not JSON", id="truncated-429"),
        pytest.param(400, b'[{"code": "InvalidParameter"}]', False, "not an object", id="array-400"),
        pytest.param(500, b'"InternalError"', True, "not an object", id="string-500"),
        pytest.param(500, b"\xff\xfe\x00garbage", True, "not JSON", id="binary-500"),
        # A 2xx that is not a JSON object is a transport accident: asking again is safe.
        pytest.param(200, HTML, True, "not JSON", id="html-200"),
        pytest.param(200, b"", True, "empty", id="empty-200"),
        pytest.param(200, b'{"output": {"task_id": "t-1", "task_sta', True, "not JSON", id="truncated-200"),
        pytest.param(200, b"[1, 2]", True, "not an object", id="array-200"),
        pytest.param(200, b"null", True, "not an object", id="null-200"),
    ],
)
def test_non_json_body_is_an_api_error_with_the_http_status(http_status, body, retryable, hint):
    with pytest.raises(DashScopeAPIError) as info:
        api.decode(QUERY, http_status, {"Content-Type": "text/html"}, body)
    exc = info.value
    assert not isinstance(exc, (json.JSONDecodeError, KeyError, UnicodeDecodeError))
    assert exc.http_status == http_status
    assert exc.code is None
    assert exc.retryable is retryable
    assert hint in str(exc)
    assert f"HTTP {http_status}" in str(exc)


def test_html_body_is_quoted_short():
    with pytest.raises(DashScopeAPIError) as info:
        api.decode(QUERY, 502, {}, HTML * 50)
    assert len(str(info.value)) < 300
    assert "<html>" in str(info.value)


def test_error_without_code_or_message_still_reads_well():
    with pytest.raises(DashScopeAPIError) as info:
        api.decode(QUERY, 500, {}, b'{"request_id": "r-9"}')
    exc = info.value
    assert (exc.http_status, exc.code, exc.api_message, exc.request_id) == (500, None, None, "r-9")
    assert "no message" in str(exc)


def test_retry_after_header_is_carried_on_the_error():
    with pytest.raises(DashScopeAPIError) as info:
        api.decode(QUERY, 429, {"Retry-After": "7"}, error_body("Throttling", "slow down", "r"))
    assert info.value.retry_after == 7.0
    with pytest.raises(DashScopeAPIError) as info:
        api.decode(QUERY, 503, {"retry-after": "2"}, HTML)
    assert info.value.retry_after == 2.0


def test_ok_json_object_is_returned_as_is():
    payload = {"output": {"task_id": "t-1", "task_status": "RUNNING"}, "request_id": "r"}
    assert api.decode(QUERY, 200, {}, json.dumps(payload).encode()) == payload


# --------------------------------------------------------------------------------------------
# Truncated submit: recover the task id, never pay twice
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"output": {"task_id": "a8532587-fa8c-4ef8-82be-0c46b17950d1", "task_st',
        b'{\n    "output": {\n\t"task_id": "a8532587-fa8c-4ef8-82be-0c46b17950d1", \n',
        b'{"output":{"task_id":"a8532587-fa8c-4ef8-82be-0c46b17950d1"',
    ],
)
def test_truncated_submit_body_recovers_the_task_id(body):
    payload = api.decode(SUBMIT, 200, {}, body)
    submitted = api.parse_submitted(payload)
    assert submitted.task_id == "a8532587-fa8c-4ef8-82be-0c46b17950d1"
    assert submitted.status.value == "PENDING"
    assert payload["recovered_from_truncated_body"] is True


def test_truncated_query_body_is_not_mistaken_for_a_submit():
    body = b'{"output": {"task_id": "t-1", "task_status": "SUCC'
    with pytest.raises(DashScopeAPIError) as info:
        api.decode(QUERY, 200, {}, body)
    assert info.value.retryable is True


def test_truncated_error_submit_is_not_recovered():
    body = b'{"output": {"task_id": "t-1"}, "code": "InvalidPar'
    with pytest.raises(DashScopeAPIError) as info:
        api.decode(SUBMIT, 400, {}, body)
    assert info.value.http_status == 400
    assert info.value.retryable is False


def test_truncated_submit_without_task_id_is_ambiguous():
    """Accepted (2xx) but the id is lost: the hook must look the task up before any resubmit."""
    with pytest.raises(DashScopeAPIError) as info:
        api.decode(SUBMIT, 200, {}, b'{"output": {"task_')
    assert info.value.http_status == 200
    assert info.value.ambiguous is True
    assert info.value.retryable is True


# --------------------------------------------------------------------------------------------
# The API key never reaches an exception
# --------------------------------------------------------------------------------------------


def test_invalid_api_key_error_does_not_contain_the_key():
    with pytest.raises(DashScopeAPIError) as info:
        api.decode(QUERY, 401, {}, error_body("InvalidApiKey", "Invalid API-key provided.", "r"))
    assert API_KEY not in str(info.value)
    assert API_KEY not in repr(info.value)
    assert API_KEY not in repr(info.value.to_dict())


@pytest.mark.parametrize(
    "extra",
    [
        {"read_timeout": -1},
        {"max_attempts": "lots"},
        {"scheme": "ftp"},
        {"backoff_base": True},
    ],
)
def test_config_error_does_not_contain_the_key(extra):
    conn = SimpleNamespace(conn_id="ds", host="127.0.0.1", port=None, password=API_KEY, extra_dejson=extra)
    with pytest.raises(DashScopeConfigError) as info:
        ConnectionSettings.from_connection(conn)
    assert API_KEY not in str(info.value)
    assert API_KEY not in repr(info.value)
    assert re.search(r"'ds'", str(info.value))


def test_account_wide_codes_are_permanent_codes_of_the_table():
    from airflow_provider_aitryon.errors import ACCOUNT_WIDE_CODES, is_account_wide

    assert ACCOUNT_WIDE_CODES <= PERMANENT_CODES
    assert is_account_wide("InvalidApiKey") and is_account_wide("Arrearage")
    assert not is_account_wide("InvalidPerson") and not is_account_wide(None)
