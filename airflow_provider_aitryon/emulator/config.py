"""Emulator settings: one dataclass shared by the Python API, the CLI and ``POST /_emulator/config``.

Why one place: tests flip faults and limits at runtime through ``Emulator.update(...)`` while
shell scripts do it over HTTP; both must accept exactly the same names and reject the same bad
values, so validation lives next to the fields.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULT_SHAPES = ("object", "list", "flat")
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
        """JSON-safe view; the API key is masked because control endpoints have no auth."""
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
    for name in ("submit_rate", "query_rate"):
        if getattr(cfg, name) is not None:
            _number(name, getattr(cfg, name), low=0.0)
    if isinstance(cfg.max_running, bool) or not isinstance(cfg.max_running, int) or cfg.max_running < 1:
        raise ValueError(f"max_running must be an integer >= 1, got {cfg.max_running!r}")
    if isinstance(cfg.throttle_submits, bool) or not isinstance(cfg.throttle_submits, int) or cfg.throttle_submits < 0:
        raise ValueError(f"throttle_submits must be an integer >= 0, got {cfg.throttle_submits!r}")
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
