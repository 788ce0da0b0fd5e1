from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scripted_server import ScriptedServer  # noqa: E402

from airflow_provider_aitryon.operators.base import DashScopeSubmitOperator  # noqa: E402
from airflow_provider_aitryon.registry import (  # noqa: E402
    ClaimIndex,
    MemoryStore,
    Submission,
    SubmissionRegistry,
    operator_scope,
)

API_KEY = "sk-test-SECRET-7f3a9c"


def set_connection(
    monkeypatch: pytest.MonkeyPatch, base_url: str, conn_id: str = "dashscope_default", **extra: Any
) -> None:
    """Point a `dashscope` connection at a loopback server, with backoffs short enough for tests."""
    settings = {
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "max_attempts": 3,
        "read_timeout": 5,
        "lost_submit_grace": 0.05,
    }
    settings.update(extra)
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps({"conn_type": "dashscope", "host": base_url, "password": API_KEY, "extra": settings}),
    )


@pytest.fixture(autouse=True)
def memory_registry(monkeypatch: pytest.MonkeyPatch) -> SubmissionRegistry:
    """Unit tests run operators outside a task runner: a fresh registry and claim index per test."""
    registry = SubmissionRegistry(MemoryStore(), ClaimIndex(MemoryStore()))
    monkeypatch.setattr(DashScopeSubmitOperator, "registry", registry)
    return registry


def remember(registry: SubmissionRegistry, op: Any, task_id: str = "earlier-task", try_number: int = 1) -> None:
    """Record that try `try_number` of `op` (in FakeTI's run) already submitted `task_id`."""
    key, scope = operator_scope({"ti": FakeTI()}, op.task_id)
    call = op.build_call()
    entry = Submission(scope=scope, fingerprint=call.fingerprint(), model=call.body["model"],
                       owner=f"{scope}#{try_number}")  # fmt: skip
    registry.record_task(key, entry, task_id, "req-old", adopted=False)


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        set_connection(monkeypatch, server.base_url)
        yield server


class FakeTI:
    """Collects what an operator pushes to XCom; the operator itself runs for real."""

    dag_id = "dag"
    run_id = "manual__2026-01-01"
    task_id = "submit"
    map_index = -1

    def __init__(self, try_number: int = 1) -> None:
        self.pushed: dict[str, Any] = {}
        self.try_number = try_number

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value

    def get_first_reschedule_date(self, context: Any) -> None:
        return None  # the first try: no earlier reschedule


@pytest.fixture
def context() -> dict[str, Any]:
    return {"ti": FakeTI()}


def quiet_emulator_config(**overrides: Any) -> Any:
    """An emulator for unit tests: fast tasks, no rate limits, no request lines on stderr."""
    from airflow_provider_aitryon.emulator import EmulatorConfig

    base: dict[str, Any] = {"latency": 0.1, "log_requests": False, "submit_rate": None, "query_rate": None}
    base.update(overrides)
    return EmulatorConfig(**base)


@pytest.fixture
def emu() -> Iterator[Any]:
    from airflow_provider_aitryon.emulator import Emulator

    with Emulator(quiet_emulator_config()) as emulator:
        yield emulator


@pytest.fixture
def clock() -> Any:
    from airflow_provider_aitryon.emulator import ManualClock

    return ManualClock(1000.0)
