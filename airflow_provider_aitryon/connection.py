"""Reading a `dashscope` Airflow connection into typed settings, with one-sentence errors."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_aitryon.api import DEFAULT_BASE_URL
from airflow_provider_aitryon.errors import DashScopeConfigError
from airflow_provider_aitryon.spend import SPEND_FIELDS, SpendLimits, amount

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
    # Pre-flight may fetch input images from loopback, private and other non-public addresses
    # (hosts on your own network). Link-local addresses (cloud metadata) stay refused; images on the
    # connection's own base URL (the emulator's samples) are allowed without it.
    "allow_private_inputs": False,
}
# Spend extras: CNY amounts, empty for none; a DAG run's params of the same names win (see `spend`).
EXTRA_AMOUNT_FIELDS = SPEND_FIELDS

# What each extra means, in the words the connection form shows under the field (and the docs).
# A test checks every extra above has one.
EXTRA_DESCRIPTIONS: dict[str, str] = {
    "workspace": "Optional workspace id, sent as X-DashScope-WorkSpace; empty uses the API key's default workspace.",
    "scheme": "http or https, used only when Base URL is a bare host name (default https).",
    "connect_timeout": "Seconds to open a connection to the service (default 10).",
    "read_timeout": "Seconds to wait for the next bytes of a reply (default 30).",
    "request_deadline": "Seconds one call may take in all, headers and body (default 120); replies over 1 MiB are "
    "abandoned unread.",
    "max_attempts": "Tries per call for transient errors (429, 5xx, dropped connections) before the task fails "
    "(default 6).",
    "max_retry_seconds": "Longest time in seconds one call keeps retrying, waits included (default 120).",
    "backoff_base": "First wait in seconds between retries; it doubles each try, with jitter (default 1).",
    "backoff_max": "Longest single wait in seconds between retries (default 30).",
    "lost_submit_grace": "Seconds before a submit whose reply was lost is looked up in the task list (default 3).",
    "adopt_lost_submits": "After a lost submit reply, adopt the one task created meanwhile (default on); turn it off "
    "for an account shared with submitters outside this deployment: the item then fails instead.",
    "allow_private_inputs": "Let pre-flight fetch input images from loopback or private-network hosts (default "
    "off); link-local and cloud metadata addresses stay refused.",
    "max_cost": "Spending limit in CNY of one catalog backfill run (default none): a run whose estimate is above it "
    "fails before paying anything. The run's max_cost param overrides it.",
    "approve_above": "Estimate in CNY above which a catalog backfill run waits for a person's approval before "
    "submitting (default none: never asks). The run's approve_above param overrides it.",
}

# The connection form: one copy, read by get_provider_info (Airflow 3.2+ forms) and by the hook's
# get_ui_field_behaviour (older forms), so the two can never show different hints.
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden_fields": ["schema", "login", "port"],
    "relabeling": {"password": "API key", "host": "Base URL"},
    "placeholders": {
        "host": f"empty for {DEFAULT_BASE_URL}, or http://127.0.0.1:8089 for the emulator",
        "password": "your DashScope API key (sk-...)",
        "extra": '{"workspace": "ws-...", "read_timeout": 30, "max_attempts": 6}',
    },
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
    allow_private_inputs: bool = False
    max_cost: Decimal | None = None
    approve_above: Decimal | None = None

    @property
    def spend_limits(self) -> SpendLimits:
        """The connection's default spending limit and approval threshold for catalog backfills."""
        return SpendLimits(max_cost=self.max_cost, approve_above=self.approve_above)

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
            values[name] = _number(conn_id, name, _given(extra, name, default), kind, minimum)
        for name, default in EXTRA_BOOL_FIELDS.items():
            values[name] = _boolean(conn_id, name, _given(extra, name, default))
        for name in EXTRA_AMOUNT_FIELDS:
            values[name] = amount(extra.get(name), field_name=name, where=f"Connection {conn_id!r} extra field")
        unknown = (
            set(extra) - set(EXTRA_FIELDS) - set(EXTRA_TEXT_FIELDS) - set(EXTRA_BOOL_FIELDS) - set(EXTRA_AMOUNT_FIELDS)
        )
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


def env_connection_problem(conn_id: str) -> DashScopeConfigError | None:
    """Why Airflow could not read the JSON connection ``AIRFLOW_CONN_<ID>`` holds, if its Extra is the cause.

    Airflow 3.1 refuses a connection whose Extra is not a JSON object while it looks the connection
    up, and then reports it as not defined (`compat.UNREADABLE_CONNECTION_IS_NOT_FOUND`): this gives
    the sentence Airflow 3.2+ lets the provider say. None when the variable is absent, not JSON, or
    its Extra is fine.
    """
    raw = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}", "")
    try:
        value = json.loads(raw) if raw.lstrip().startswith("{") else None
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("extra") is None:
        return None
    extra = value["extra"]
    try:
        _extra(_RawExtra(extra if isinstance(extra, str) else json.dumps(extra)), conn_id)
    except DashScopeConfigError as problem:
        return problem
    return None


class _RawExtra:
    """The two attributes `_extra` reads, for an Extra Airflow would not build a connection from."""

    def __init__(self, extra: str) -> None:
        self.extra = extra

    @property
    def extra_dejson(self) -> Any:
        return json.loads(self.extra)


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


def _given(extra: dict[str, Any], name: str, default: Any) -> Any:
    """An extra's value, or its default when unset: absent, null or blank.

    Airflow's connection form saves every field it shows, an untouched or cleared one as null
    (Airflow 3.1, whose form has no defaults, saves all of them so): that means "the default".
    """
    value = extra.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    return value


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
