"""What differs between the Airflow versions this provider supports, in one place.

The provider supports Airflow 3.1, 3.2 and 3.3 (``apache-airflow>=3.1,<3.4``; docs/versions.rst
has the evidence and the test matrix). Every version check lives here, as a flag the rest of the
code reads, so a difference is found once and tested once (tests/test_compat.py runs on every
version of the matrix):

* `DECLARATIVE_CONN_FIELDS` (3.2+): Airflow builds the connection form from the provider
  metadata's ``conn-fields`` and ``ui-field-behaviour``. Airflow 3.1 ignores both keys (its schema
  allows them) and asks the hook's ``get_ui_field_behaviour`` and ``get_connection_form_widgets``
  instead: the same labels, hints and descriptions, but the extras are text fields without
  number types or defaults.
* `TRIGGER_ON_KILL` (3.3+): the triggerer calls ``BaseTrigger.on_kill`` when a user kills a
  deferred task. Before 3.3 it never does, so killing a deferred wait cannot cancel the DashScope
  task; the trigger says so in the task log (`on_kill_unsupported`).
* `UNREADABLE_CONNECTION_IS_NOT_FOUND` (3.1): a connection whose Extra is not a JSON object is
  reported as not defined; the hook then reads ``AIRFLOW_CONN_<ID>`` itself to say what is wrong.
* The task SDK's exceptions: ``airflow.sdk.exceptions`` has them all from 3.2 on; 3.1 keeps most
  in ``airflow.exceptions`` (the same classes 3.2+ re-exports there, deprecated).
* `HITL_APPROVAL`: the human-in-the-loop ``ApprovalOperator`` comes with
  apache-airflow-providers-standard, not with Airflow, and takes ``response_timeout`` from
  `HITL_MIN_STANDARD` on. With an older (or no) standard provider `SpendApprovalOperator` still
  imports; it approves estimates below ``approve_above`` and fails, naming the upgrade, when it
  would have to ask. How the wait looks is the standard provider's business: on Airflow 3.3 the
  task waits in ``awaiting_input``, before that it is deferred to the triggerer.

Airflow 3.0 is not supported: it has no ``airflow.sdk.BaseHook`` (the hook's base class), nor the
task SDK's exceptions, ``airflow.sdk.lineage`` or the HITL operators.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any

import airflow
from airflow.triggers.base import BaseTrigger
from packaging.version import Version

__all__ = [
    "AIRFLOW_VERSION",
    "DECLARATIVE_CONN_FIELDS",
    "HITL_APPROVAL",
    "HITL_APPROVAL_OPERATOR",
    "HITL_MIN_STANDARD",
    "MIN_AIRFLOW",
    "TRIGGER_ON_KILL",
    "UNREADABLE_CONNECTION_IS_NOT_FOUND",
    "AirflowException",
    "AirflowFailException",
    "AirflowRescheduleException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "DownstreamTasksSkipped",
    "TaskDeferred",
    "on_kill_unsupported",
]

#: The oldest Airflow this provider supports (pyproject.toml declares the same).
MIN_AIRFLOW = Version("3.1")

#: The running Airflow's release, without pre-release or local parts (3.2.0rc1 counts as 3.2.0).
AIRFLOW_VERSION = Version(Version(airflow.__version__).base_version)

#: Airflow reads the connection form from ``conn-fields`` / ``ui-field-behaviour`` in the provider
#: metadata (3.2+); older versions ask the hook's form methods.
DECLARATIVE_CONN_FIELDS = Version("3.2") <= AIRFLOW_VERSION

#: Looking up a connection whose Extra is not a JSON object fails as "not defined" (3.1); 3.2+ returns
#: it and the provider names the problem. The hook then diagnoses an ``AIRFLOW_CONN_*`` variable itself.
UNREADABLE_CONNECTION_IS_NOT_FOUND = Version("3.2") > AIRFLOW_VERSION

#: The triggerer calls ``BaseTrigger.on_kill`` when a user kills a deferred task (3.3+).
TRIGGER_ON_KILL = callable(getattr(BaseTrigger, "on_kill", None))

if Version("3.2") <= AIRFLOW_VERSION:
    from airflow.sdk.exceptions import (
        AirflowException,
        AirflowFailException,
        AirflowRescheduleException,
        AirflowSensorTimeout,
        AirflowSkipException,
        DownstreamTasksSkipped,
        TaskDeferred,
    )
else:  # Airflow 3.1: only AirflowException had moved to the task SDK
    from airflow.exceptions import (  # type: ignore[no-redef,attr-defined]
        AirflowException,
        AirflowFailException,
        AirflowRescheduleException,
        AirflowSensorTimeout,
        AirflowSkipException,
        DownstreamTasksSkipped,
        TaskDeferred,
    )


#: The apache-airflow-providers-standard release whose ApprovalOperator takes ``response_timeout``
#: (1.12.2); older ones ask for an ``execution_timeout`` that races the wait.
HITL_MIN_STANDARD = "1.12.2"


@functools.cache
def _approval_operator() -> type[Any] | None:
    """The standard provider's ApprovalOperator if it is there and takes ``response_timeout``, else None."""
    try:
        from airflow.providers.standard.operators.hitl import ApprovalOperator
    except Exception:  # ImportError, or AirflowOptionalProviderFeatureException where HITL is unsupported
        return None
    takes_timeout = any(
        "response_timeout" in inspect.signature(vars(klass)["__init__"]).parameters
        for klass in ApprovalOperator.__mro__
        if "__init__" in vars(klass)
    )
    return ApprovalOperator if takes_timeout else None


if TYPE_CHECKING:
    #: Airflow's human-in-the-loop ApprovalOperator class (the standard provider's), or None without it.
    HITL_APPROVAL_OPERATOR: type[Any] | None
    #: A task can ask a human to approve or reject (`HITL_APPROVAL_OPERATOR` is importable and recent).
    HITL_APPROVAL: bool


def __getattr__(name: str) -> Any:
    # Looked up on first use, not when compat is imported: hooks, triggers and the triggerer import
    # compat too, and only the approval operator needs the HITL operator module.
    if name == "HITL_APPROVAL_OPERATOR":
        return _approval_operator()
    if name == "HITL_APPROVAL":
        return _approval_operator() is not None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def on_kill_unsupported(dashscope_task_id: str) -> str | None:
    """The task-log line for a deferred wait whose kill cannot cancel the DashScope task, or None.

    :param dashscope_task_id: the DashScope task the trigger waits for.
    """
    if TRIGGER_ON_KILL:
        return None
    # Worded without the hook's name: logs that mention it would read as if it had run.
    return (
        f"Airflow {AIRFLOW_VERSION} does not tell a trigger that its task was killed (Airflow 3.3 does): if "
        f"this task is killed while it waits here, DashScope task {dashscope_task_id} is not canceled and is "
        "billed if it runs; cancel it in the DashScope console, or use Airflow 3.3, where a kill cancels it."
    )
