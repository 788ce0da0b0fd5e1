"""The DashScope try-on wire format, in one place.

Endpoints, request building and response parsing live here and nowhere else: the sync hook
(requests), the async trigger path (httpx) and the emulator all use these definitions, so a change
of the wire format is one edit.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_aitryon.errors import DashScopeAPIError, DashScopeConfigError
from airflow_provider_aitryon.models import SubmittedTask, TaskResult, TaskStatus

DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com"
SUBMIT_PATH = "/api/v1/services/aigc/image2image/image-synthesis"
TASKS_PATH = "/api/v1/tasks"

MODEL_REFINER = "aitryon-refiner"
MODEL_TRYON = "aitryon"
MODEL_TRYON_PLUS = "aitryon-plus"
GENDERS = ("woman", "man")
RESOLUTIONS = (-1, 1024, 1280)  # -1 keeps the person image's size; 1024 is 576x1024, 1280 is 720x1280


def task_path(task_id: str) -> str:
    return f"{TASKS_PATH}/{task_id}"


def cancel_path(task_id: str) -> str:
    return f"{TASKS_PATH}/{task_id}/cancel"


@dataclass(frozen=True)
class ApiCall:
    """One HTTP call to DashScope, independent of the client library that will send it."""

    operation: str  # "submit", "query" or "cancel": names the call in logs and errors
    method: str
    path: str
    body: dict[str, Any] | None = None
    asynchronous: bool = False  # submits must carry X-DashScope-Async: enable
    params: dict[str, Any] = field(default_factory=dict)  # query string
    # Headers a particular call needs, e.g. X-DashScope-OssResourceResolve for uploaded inputs.
    extra_headers: dict[str, str] = field(default_factory=dict)

    def headers(self, api_key: str, workspace: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        if self.body is not None:
            headers["Content-Type"] = "application/json"
        if self.asynchronous:
            headers["X-DashScope-Async"] = "enable"
        if workspace:
            headers["X-DashScope-WorkSpace"] = workspace
        headers.update(self.extra_headers)
        return headers

    def describe(self) -> str:
        return f"{self.method} {self.path}"

    def fingerprint(self) -> str:
        """A digest of what is asked, so a rerun can tell the same request from a changed one.

        URLs count without their signature parameters: a result URL DashScope signs anew on every
        query (or an input URL re-signed before each submit) names the same image, and must not
        make the same request look new, which would pay for it twice.
        """
        canonical = json.dumps([self.method, self.path, _unsigned(self.body)], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


# Query parameters that carry a URL's signature or expiry, not what the URL names (OSS V1 and V4,
# S3-style presigning). Compared case-insensitively.
_SIGNATURE_PARAMS = frozenset({"expires", "ossaccesskeyid", "signature", "security-token"})
_SIGNATURE_PREFIXES = ("x-oss-", "x-amz-")


def unsigned_url(url: str) -> str:
    """The URL without signature parameters: what it names, not who may read it until when."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    kept = [
        pair
        for pair in parts.query.split("&")
        if (name := pair.split("=", 1)[0].lower()) not in _SIGNATURE_PARAMS and not name.startswith(_SIGNATURE_PREFIXES)
    ]
    return parts._replace(query="&".join(kept)).geturl()


def _unsigned(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _unsigned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unsigned(v) for v in value]
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return unsigned_url(value)
    return value


_MAX_SHOWN = 120


def shown_url(url: str) -> str:
    """``scheme://host[:port]/path`` of a URL: no user info, no query string, no fragment.

    Every message that shows a URL shows it this way: the signature of a signed OSS URL works as a
    password until it expires.
    """
    parts = urlsplit(url)
    if parts.scheme and parts.netloc:
        host = parts.hostname or ""
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        try:
            port = parts.port
        except ValueError:
            port = None
        text = f"{parts.scheme.lower()}://{host}{f':{port}' if port is not None else ''}{parts.path}"
    else:
        text = url.split("?", 1)[0].split("#", 1)[0]
        if "@" in text:
            text = text.rsplit("@", 1)[1]
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 1] + "…"
    return text


# --------------------------------------------------------------------------------------------
# Argument checks: run before any HTTP call so a typo never costs a request or a running slot.
# --------------------------------------------------------------------------------------------


def require_url(field_name: str, value: object, *, required: bool = True) -> str | None:
    """Return the URL if it is a usable http(s) URL, else raise one sentence naming the field."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise DashScopeConfigError(f"{field_name} is missing; pass the public http(s) URL of the image.")
        return None
    if not isinstance(value, str):
        raise DashScopeConfigError(
            f"{field_name} must be a URL string, got {type(value).__name__}; pass the public http(s) URL of the image."
        )
    url = value.strip()
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise DashScopeConfigError(
            f"{field_name} must be an http:// or https:// URL, got {shown_url(url)!r}; "
            "DashScope can only fetch images from public http(s) URLs."
        )
    return url


def is_local_reference(value: object) -> bool:
    """Whether an image argument names a local file: a ``file://`` URI or an absolute path.

    (``//host/path`` is a URL without its scheme, not a path.)
    """
    if not isinstance(value, str):
        return False
    text = value.strip()
    scheme = urlsplit(text).scheme.lower()
    return scheme == "file" or (not scheme and text.startswith(("/", "~")) and not text.startswith("//"))


def require_image(field_name: str, value: object, *, required: bool = True, local: bool = True) -> str | None:
    """Return where an input image is, if this provider can hand it to DashScope; else one sentence.

    Accepted: a public http(s) URL; ``oss://bucket/key`` (a private OSS object, signed just before
    it is used, see `airflow_provider_aitryon.sources`); with ``local``, an absolute path or a
    ``file://`` URI (uploaded to DashScope's temporary storage when the operator opts in).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return require_url(field_name, value, required=required)
    if not isinstance(value, str):
        return require_url(field_name, value, required=required)
    text = value.strip()
    scheme = urlsplit(text).scheme.lower()
    if scheme in ("http", "https"):
        return require_url(field_name, text, required=required)
    if scheme == "oss":
        from airflow_provider_aitryon.oss.uri import parse_oss_uri  # no SDK needed to check a URI

        return parse_oss_uri(text, field_name=field_name).uri
    if local and is_local_reference(text):
        return text
    if local:
        raise DashScopeConfigError(
            f"{field_name} must be an http(s) URL, an oss://bucket/key URI or an absolute file path, got "
            f"{shown_url(text)!r}; pass where the image is."
        )
    raise DashScopeConfigError(
        f"{field_name} must be an http(s) URL or an oss://bucket/key URI, got {shown_url(text)!r}; DashScope can "
        "only fetch images from public http(s) URLs or private OSS objects."
    )


def require_choice(field_name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise DashScopeConfigError(
            f"{field_name} must be one of {', '.join(choices)}, got {_short(repr(value))}; "
            f"set {field_name} to one of those values."
        )
    return value.strip().lower()


def require_task_id(value: object, field_name: str = "dashscope_task_id") -> str:
    if not isinstance(value, str) or not value.strip():
        raise DashScopeConfigError(
            f"{field_name} is empty; pass the DashScope task id that the submit task returned "
            "(for example submit.output)."
        )
    task_id = value.strip()
    if not _valid_task_id(task_id):
        raise DashScopeConfigError(
            f"{field_name} {_short(task_id)!r} is not a DashScope task id; pass the id the submit task returned."
        )
    return task_id


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


def submit_call(model: str, input_: Mapping[str, Any], parameters: Mapping[str, Any]) -> ApiCall:
    """The submit request: None values are dropped (an absent bottom garment is omitted, not null)."""
    body = {
        "model": model,
        "input": {k: v for k, v in input_.items() if v is not None},
        "parameters": {k: v for k, v in parameters.items() if v is not None},
    }
    return ApiCall("submit", "POST", SUBMIT_PATH, body=body, asynchronous=True)


def refiner_call(
    *,
    person_image_url: object,
    top_garment_url: object,
    coarse_image_url: object,
    gender: object,
    bottom_garment_url: object = None,
    model: str = MODEL_REFINER,
) -> ApiCall:
    """Build the refiner submit from the vendor page's field table, checking every field first."""
    return submit_call(
        model,
        {
            "person_image_url": require_image("person_image_url", person_image_url),
            "top_garment_url": require_image("top_garment_url", top_garment_url),
            "bottom_garment_url": require_image("bottom_garment_url", bottom_garment_url, required=False),
            "coarse_image_url": require_image("coarse_image_url", coarse_image_url),
        },
        {"gender": require_choice("gender", gender, GENDERS)},
    )


def tryon_call(
    *,
    person_image_url: object,
    top_garment_url: object = None,
    bottom_garment_url: object = None,
    model: object = MODEL_TRYON,
    resolution: object = -1,
    restore_face: object = True,
    for_refiner: bool = True,
) -> ApiCall:
    """Build a coarse try-on submit (``aitryon``, ``aitryon-plus`` or a successor model)."""
    if not isinstance(model, str) or not model.strip():
        raise DashScopeConfigError(
            f"model must be a model name such as {MODEL_TRYON} or {MODEL_TRYON_PLUS}, got {model!r}; set model."
        )
    top = require_image("top_garment_url", top_garment_url, required=False)
    bottom = require_image("bottom_garment_url", bottom_garment_url, required=False)
    if not top and not bottom:
        raise DashScopeConfigError(
            "top_garment_url and bottom_garment_url are both empty; give at least one garment "
            "(a dress or jumpsuit goes in top_garment_url)."
        )
    resolution_value, restore = check_tryon_parameters(resolution, restore_face, for_refiner)
    return submit_call(
        model.strip(),
        {
            "person_image_url": require_image("person_image_url", person_image_url),
            "top_garment_url": top,
            "bottom_garment_url": bottom,
        },
        {"resolution": resolution_value, "restore_face": restore},
    )


def check_tryon_parameters(resolution: object, restore_face: object, for_refiner: bool) -> tuple[int, bool]:
    """Check the coarse stage's parameters; a result meant for the refiner must keep size and face."""
    try:
        resolution_value = int(str(resolution).strip())
    except ValueError:
        resolution_value = None  # type: ignore[assignment]
    if resolution_value not in RESOLUTIONS:
        raise DashScopeConfigError(
            f"resolution must be one of -1, 1024 or 1280, got {resolution!r}; use -1 to keep the person image's size."
        )
    restore = _boolean("restore_face", restore_face)
    if for_refiner and resolution_value != -1:
        raise DashScopeConfigError(
            f"resolution is {resolution_value} but a coarse image for the refiner must keep the person image's "
            "size; set resolution=-1, or for_refiner=False if you will not refine it."
        )
    if for_refiner and not restore:
        raise DashScopeConfigError(
            "restore_face is false but a coarse image for the refiner must be made with restore_face=true; "
            "set restore_face=True, or for_refiner=False if you will not refine it."
        )
    return resolution_value, restore


def _boolean(field_name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise DashScopeConfigError(f"{field_name} must be true or false, got {value!r}; set {field_name} to a boolean.")


# The task list's time filter: seconds, in the service's zone (China Standard Time, UTC+8).
_SERVICE_TZ = timezone(timedelta(hours=8))


def list_call(*, model: str, start: float, end: float, page_size: int = 100) -> ApiCall:
    """Tasks of `model` submitted between two epoch times (GET /api/v1/tasks, newest first)."""

    def compact(epoch: float) -> str:
        return datetime.fromtimestamp(epoch, _SERVICE_TZ).strftime("%Y%m%d%H%M%S")

    params = {"model_name": model, "start_time": compact(start), "end_time": compact(end), "page_no": 1,
              "page_size": page_size}  # fmt: skip
    return ApiCall("list", "GET", TASKS_PATH, params=params)


@dataclass(frozen=True)
class ListedTask:
    """One row of the task list: its id and, when the row says, when the service created it."""

    task_id: str
    created: float | None  # epoch seconds, read on the service's clock
    precise: bool  # the creation time has sub-second digits


def listed_tasks(payload: Mapping[str, Any]) -> list[ListedTask]:
    """The rows of a task-list answer (``data`` at the top or under ``output``), newest first."""
    rows = payload.get("data")
    if rows is None and isinstance(payload.get("output"), Mapping):
        rows = payload["output"].get("data")
    found = []
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, Mapping):
            continue
        task_id = row.get("task_id")
        if not isinstance(task_id, str) or not _valid_task_id(task_id):
            continue
        text = next((row[k] for k in ("gmt_create", "submit_time", "create_time") if row.get(k)), None)
        created = parse_service_time(text)
        found.append(ListedTask(task_id, created, precise=created is not None and "." in str(text)))
    return found


def parse_service_time(text: object) -> float | None:
    """Epoch seconds of a service time such as ``2026-01-01 10:00:00.123`` (China Standard Time)."""
    if not isinstance(text, str) or not text.strip():
        return None
    for pattern in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y%m%d%H%M%S"):
        try:
            return datetime.strptime(text.strip(), pattern).replace(tzinfo=_SERVICE_TZ).timestamp()
        except ValueError:
            continue
    return None


def _valid_task_id(task_id: str) -> bool:
    return not any(c in task_id for c in "/?#") and 0 < len(task_id) <= 128


def query_call(task_id: str) -> ApiCall:
    return ApiCall("query", "GET", task_path(require_task_id(task_id)))


def cancel_call(task_id: str) -> ApiCall:
    return ApiCall("cancel", "POST", cancel_path(require_task_id(task_id)))


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------

# Statuses a gateway in front of the service answers with when it gave up waiting for it: the
# service may still have created the task. Any answer without the service's JSON error envelope
# counts, whatever its status; an answer with the envelope is the service's own word.
LOST_REPLY_STATUSES = frozenset({500, 502, 503, 504})

_TASK_ID_IN_TEXT = re.compile(rb'"task_id"\s*:\s*"([^"\\]{1,128})"')


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent or unreadable."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        import pendulum

        when = parsedate_to_datetime(value)
        return max(0.0, (when - pendulum.now("UTC")).total_seconds())
    except (TypeError, ValueError):
        return None


def decode(call: ApiCall, http_status: int, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """Turn an HTTP answer into the JSON payload, or raise DashScopeAPIError.

    Proxies answer with HTML, connections get cut mid-body, and errors come with or without a JSON
    envelope: every one of those becomes a DashScopeAPIError carrying the HTTP status, never a
    parser traceback.
    """
    retry_after = retry_after_seconds(headers)
    payload: Any = None
    problem = None
    if not body.strip():
        problem = "the response body was empty"
    else:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            problem = f"the response was not JSON (it began {_short(body[:60].decode('utf-8', 'replace'))!r})"
        else:
            if not isinstance(payload, dict):
                problem = f"the response was JSON but not an object (got {type(payload).__name__})"
                payload = None

    if 200 <= http_status < 300 and payload is not None:
        return payload

    if payload is not None:
        raise DashScopeAPIError(
            operation=call.operation,
            http_status=http_status,
            code=_str_or_none(payload.get("code")),
            message=_str_or_none(payload.get("message")),
            request_id=_str_or_none(payload.get("request_id")),
            retry_after=retry_after,
        )
    if call.operation == "submit" and 200 <= http_status < 300:
        # The service accepted the task but the body was cut short. Re-submitting would pay twice,
        # so recover the task id from the fragment when it made it through.
        match = _TASK_ID_IN_TEXT.search(body)
        if match:
            return {
                "output": {"task_id": match.group(1).decode(), "task_status": "PENDING"},
                "request_id": None,
                "recovered_from_truncated_body": True,
            }
    if call.operation == "submit" and (200 <= http_status < 300 or http_status in LOST_REPLY_STATUSES):
        # Accepted, or not, we cannot tell: a garbled 2xx lost the task id with the body, and a
        # gateway's 502/504 page (or an empty answer) may come after the service took the task.
        # The hook looks the task up in the task list before it would ever submit again.
        raise DashScopeAPIError(
            operation=call.operation,
            http_status=http_status,
            message=f"the reply to the submit was lost ({problem}), so whether a task was created is unknown",
            retryable=True,
            ambiguous=True,
            retry_after=retry_after,
        )
    raise DashScopeAPIError(
        operation=call.operation,
        http_status=http_status,
        message=problem,
        retry_after=retry_after,
        # A garbled 2xx is a transport accident: asking again is safe for queries and cancels.
        retryable=True if 200 <= http_status < 300 else None,
    )


def parse_submitted(payload: Mapping[str, Any]) -> SubmittedTask:
    output = _output(payload, "submit")
    task_id = _str_or_none(output.get("task_id"))
    if not task_id:
        raise DashScopeAPIError(
            operation="submit",
            message="the response had no output.task_id",
            request_id=_str_or_none(payload.get("request_id")),
            retryable=False,
        )
    if not _valid_task_id(task_id):
        # It could never be queried (it would change the URL's path): end here, in one sentence,
        # rather than wait for it until the deadline.
        raise DashScopeAPIError(
            operation="submit",
            message=f"the service answered with task id {_short(task_id)!r}, which cannot be a task id (it holds "
            "'/', '?' or '#' or is over 128 characters), so the task cannot be followed; report it to DashScope "
            "with the request id",
            request_id=_str_or_none(payload.get("request_id")),
            retryable=False,
        )
    return SubmittedTask(
        task_id=task_id,
        status=TaskStatus.parse(output.get("task_status") or "PENDING"),
        request_id=_str_or_none(payload.get("request_id")),
    )


def parse_task(payload: Mapping[str, Any], task_id: str | None = None) -> TaskResult:
    """Normalise a task query: every result shape of the spec gives the same TaskResult."""
    output = _output(payload, "query")
    raw_status = str(output.get("task_status") or "UNKNOWN")
    status = TaskStatus.parse(raw_status)
    image_url = _image_url(output)
    request_id = _str_or_none(payload.get("request_id"))
    if status is TaskStatus.SUCCEEDED and not image_url:
        raise DashScopeAPIError(
            operation="query",
            message="the task SUCCEEDED but the response held no image URL",
            request_id=request_id,
            retryable=True,
        )
    usage = payload.get("usage")
    return TaskResult(
        task_id=_str_or_none(output.get("task_id")) or task_id or "",
        status=status,
        raw_status=raw_status,
        image_url=image_url,
        usage=dict(usage) if isinstance(usage, Mapping) else {},
        code=_str_or_none(output.get("code")),
        message=_str_or_none(output.get("message")),
        request_id=request_id,
        submit_time=_str_or_none(output.get("submit_time")),
        scheduled_time=_str_or_none(output.get("scheduled_time")),
        end_time=_str_or_none(output.get("end_time")),
    )


def _image_url(output: Mapping[str, Any]) -> str | None:
    """The result URL from `results` (object or list of objects) or `image_url` directly."""
    candidates: list[Any] = []
    results = output.get("results")
    if isinstance(results, Mapping):
        candidates.append(results)
    elif isinstance(results, list):
        candidates.extend(results)
    candidates.append(output)
    for item in candidates:
        if isinstance(item, Mapping):
            url = item.get("image_url") or item.get("url")
            if isinstance(url, list):
                url = next((u for u in url if isinstance(u, str) and u), None)
            if isinstance(url, str) and url:
                return url
    return None


def _output(payload: Mapping[str, Any], operation: str) -> Mapping[str, Any]:
    output = payload.get("output")
    if not isinstance(output, Mapping):
        raise DashScopeAPIError(
            operation=operation,
            message="the response had no output object",
            request_id=_str_or_none(payload.get("request_id")),
            retryable=True,
        )
    return output


def _str_or_none(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
