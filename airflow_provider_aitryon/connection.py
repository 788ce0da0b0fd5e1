"""Reading a `dashscope` Airflow connection into typed settings, with one-sentence errors."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_aitryon.api import DEFAULT_BASE_URL
from airflow_provider_aitryon.errors import DashScopeConfigError

log = logging.getLogger(__name__)

CONN_TYPE = "dashscope"
DEFAULT_CONN_ID = "dashscope_default"

# Extra fields: name -> (type, default, minimum). One table serves parsing, the UI form and docs.
EXTRA_FIELDS: dict[str, tuple[type, Any, float]] = {
    "connect_timeout": (float, 10.0, 0.001),
    "read_timeout": (float, 30.0, 0.001),
    # Seconds one request may take in all, headers and body: a host dripping bytes never trips
    # the read timeout.
    "request_deadline": (float, 120.0, 0.001),
    "max_attempts": (int, 6, 1),
    "max_retry_seconds": (float, 120.0, 0.0),
    "backoff_base": (float, 1.0, 0.0),
    "backoff_max": (float, 30.0, 0.0),
    # Seconds to wait before looking in the task list for a submit whose reply was lost.
    "lost_submit_grace": (float, 3.0, 0.0),
}
EXTRA_TEXT_FIELDS = ("workspace", "scheme")
# Yes/no extra fields: name -> default.
EXTRA_BOOL_FIELDS: dict[str, bool] = {
    # After a lost submit reply, adopt the one task the task list shows created meanwhile. Turn it
    # off for an account shared with submitters outside this deployment: a lost reply then fails
    # the item in one sentence instead of guessing whose task it is.
    "adopt_lost_submits": True,
}


@dataclass(frozen=True)
class ConnectionSettings:
    """Everything a client needs to talk to DashScope. The key is kept out of repr()."""

    conn_id: str
    base_url: str
    api_key: str = field(repr=False)
    workspace: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    request_deadline: float = 120.0
    max_attempts: int = 6
    max_retry_seconds: float = 120.0
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    lost_submit_grace: float = 3.0
    adopt_lost_submits: bool = True

    @classmethod
    def from_connection(cls, conn: Any) -> ConnectionSettings:
        conn_id = getattr(conn, "conn_id", None) or DEFAULT_CONN_ID
        api_key = (getattr(conn, "password", None) or "").strip()
        if not api_key:
            raise DashScopeConfigError(
                f"Connection {conn_id!r} has no API key; set its password to your DashScope API key "
                "(the emulator accepts any non-empty value)."
            )
        extra = _extra(conn, conn_id)
        values: dict[str, Any] = {}
        for name, (kind, default, minimum) in EXTRA_FIELDS.items():
            values[name] = _number(conn_id, name, extra.get(name, default), kind, minimum)
        for name, default in EXTRA_BOOL_FIELDS.items():
            values[name] = _boolean(conn_id, name, extra.get(name, default))
        unknown = set(extra) - set(EXTRA_FIELDS) - set(EXTRA_TEXT_FIELDS) - set(EXTRA_BOOL_FIELDS)
        if unknown:
            log.warning(
                "Connection %r has extra fields this provider does not use: %s",
                conn_id,
                ", ".join(sorted(unknown)),
            )
        workspace = extra.get("workspace")
        return cls(
            conn_id=conn_id,
            base_url=base_url_of(conn, extra, conn_id),
            api_key=api_key,
            workspace=str(workspace).strip() or None if workspace else None,
            **values,
        )


def base_url_of(conn: Any, extra: dict[str, Any], conn_id: str) -> str:
    """Host may be a full URL (kept as is) or a bare host (https unless extra.scheme says http)."""
    host = (getattr(conn, "host", None) or "").strip().rstrip("/")
    if not host:
        return DEFAULT_BASE_URL
    if "://" in host:
        parts = urlsplit(host)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DashScopeConfigError(
                f"Connection {conn_id!r} host {host!r} is not an http(s) URL; set it to a base URL "
                f"such as {DEFAULT_BASE_URL} or http://127.0.0.1:8089 for the emulator."
            )
        return host
    scheme = str(extra.get("scheme") or "https").lower()
    if scheme not in ("http", "https"):
        raise DashScopeConfigError(
            f"Connection {conn_id!r} extra field scheme must be http or https, got {scheme!r}; fix it "
            "in the connection's Extra."
        )
    port = getattr(conn, "port", None)
    return f"{scheme}://{host}:{port}" if port else f"{scheme}://{host}"


def _extra(conn: Any, conn_id: str) -> dict[str, Any]:
    not_json = DashScopeConfigError(
        f"Connection {conn_id!r} Extra is not valid JSON; set it to a JSON object such as "
        '{"workspace": "ws-123", "read_timeout": 30}.'
    )
    raw = getattr(conn, "extra", None)
    if isinstance(raw, str) and raw.strip():
        # Airflow's extra_dejson logs bad JSON and returns {}: the task would run on defaults the
        # user did not choose, so check the text itself.
        try:
            json.loads(raw)
        except ValueError:
            raise not_json from None
    try:
        extra = conn.extra_dejson
    except Exception:  # the SDK raises different types for bad JSON across versions
        raise not_json from None
    if not isinstance(extra, dict):
        raise DashScopeConfigError(
            f"Connection {conn_id!r} Extra must be a JSON object, got {type(extra).__name__}; set it "
            'to a JSON object such as {"read_timeout": 30}.'
        )
    return extra


def _number(conn_id: str, name: str, value: Any, kind: type, minimum: float) -> Any:
    try:
        if isinstance(value, bool):
            raise ValueError
        number: float | None = float(value)
    except (TypeError, ValueError):
        number = None
    # NaN compares false with everything and a fraction is not a count: refuse both here, before
    # they reach a socket timeout or a retry loop.
    if number is None or not math.isfinite(number) or number < minimum or (kind is int and not number.is_integer()):
        kind_name = "a whole number" if kind is int else "a number"
        raise DashScopeConfigError(
            f"Connection {conn_id!r} extra field {name} must be {kind_name} of at least {minimum:g}, "
            f"got {value!r}; fix it in the connection's Extra."
        )
    return kind(number)


def _boolean(conn_id: str, name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise DashScopeConfigError(
        f"Connection {conn_id!r} extra field {name} must be true or false, got {value!r}; fix it in the "
        "connection's Extra."
    )
