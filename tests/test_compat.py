"""The version differences in `compat`, checked against the Airflow that is installed.

`make test-matrix` runs this file on every supported Airflow (3.1, 3.2, 3.3): each flag must match
both the version rule it states and what that Airflow really does, so a wrong guess about a version
fails here rather than in a deployment.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

from airflow_provider_aitryon import compat
from airflow_provider_aitryon.connection import EXTRA_BOOL_FIELDS, EXTRA_FIELDS
from airflow_provider_aitryon.triggers.dashscope import DashScopeTaskTrigger

REPO = Path(__file__).resolve().parent.parent


def _airflow_requirement() -> Requirement:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (requirement,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "apache-airflow"]
    return requirement


def test_the_installed_airflow_is_in_the_declared_range():
    requirement = _airflow_requirement()
    assert Version(Version(version("apache-airflow-core")).base_version) == compat.AIRFLOW_VERSION
    assert compat.AIRFLOW_VERSION in requirement.specifier, (
        f"Airflow {compat.AIRFLOW_VERSION} is outside pyproject's {requirement}: extend the range only "
        "together with the matrix (docs/versions.rst)"
    )


def test_the_declared_lower_bound_is_min_airflow():
    lower = [s for s in _airflow_requirement().specifier if s.operator == ">="]
    assert [Version(s.version) for s in lower] == [compat.MIN_AIRFLOW]


def test_declarative_connection_fields_flag_matches_the_providers_manager():
    from airflow import providers_manager

    reads_conn_fields = '"conn-fields"' in Path(providers_manager.__file__).read_text()
    assert reads_conn_fields == compat.DECLARATIVE_CONN_FIELDS
    assert (Version("3.2") <= compat.AIRFLOW_VERSION) == compat.DECLARATIVE_CONN_FIELDS


def test_trigger_on_kill_flag_matches_the_triggerer():
    from airflow.jobs import triggerer_job_runner

    calls_on_kill = "trigger.on_kill(" in Path(triggerer_job_runner.__file__).read_text()
    assert calls_on_kill == compat.TRIGGER_ON_KILL
    assert (Version("3.3") <= compat.AIRFLOW_VERSION) == compat.TRIGGER_ON_KILL


def test_hitl_approval_flag_matches_the_installed_standard_provider():
    # The flag must be what the installed provider really offers: an ApprovalOperator whose wait
    # takes response_timeout, from the release compat names on.
    standard = Version(version("apache-airflow-providers-standard"))
    assert (standard >= Version(compat.HITL_MIN_STANDARD)) == compat.HITL_APPROVAL
    assert (compat.HITL_APPROVAL_OPERATOR is not None) == compat.HITL_APPROVAL
    if compat.HITL_APPROVAL:
        from airflow.providers.standard.operators.hitl import ApprovalOperator

        assert compat.HITL_APPROVAL_OPERATOR is ApprovalOperator
        op = ApprovalOperator(task_id="approve", subject="s", response_timeout=timedelta(minutes=5))
        assert op.response_timeout == timedelta(minutes=5) and op.execution_timeout is None


@pytest.mark.parametrize(
    "name",
    [
        "AirflowException",
        "AirflowFailException",
        "AirflowRescheduleException",
        "AirflowSensorTimeout",
        "AirflowSkipException",
        "DownstreamTasksSkipped",
        "TaskDeferred",
    ],
)
def test_exceptions_are_the_ones_the_task_runner_handles(name):
    # The 3.1 task runner catches airflow.exceptions' classes, 3.2+ the SDK's (which 3.2+ re-exports
    # from airflow.exceptions): the same class on every version, or a fail would become a retry.
    import airflow.exceptions

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert getattr(compat, name) is getattr(airflow.exceptions, name)
    if Version("3.2") <= compat.AIRFLOW_VERSION:
        import airflow.sdk.exceptions

        assert getattr(compat, name) is getattr(airflow.sdk.exceptions, name)


def test_nothing_else_imports_version_dependent_exception_modules():
    pattern = re.compile(r"^\s*from airflow(\.sdk)?\.exceptions import", re.MULTILINE)
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("airflow_provider_aitryon", "tests", "dags")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path.name != "compat.py" and pattern.search(path.read_text())
    ]
    assert offenders == [], "import Airflow's exceptions from airflow_provider_aitryon.compat (3.1 lacks most in SDK)"


# ---------------------------------------------------------------- the trigger's on_kill limitation


def _warnings_of_a_wait(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, scripted: Any, **kwargs: Any
) -> list[str]:
    import asyncio

    import replies

    # Airflow's trigger logger is structlog's on some versions: record through a stdlib one.
    logger = logging.getLogger("test_compat.trigger")
    monkeypatch.setattr(DashScopeTaskTrigger, "log", property(lambda self: logger))
    scripted.add(replies.task("SUCCEEDED"))
    trigger = DashScopeTaskTrigger(dashscope_task_id="task-1", poll_interval=0.01, **kwargs)

    async def drain() -> list[Any]:
        return [event async for event in trigger.run()]

    with caplog.at_level(logging.WARNING, logger="test_compat.trigger"):
        (event,) = asyncio.run(drain())
    assert event.payload["status"] == "success"
    return [r.getMessage() for r in caplog.records if "was killed" in r.getMessage()]


@pytest.mark.parametrize("supported", [True, False])
def test_a_wait_says_when_a_kill_cannot_cancel(monkeypatch, caplog, scripted, supported):
    monkeypatch.setattr(compat, "TRIGGER_ON_KILL", supported)
    said = _warnings_of_a_wait(monkeypatch, caplog, scripted)
    if supported:
        assert said == []
    else:
        (line,) = said
        assert "task-1 is not canceled" in line and "Airflow 3.3" in line
        assert "on_kill" not in line  # the real-Airflow test reads that word as the hook having run


def test_a_wait_that_would_not_cancel_anyway_says_nothing(monkeypatch, caplog, scripted):
    monkeypatch.setattr(compat, "TRIGGER_ON_KILL", False)
    assert _warnings_of_a_wait(monkeypatch, caplog, scripted, cancel_on_kill=False) == []


def test_the_installed_airflow_logs_the_limitation_exactly_when_it_lacks_on_kill(monkeypatch, caplog, scripted):
    said = _warnings_of_a_wait(monkeypatch, caplog, scripted)
    assert len(said) == (0 if compat.TRIGGER_ON_KILL else 1)


# ---------------------------------------------------------------- what the connection form gets

# Run in a fresh interpreter: the UI's hook metadata service replaces wtforms and flask modules in
# sys.modules with mocks when they are missing, and the providers manager is a process singleton.
_FORM_PROBE = """
import json, logging, warnings
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(f"{record.levelname} {record.name}: {record.getMessage()}")
logging.getLogger().addHandler(Keep(level=logging.WARNING))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
    metas = [m.model_dump(mode="json") for m in HookMetaService.hook_meta_data() if m.connection_type == "dashscope"]
    from airflow.providers_manager import ProvidersManager
    manager = ProvidersManager()
    provider = manager.providers.get("airflow-provider-aitryon")
ours = lambda text: "aitryon" in text.lower() or "dashscope" in text.lower()
print(json.dumps({
    "metas": metas,
    "provider_version": provider.version if provider else None,
    "problems": [r for r in records if ours(r)] + [str(w.message) for w in caught if ours(str(w.message))],
}))
"""


@pytest.fixture(scope="module")
def form(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path_factory.mktemp("airflow_home"))}
    done = subprocess.run(
        [sys.executable, "-c", _FORM_PROBE], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_providers_manager_loads_the_provider_without_complaints(form):
    from airflow_provider_aitryon import __version__

    assert form["provider_version"] == __version__
    assert form["problems"] == []


def test_the_ui_gets_the_labels_hints_and_every_extra(form):
    (meta,) = form["metas"]
    assert meta["hook_class_name"] == "airflow_provider_aitryon.hooks.dashscope.DashScopeHook"
    standard = meta["standard_fields"]
    assert standard["host"]["title"] == "Base URL"
    assert standard["password"]["title"] == "API key"
    assert standard["host"]["placeholder"]
    assert all(standard[name]["hidden"] for name in ("login", "port", "url_schema"))
    extras = meta["extra_fields"]
    assert {"workspace", *EXTRA_FIELDS, *EXTRA_BOOL_FIELDS} <= set(extras)
    assert all(field["description"] for field in extras.values())


def test_typed_fields_with_defaults_exactly_where_declarative_fields_exist(form):
    (meta,) = form["metas"]
    field = meta["extra_fields"]["read_timeout"]
    if compat.DECLARATIVE_CONN_FIELDS:
        assert "number" in field["schema"]["type"]
        assert field["value"] == EXTRA_FIELDS["read_timeout"][1]
    else:  # 3.1 reads the hook's widgets: a text field, empty until the user types (null = default)
        assert field["schema"]["type"] in ("string", ["string", "null"])
        assert field["value"] is None


# ---------------------------------------------------------------- a connection Airflow cannot read


@pytest.mark.parametrize(
    ("extra", "says"),
    [("{read_timeout: 30}", "Extra is not valid JSON"), ([30], "Extra must be a JSON object, got list")],
)
def test_a_connection_with_a_bad_extra_is_named_on_every_version(monkeypatch, extra, says):
    from airflow.sdk import BaseHook

    from airflow_provider_aitryon.errors import DashScopeConfigError
    from airflow_provider_aitryon.hooks.dashscope import DashScopeHook

    conn = {"conn_type": "dashscope", "host": "http://127.0.0.1:9", "password": "sk-compat-0123", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_DS_BAD_EXTRA", json.dumps(conn))
    try:
        BaseHook.get_connection("ds_bad_extra")
        hidden = False
    except Exception as exc:
        hidden = "isn't defined" in str(exc)
    assert hidden == compat.UNREADABLE_CONNECTION_IS_NOT_FOUND
    assert hidden == (Version("3.2") > compat.AIRFLOW_VERSION)
    with pytest.raises(DashScopeConfigError, match=f"^Connection 'ds_bad_extra' {says}; set it to a JSON object"):
        DashScopeHook(dashscope_conn_id="ds_bad_extra").get_conn()


@pytest.mark.parametrize(
    "value",
    [
        None,
        "dashscope://:sk-key@127.0.0.1:8089?read_timeout=5",
        json.dumps({"conn_type": "dashscope", "password": "sk-key"}),
        json.dumps({"conn_type": "dashscope", "password": "sk-key", "extra": {"read_timeout": 5}}),
        json.dumps({"conn_type": "dashscope", "password": "sk-key", "extra": '{"read_timeout": 5}'}),
        "{not json",
    ],
)
def test_env_connection_problem_is_none_unless_the_extra_is_bad(monkeypatch, value):
    from airflow_provider_aitryon.connection import env_connection_problem

    if value is None:
        monkeypatch.delenv("AIRFLOW_CONN_DS_FINE", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW_CONN_DS_FINE", value)
    assert env_connection_problem("ds_fine") is None
