"""DashScopeTaskTrigger: wait in the triggerer for a DashScope task to end, without a worker slot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_aitryon.compat import on_kill_unsupported
from airflow_provider_aitryon.connection import DEFAULT_CONN_ID
from airflow_provider_aitryon.engine import EVENT_ERROR, EVENT_TIMEOUT, task_event, wait_for_task
from airflow_provider_aitryon.hooks.dashscope import DashScopeHook
from airflow_provider_aitryon.models import TaskStatus

__all__ = ["EVENT_ERROR", "EVENT_TIMEOUT", "DashScopeTaskTrigger", "task_event"]


class DashScopeTaskTrigger(BaseTrigger):
    """Wait until a DashScope task ends, the deadline passes or polling breaks; yield one event.

    A thin adapter: the task is registered with the account's engine in this triggerer
    (`engine.wait_for_task`), which shares the account's query budget and its learned task
    latencies among every waiter and asks about the task when its end is predicted.

    Serialises only the connection id, task id, model, submit time, poll settings and an absolute
    deadline (epoch seconds), so a triggerer restart resumes the same wait and the API key never
    reaches the metadata DB. Yields exactly one event (see `task_event`).

    :param dashscope_task_id: the DashScope task to wait for.
    :param dashscope_conn_id: connection with the API key.
    :param poll_interval: the longest gap between two queries while the engine cannot yet predict
        the task's end (it asks at the predicted end once it can).
    :param end_time: epoch seconds after which the trigger yields a ``timeout`` event.
    :param max_transient_errors: failed polls in a row (each counted as the connection's
        ``max_attempts`` tries) to tolerate.
    :param cancel_on_kill: cancel the DashScope task when a user kills the Airflow task while it is
        still PENDING (Airflow >= 3.3 calls on_kill only for user actions, not triggerer restarts; older
        versions never call it, and the trigger logs that it cannot cancel).
    :param model: the task's model, when known: latencies are learned per model.
    :param submitted_at: epoch seconds of the submit, when known: the end is predicted from it.
    """

    def __init__(
        self,
        dashscope_task_id: str,
        dashscope_conn_id: str = DEFAULT_CONN_ID,
        poll_interval: float = 5.0,
        end_time: float | None = None,
        max_transient_errors: int = 5,
        cancel_on_kill: bool = True,
        model: str | None = None,
        submitted_at: float | None = None,
    ) -> None:
        super().__init__()
        self.dashscope_task_id = dashscope_task_id
        self.dashscope_conn_id = dashscope_conn_id
        self.poll_interval = float(poll_interval)
        self.end_time = float(end_time) if end_time is not None else None
        self.max_transient_errors = int(max_transient_errors)
        self.cancel_on_kill = bool(cancel_on_kill)
        self.model = model
        self.submitted_at = float(submitted_at) if submitted_at is not None else None

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
                "model": self.model,
                "submitted_at": self.submitted_at,
            },
        )

    def _hook(self) -> DashScopeHook:
        return DashScopeHook(dashscope_conn_id=self.dashscope_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        if self.cancel_on_kill and (limitation := on_kill_unsupported(self.dashscope_task_id)):
            self.log.warning(limitation)
        event = await wait_for_task(
            self.dashscope_conn_id,
            self.dashscope_task_id,
            connect=self._hook,
            model=self.model,
            submitted_at=self.submitted_at,
            end_time=self.end_time,
            poll_interval=self.poll_interval,
            max_transient_errors=self.max_transient_errors,
            logger=self.log,
        )
        yield TriggerEvent(event)

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
