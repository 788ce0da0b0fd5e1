"""DashScopeTaskTrigger: wait in the triggerer for a DashScope task to end, without a worker slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_aitryon.connection import DEFAULT_CONN_ID
from airflow_provider_aitryon.errors import DashScopeAPIError, DashScopeConfigError
from airflow_provider_aitryon.hooks.dashscope import DashScopeHook
from airflow_provider_aitryon.models import TaskResult, TaskStatus

# Event statuses beyond the task outcomes (success / failure) a waiter can end with.
EVENT_TIMEOUT = "timeout"
EVENT_ERROR = "error"


def task_event(
    status: str,
    task_id: str,
    result: TaskResult | None = None,
    message: str | None = None,
    *,
    retryable: bool = False,
) -> dict[str, Any]:
    """The one event shape: small and JSON-safe, so it survives the metadata DB round trip."""
    return {
        "status": status,
        "dashscope_task_id": task_id,
        "task": result.to_dict() if result else None,
        "message": message,
        "retryable": retryable,
    }


class DashScopeTaskTrigger(BaseTrigger):
    """Poll ``GET /api/v1/tasks/{id}`` until the task ends, the deadline passes or polling breaks.

    Serialises only the connection id, task id, poll settings and an absolute deadline (epoch
    seconds), so a triggerer restart resumes the same wait and the API key never reaches the
    metadata DB. Yields exactly one event (see `task_event`).

    :param dashscope_task_id: the DashScope task to wait for.
    :param dashscope_conn_id: connection with the API key.
    :param poll_interval: seconds between queries.
    :param end_time: epoch seconds after which the trigger yields a ``timeout`` event.
    :param max_transient_errors: failed polls in a row (after the hook's own retries) to tolerate.
    :param cancel_on_kill: cancel the DashScope task when a user kills the Airflow task while it is
        still PENDING (Airflow >= 3.3 calls on_kill only for user actions, not triggerer restarts).
    """

    def __init__(
        self,
        dashscope_task_id: str,
        dashscope_conn_id: str = DEFAULT_CONN_ID,
        poll_interval: float = 5.0,
        end_time: float | None = None,
        max_transient_errors: int = 5,
        cancel_on_kill: bool = True,
    ) -> None:
        super().__init__()
        self.dashscope_task_id = dashscope_task_id
        self.dashscope_conn_id = dashscope_conn_id
        self.poll_interval = float(poll_interval)
        self.end_time = float(end_time) if end_time is not None else None
        self.max_transient_errors = int(max_transient_errors)
        self.cancel_on_kill = bool(cancel_on_kill)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "dashscope_task_id": self.dashscope_task_id,
                "dashscope_conn_id": self.dashscope_conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "max_transient_errors": self.max_transient_errors,
                "cancel_on_kill": self.cancel_on_kill,
            },
        )

    def _hook(self) -> DashScopeHook:
        return DashScopeHook(dashscope_conn_id=self.dashscope_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self._hook()
        try:
            event = await self._wait(hook)
        finally:
            await hook.aclose()
        yield TriggerEvent(event)

    async def _wait(self, hook: DashScopeHook) -> dict[str, Any]:
        task_id = self.dashscope_task_id
        last: TaskResult | None = None
        errors_in_a_row = 0
        while True:
            try:
                result = await hook.aget_task(task_id)
            except DashScopeConfigError as exc:
                return task_event(EVENT_ERROR, task_id, last, str(exc))
            except DashScopeAPIError as exc:
                errors_in_a_row += 1
                if not exc.retryable or errors_in_a_row > self.max_transient_errors:
                    return task_event(EVENT_ERROR, task_id, last, str(exc), retryable=exc.retryable)
                self.log.warning(
                    "Polling DashScope task %s failed (%d in a row), will poll again: %s",
                    task_id,
                    errors_in_a_row,
                    exc,
                )
            else:
                errors_in_a_row = 0
                last = result
                if result.status.is_terminal:
                    return task_event(result.outcome.value, task_id, result, result.message)
                self.log.debug("DashScope task %s is %s.", task_id, result.raw_status)
            remaining = None if self.end_time is None else self.end_time - time.time()
            if remaining is not None and remaining <= 0:
                status = last.raw_status if last else "not yet known"
                return task_event(
                    EVENT_TIMEOUT,
                    task_id,
                    last,
                    f"DashScope task {task_id} did not finish before the deadline (last status {status}).",
                )
            await asyncio.sleep(self.poll_interval if remaining is None else min(self.poll_interval, remaining))

    async def on_kill(self) -> None:
        """A user killed the Airflow task: stop paying for a task nobody will collect."""
        if not self.cancel_on_kill:
            return
        hook = self._hook()
        try:
            result = await hook.aget_task(self.dashscope_task_id)
            if result.status is TaskStatus.PENDING:
                await hook.acancel_task(self.dashscope_task_id)
        except Exception as exc:  # best effort: the task may have started or ended meanwhile
            self.log.warning("Could not cancel DashScope task %s: %s", self.dashscope_task_id, exc)
        finally:
            await hook.aclose()
