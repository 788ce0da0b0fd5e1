"""RefinerTaskSensor: wait for any DashScope try-on task (coarse or refiner) to finish."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_aitryon import lineage
from airflow_provider_aitryon.connection import DEFAULT_CONN_ID
from airflow_provider_aitryon.failures import AirflowFailException, AirflowSkipException, airflow_errors
from airflow_provider_aitryon.links import TryOnResultLink
from airflow_provider_aitryon.models import TaskResult
from airflow_provider_aitryon.operators.waiting import DashScopeWaitMixin, resolve_deferrable

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context


class RefinerTaskSensor(DashScopeWaitMixin, BaseSensorOperator):
    """Wait until a DashScope try-on task ends; return its result (XCom) or fail with its code.

    The one sensor for any DashScope try-on task: it polls ``GET /api/v1/tasks/{id}``, the same for
    coarse (``aitryon``, ``aitryon-plus``) and refiner tasks. Deferrable by default: the waiting
    happens in the triggerer, through the account's engine (shared budgets, queries when the task
    should have ended), and holds no worker slot; ``deferrable=False`` gives the classic poke and
    reschedule modes.

    On success it returns ``{"task_id", "task_status", "image_url", "usage", "request_id", ...}``.
    FAILED, CANCELED and UNKNOWN (expired or never existed) raise AirflowFailException with the
    task's code and message. On timeout a task still PENDING is canceled (so it is never charged)
    and the sensor times out (skips with ``soft_fail``).

    :param dashscope_task_id: the task id to wait for (templated; ``submit.output`` works).
    :param dashscope_conn_id: connection of type ``dashscope``.
    :param poke_interval: seconds between pokes (``deferrable=False``); deferred, the longest gap
        between two queries while the account's engine cannot yet predict the task's end.
    :param timeout: seconds before the sensor gives up.
    :param deferrable: wait in the triggerer; default from ``[operators] default_deferrable`` when
        the deployment sets it, else True.
    :param cancel_on_timeout: cancel a still-PENDING task when the sensor times out.
    :param cancel_on_kill: cancel a still-PENDING task when a user kills the sensor (in the worker,
        or deferred in the triggerer).
    """

    template_fields: Sequence[str] = ("dashscope_task_id", "dashscope_conn_id")
    ui_color = "#e1bee7"
    operator_extra_links = (TryOnResultLink(),)

    def __init__(
        self,
        *,
        dashscope_task_id: Any,
        dashscope_conn_id: str = DEFAULT_CONN_ID,
        poke_interval: float = 5.0,
        timeout: float = 60 * 60,
        deferrable: bool | None = None,
        cancel_on_timeout: bool = True,
        cancel_on_kill: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
        self.dashscope_task_id = dashscope_task_id
        self.dashscope_conn_id = dashscope_conn_id
        self.deferrable = resolve_deferrable(deferrable)
        self.cancel_on_timeout = cancel_on_timeout
        self.cancel_on_kill = cancel_on_kill
        self._last_seen: TaskResult | None = None  # the last poke's answer

    # ------------------------------------------------------------------ poke / reschedule

    def poke(self, context: Context) -> PokeReturnValue:
        self._waiting_on = self.dashscope_task_id  # on_kill cancels it while still PENDING
        try:
            with airflow_errors():
                result = self._hook().get_task(self.dashscope_task_id)
        except AirflowFailException:
            raise
        except Exception as exc:  # transient after the hook's own retries: poke again later
            self.log.warning("Could not read DashScope task %s yet: %s", self.dashscope_task_id, exc)
            return PokeReturnValue(is_done=False)
        self.log.info("DashScope task %s is %s.", result.task_id, result.raw_status)
        self._last_seen = result
        if result.status.is_terminal:
            self._waiting_on = None
        return PokeReturnValue(is_done=result.status.is_terminal, xcom_value=self.finish(result))

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
        seen = self._last_seen
        self.wait_until_done(
            self.dashscope_task_id,
            deferrable=True,
            poll_interval=self.poke_interval,
            timeout=self.timeout,
            # When the service reports it, the submit time lets the engine predict the end.
            submitted_at=self._hook().local_time(seen.submit_time) if seen is not None else None,
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        result = self.resume_from_event(event)
        self._lineage_result = result  # for get_openlineage_facets_on_complete
        return result

    # ------------------------------------------------------------------ OpenLineage

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage | None:
        """OpenLineage: the task's result image URL as output (without its query string) and the
        DashScope task as run facets (``externalQuery``, ``dashscopeTask``). It is the dataset the
        refiner's ``coarse_image_url`` and the save operator read, so their lineage joins here.
        None when the openlineage provider is not installed."""
        seen: TaskResult | None = getattr(self, "_last_seen", None)  # the last poke's answer
        result: dict[str, Any] = getattr(self, "_lineage_result", None) or (seen.to_xcom() if seen else {})
        task = None
        waited_on = self.dashscope_task_id if isinstance(self.dashscope_task_id, str) else None
        if task_id := result.get("task_id") or waited_on:
            try:
                service_url: str | None = self._hook().settings.base_url
            except Exception:
                service_url = None
            task = lineage.DashScopeTask(task_id=str(task_id), request_id=result.get("request_id"),
                                         status=result.get("task_status"), service_url=service_url)  # fmt: skip
        return lineage.submit_lineage(None, task=task, result_url=result.get("image_url"))
