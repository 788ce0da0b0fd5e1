"""Operator extra links: buttons in the Airflow UI that open a try-on result.

Airflow 3 computes each link once, in the worker, when the task instance ends (also when it
defers) and stores it for the UI. The links read the result the live operator kept
(`remember_result`), never XCom: looking up a return value that a deferring task has not pushed yet
logged an ``XCom not found`` error on every deferral.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

_RESULT_ATTRIBUTE = "_aitryon_link_result"


def remember_result(operator: object, result: dict[str, Any]) -> None:
    """Keep a finished task's result on the operator for its extra links.

    :param operator: the operator instance that produced the result.
    :param result: its XCom return value (the DashScope result, or what was saved).
    """
    setattr(operator, _RESULT_ATTRIBUTE, dict(result))


def _result(operator: object) -> dict[str, Any]:
    value = getattr(operator, _RESULT_ATTRIBUTE, None)
    return value if isinstance(value, dict) else {}


class TryOnResultLink(BaseOperatorLink):
    """Opens the DashScope result URL (DashScope deletes it 24 hours after the task ended)."""

    name = "Try-on result (24 h)"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        url = _result(operator).get("image_url")
        return url if isinstance(url, str) else ""


class SavedImageLink(BaseOperatorLink):
    """Opens the durable copy `SaveTryOnResultOperator` wrote (in the object store's console)."""

    name = "Saved image"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        uri = _result(operator).get("uri")
        return browsable(uri) if isinstance(uri, str) else ""


def browsable(uri: str) -> str:
    """A link a browser can open for a saved file's URI.

    S3 and GCS objects open in their cloud console, local files as ``file://`` URLs (useful where
    the UI runs beside the files); other URIs are returned as they are.

    :param uri: what `SaveTryOnResultOperator` returned as ``uri``.
    """
    parts = urlsplit(uri)
    key = parts.path.lstrip("/")
    if parts.scheme in ("s3", "s3a"):
        return f"https://s3.console.aws.amazon.com/s3/object/{parts.netloc}?prefix={quote(key)}"
    if parts.scheme in ("gs", "gcs"):
        return f"https://console.cloud.google.com/storage/browser/_details/{parts.netloc}/{quote(key)}"
    if parts.scheme == "file":
        return uri
    if not parts.scheme and uri.startswith("/"):
        return PurePosixPath(uri).as_uri()
    return uri


class ReviewGalleryLink(BaseOperatorLink):
    """Opens the review gallery the task wrote (``report.html``: thumbnails, statuses, cost)."""

    name = "Review gallery"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        uri = _result(operator).get("report")
        return browsable(uri) if isinstance(uri, str) else ""
