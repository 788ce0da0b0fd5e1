"""Turning provider errors into the Airflow exceptions that decide retries.

Permanent problems (bad arguments, bad connection, a "no retry" API code) raise
AirflowFailException so Airflow does not burn retries on them; transient ones raise a plain
AirflowException so the task's own retries apply. Chained tracebacks from HTTP libraries are
dropped: the message already says what happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow_provider_aitryon.compat import (  # the task SDK's exceptions, wherever this Airflow keeps them
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
)

__all__ = [
    "AirflowException",
    "AirflowFailException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "airflow_errors",
]

from airflow_provider_aitryon.errors import DashScopeAPIError, DashScopeConfigError


@contextmanager
def airflow_errors() -> Iterator[None]:
    try:
        yield
    except DashScopeConfigError as exc:
        raise AirflowFailException(str(exc)) from None
    except DashScopeAPIError as exc:
        if exc.retryable:
            raise AirflowException(str(exc)) from None
        raise AirflowFailException(str(exc)) from None
