"""RefinerTaskSensor: wait for any DashScope try-on task (coarse or refiner) to finish."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_aitryon.connection import DEFAULT_CONN_ID
from airflow_provider_aitryon.errors import DashScopeAPIError
from airflow_provider_aitryon.failures import (
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    airflow_errors,
)
from airflow_provider_aitryon.hooks.dashscope import DashScopeHook
from airflow_provider_aitryon.models import Outcome, TaskResult, TaskStatus
from airflow_provider_aitryon.triggers.dashscope import (
    EVENT_ERROR,
    EVENT_TIMEOUT,
    DashScopeTaskTrigger,
)

if TYPE_CHECKING:
    from airflow.sdk import Context


class RefinerTaskSensor(BaseSensorOperator):
    """Wait until a DashScope try-on task ends; return its result (XCom) or fail with its code.

    The one sensor for any DashScope try-on task: it polls ``GET /api/v1/tasks/{id}``, the same for
    coarse (``aitryon``, ``aitryon-plus``) and refiner tasks. Deferrable by default: the waiting
    happens in the triggerer and holds no worker slot; ``deferrable=False`` gives the classic poke
    and reschedule modes.

    On success it returns ``{"task_id", "task_status", "image_url", "usage", "request_id", ...}``.
    FAILED, CANCELED and UNKNOWN (expired or never existed) raise AirflowFailException with the
    task's code and message. On timeout a task still PENDING is canceled (so it is never charged)
    and the sensor times out (skips with ``soft_fail``).

    :param dashscope_task_id: the task id to wait for (templated; ``submit.output`` works).
    :param dashscope_conn_id: connection of type ``dashscope``.
    :param poke_interval: seconds between status queries.
    :param timeout: seconds before the sensor gives up.
    :param deferrable: wait in the triggerer (default True).
    :param cancel_on_timeout: cancel a still-PENDING task when the sensor times out.
    """

    template_fields: Sequence[str] = ("dashscope_task_id", "dashscope_conn_id")
    ui_color = "#e1bee7"

    def __init__(
        self,
        *,
        dashscope_task_id: Any,
        dashscope_conn_id: str = DEFAULT_CONN_ID,
        poke_interval: float = 5.0,
        timeout: float = 60 * 60,
        deferrable: bool = True,
        cancel_on_timeout: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
        self.dashscope_task_id = dashscope_task_id
        self.dashscope_conn_id = dashscope_conn_id
        self.deferrable = deferrable
        self.cancel_on_timeout = cancel_on_timeout

    def _hook(self) -> DashScopeHook:
        return DashScopeHook(dashscope_conn_id=self.dashscope_conn_id)

    # ------------------------------------------------------------------ poke / reschedule

    def poke(self, context: Context) -> PokeReturnValue:
        try:
            with airflow_errors():
                result = self._hook().get_task(self.dashscope_task_id)
        except AirflowFailException:
            raise
        except Exception as exc:  # transient after the hook's own retries: poke again later
            self.log.warning("Could not read DashScope task %s yet: %s", self.dashscope_task_id, exc)
            return PokeReturnValue(is_done=False)
        self.log.info("DashScope task %s is %s.", result.task_id, result.raw_status)
        return PokeReturnValue(is_done=result.status.is_terminal, xcom_value=self._finish(result))

    # ------------------------------------------------------------------ deferrable

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        # One look before deferring: a task that already ended needs no trip through the triggerer.
        try:
            done = self.poke(context)
        except AirflowFailException as exc:
            if self.soft_fail:
                raise AirflowSkipException(str(exc)) from None
            raise
        if done.is_done:
            return done.xcom_value
        self.defer(
            trigger=DashScopeTaskTrigger(
                dashscope_task_id=self.dashscope_task_id,
                dashscope_conn_id=self.dashscope_conn_id,
                poll_interval=self.poke_interval,
                end_time=time.time() + self.timeout,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Resume from the trigger: one table maps the event status to what happens next."""
        if not isinstance(event, dict) or event.get("status") not in self._EVENT_HANDLERS:
            raise AirflowFailException(
                f"DashScope task {self.dashscope_task_id}: the trigger sent an unexpected event {event!r}."
            )
        task = event.get("task")
        result = TaskResult.from_dict(task) if task else None
        return self._EVENT_HANDLERS[event["status"]](self, event, result)

    # ------------------------------------------------------------------ outcomes

    def _finish(self, result: TaskResult) -> dict[str, Any] | None:
        """Terminal results: the success payload, or AirflowFailException; None while running."""
        if result.outcome is Outcome.SUCCESS:
            self.log.info("DashScope task %s SUCCEEDED: %s", result.task_id, result.image_url)
            return result.to_xcom()
        if result.outcome is Outcome.FAILURE:
            raise AirflowFailException(_failure_sentence(result))
        return None

    def _on_result(self, event: dict[str, Any], result: TaskResult | None) -> Any:
        if result is None:
            raise AirflowFailException(f"DashScope task {event.get('dashscope_task_id')}: event had no task.")
        return self._finish(result)

    def _on_timeout(self, event: dict[str, Any], result: TaskResult | None) -> Any:
        if self.cancel_on_timeout and (result is None or result.status is TaskStatus.PENDING):
            self._cancel_quietly()
        raise AirflowSensorTimeout(event.get("message") or "DashScope task did not finish in time.")

    def _on_error(self, event: dict[str, Any], result: TaskResult | None) -> Any:
        raise AirflowFailException(event.get("message") or "Polling the DashScope task failed.")

    _EVENT_HANDLERS: dict[str, Callable[..., Any]] = {
        Outcome.SUCCESS.value: _on_result,
        Outcome.FAILURE.value: _on_result,
        EVENT_TIMEOUT: _on_timeout,
        EVENT_ERROR: _on_error,
    }

    def _cancel_quietly(self) -> None:
        """Cancel a task nobody will wait for; DashScope refuses once it runs, which is fine."""
        try:
            self._hook().cancel_task(self.dashscope_task_id)
        except DashScopeAPIError as exc:
            self.log.info("DashScope task %s was not canceled: %s", self.dashscope_task_id, exc)


def _failure_sentence(result: TaskResult) -> str:
    why = {
        TaskStatus.FAILED: "failed",
        TaskStatus.CANCELED: "was canceled",
        TaskStatus.UNKNOWN: "is unknown to DashScope (it expired after 24 hours or never existed)",
    }.get(result.status, f"ended as {result.raw_status}")
    text = f"DashScope task {result.task_id} {why}"
    if result.code or result.message:
        text += f": {result.code or 'no code'}: {(result.message or 'no message').rstrip('. ')}"
    if result.request_id:
        text += f" [request_id {result.request_id}]"
    return text + "."
