"""Emulator settings: one dataclass shared by the Python API, the CLI and ``POST /_emulator/config``.

Why one place: tests flip faults and limits at runtime through ``Emulator.update(...)`` while
shell scripts do it over HTTP; both must accept exactly the same names and reject the same bad
values, so validation lives next to the fields.

Deterministic faults for the money audit (no randomness, so a test knows exactly which call is hit):

* ``lost_reply_submits`` / ``lost_reply_kind``: the next N *accepted* submits are processed in full
  (task created, charged, rendered) and then their reply is lost the way a gateway loses it:
  ``"504"`` (HTML 504 Gateway Time-out page), ``"502"`` (HTML 502 Bad Gateway page), ``"empty"``
  (HTTP 200, empty body) or ``"drop"`` (connection closed, no response). Rejected submits (4xx,
  429) are answered normally and do not use up the count.
* ``clock_skew_seconds``: the service's wall clock runs this far ahead (positive) or behind
  (negative) the host's: every reported time, the task list's ``start_time``/``end_time`` filter and
  the HTTP ``Date`` header of every response are shifted by it. Changes apply to the next reply.
* ``results_unavailable_status``: result downloads (``GET /results/...``) answer this HTTP status
  (e.g. 503) while it is set: a paid task whose image cannot be fetched for now.
* ``neighbor_submit_seconds``: "another submitter on the same account". When not ``None``, each
  lost reply is preceded by one extra task with the same inputs, submitted this many seconds before
  ours, whose result differs in bytes from ours (it carries a marker).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULT_SHAPES = ("object", "list", "flat")
# How a gateway loses the reply of a submit the service did accept (see ``lost_reply_submits``).
LOST_REPLY_KINDS = ("504", "502", "empty", "drop")
FAULT_FIELDS = ("fault_5xx", "fault_429", "fault_drop", "fault_slow", "fault_malformed")
# Fixed once the server is bound / the worker pool is running.
STARTUP_ONLY = frozenset({"host", "port", "workers"})
# Not meaningful over JSON.
PYTHON_ONLY = frozenset({"clock"})


@dataclass
class EmulatorConfig:
    """Settings of one emulator instance.

    ``clock`` drives all simulated time (queueing, latency, rate windows, expiry); inject a
    ``ManualClock`` for deterministic tests. ``epoch`` is the Unix time shown for the clock's
    reading at construction (``None``: now), so reported timestamps are reproducible too.
    Rates of 0 or ``None`` disable that limit.
    """

    host: str = "127.0.0.1"
    port: int = 0
    latency: float = 2.0
    latency_by_model: dict[str, float] = field(default_factory=dict)
    api_key: str | None = None
    max_running: int = 5
    submit_rate: float | None = 10.0
    query_rate: float | None = 20.0
    expiry_seconds: float = 86400.0
    samples_dir: str | Path | None = None
    result_shape: str = "object"
    fault_5xx: float = 0.0
    fault_429: float = 0.0
    fault_drop: float = 0.0
    fault_slow: float = 0.0
    fault_malformed: float = 0.0
    slow_seconds: float = 3.0
    # Answer the next N submits with 429 Throttling.RateQuota, as if the account's submit quota
    # were spent: a deterministic throttled submit for tests. Counts down as submits arrive.
    throttle_submits: int = 0
    # Process the next N accepted submits normally, then lose their reply as ``lost_reply_kind``
    # says ("504", "502", "empty" or "drop"): the task exists and is charged, the client never
    # learns its id. Counts down per lost reply; rejected submits do not use it up.
    lost_reply_submits: int = 0
    lost_reply_kind: str = "504"
    # The service's wall clock minus the host's, in seconds (reported times, list filters, Date).
    clock_skew_seconds: float = 0.0
    # When set, each lost reply first creates a task of "another client" on the same account with
    # the same inputs, submitted this many seconds earlier, whose PNG differs from ours.
    neighbor_submit_seconds: float | None = None
    # Task queries carry submit_time / scheduled_time / end_time; off, they carry none (the vendor
    # page's examples show none), so a client must not depend on them.
    report_times: bool = True
    # When set, result downloads answer this HTTP status (the storage in front of results is down).
    results_unavailable_status: int | None = None
    # DashScope's temporary storage (local files for development, emulator/temp_storage.py): uploaded
    # objects live this long (the vendor: 48 h); a policy is valid upload_policy_seconds and allows
    # files up to upload_max_file_size_mb; getPolicy is limited per account and model (the vendor:
    # 100 QPS; None or 0 disables). The policy's life and size are the emulator's choice: the vendor
    # publishes neither for the try-on models.
    upload_ttl_seconds: float = 48 * 3600.0
    upload_policy_seconds: float = 300.0
    upload_max_file_size_mb: int = 100
    upload_policy_rate: float | None = 100.0
    seed: int = 0
    workers: int = 4
    fetch_timeout: float = 10.0
    allow_external_fetch: bool = False
    log_requests: bool = True
    request_log_size: int = 10000
    tz_offset_hours: float = 8.0
    epoch: float | None = None
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        validate(self)

    def latency_for(self, model: str) -> float:
        return float(self.latency_by_model.get(model, self.latency))

    def public_dict(self) -> dict[str, Any]:
        """JSON-safe view; the API key is masked (the control routes show settings, never secrets)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in PYTHON_ONLY:
                continue
            value = getattr(self, f.name)
            if f.name == "api_key" and value is not None:
                value = "***"
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out


def _number(name: str, value: Any, *, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")
    return float(value)


def _finite(name: str, value: Any, *, low: float | None = None) -> float:
    # NaN or infinity would turn every reported time (or backdated submit) into garbage.
    number = _number(name, value, low=low)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def validate(cfg: EmulatorConfig) -> None:
    """Raise ``ValueError`` naming the first bad setting."""
    for name in FAULT_FIELDS:
        _number(name, getattr(cfg, name), low=0.0, high=1.0)
    _number("latency", cfg.latency, low=0.0)
    for model, seconds in cfg.latency_by_model.items():
        _number(f"latency_by_model[{model}]", seconds, low=0.0)
    _number("slow_seconds", cfg.slow_seconds, low=0.0)
    _number("expiry_seconds", cfg.expiry_seconds, low=0.0)
    _number("fetch_timeout", cfg.fetch_timeout, low=0.0)
    _finite("upload_ttl_seconds", cfg.upload_ttl_seconds, low=0.0)
    _finite("upload_policy_seconds", cfg.upload_policy_seconds, low=1.0)
    size = cfg.upload_max_file_size_mb
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"upload_max_file_size_mb must be an integer >= 1, got {size!r}")
    for name in ("submit_rate", "query_rate", "upload_policy_rate"):
        if getattr(cfg, name) is not None:
            _number(name, getattr(cfg, name), low=0.0)
    if isinstance(cfg.max_running, bool) or not isinstance(cfg.max_running, int) or cfg.max_running < 1:
        raise ValueError(f"max_running must be an integer >= 1, got {cfg.max_running!r}")
    if isinstance(cfg.throttle_submits, bool) or not isinstance(cfg.throttle_submits, int) or cfg.throttle_submits < 0:
        raise ValueError(f"throttle_submits must be an integer >= 0, got {cfg.throttle_submits!r}")
    lost = cfg.lost_reply_submits
    if isinstance(lost, bool) or not isinstance(lost, int) or lost < 0:
        raise ValueError(f"lost_reply_submits must be an integer >= 0, got {lost!r}")
    if cfg.lost_reply_kind not in LOST_REPLY_KINDS:
        raise ValueError(f"lost_reply_kind must be one of {', '.join(LOST_REPLY_KINDS)}, got {cfg.lost_reply_kind!r}")
    _finite("clock_skew_seconds", cfg.clock_skew_seconds)
    if cfg.neighbor_submit_seconds is not None:
        _finite("neighbor_submit_seconds", cfg.neighbor_submit_seconds, low=0.0)
    if not isinstance(cfg.report_times, bool):
        raise ValueError(f"report_times must be true or false, got {cfg.report_times!r}")
    status = cfg.results_unavailable_status
    if status is not None and (isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599):
        raise ValueError(f"results_unavailable_status must be an HTTP error status (400-599) or None, got {status!r}")
    if isinstance(cfg.workers, bool) or not isinstance(cfg.workers, int) or cfg.workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {cfg.workers!r}")
    if cfg.result_shape not in RESULT_SHAPES:
        raise ValueError(f"result_shape must be one of {', '.join(RESULT_SHAPES)}, got {cfg.result_shape!r}")
    if cfg.api_key is not None and (not isinstance(cfg.api_key, str) or not cfg.api_key):
        raise ValueError("api_key must be a non-empty string or None")
    if not callable(cfg.clock):
        raise ValueError("clock must be a callable returning seconds")


def apply_updates(cfg: EmulatorConfig, updates: dict[str, Any], *, started: bool) -> EmulatorConfig:
    """Return a validated copy of ``cfg`` with ``updates`` applied (the original is untouched)."""
    names = {f.name for f in dataclasses.fields(cfg)}
    for key in updates:
        if key not in names:
            raise ValueError(f"unknown setting {key!r}")
        if started and key in STARTUP_ONLY:
            raise ValueError(f"{key} cannot be changed while the emulator is running")
    return dataclasses.replace(cfg, **updates)
