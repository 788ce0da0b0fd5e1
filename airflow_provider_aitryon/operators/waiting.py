"""Waiting for a DashScope task, shared by the sensor and the submit-and-wait operators.

One table maps each way a wait can end (task outcome, deadline, broken polling) to what the Airflow
task does next, so the sensor and the operators cannot drift apart.
"""

from __future__ import annotations

import asyncio
import configparser
import os
import time
from collections.abc import Callable
from typing import Any

from airflow_provider_aitryon.engine import EVENT_ERROR, EVENT_TIMEOUT, wait_for_task
from airflow_provider_aitryon.errors import FIXES, DashScopeAPIError
from airflow_provider_aitryon.failures import AirflowException, AirflowFailException, AirflowSensorTimeout
from airflow_provider_aitryon.hooks.dashscope import DashScopeHook
from airflow_provider_aitryon.links import remember_result
from airflow_provider_aitryon.models import Outcome, TaskResult, TaskStatus
from airflow_provider_aitryon.triggers.dashscope import DashScopeTaskTrigger

_WHY = {
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELED: "was canceled",
    TaskStatus.UNKNOWN: "is unknown to DashScope (it expired after 24 hours or never existed)",
}


_FIX_BY_STATUS = {
    TaskStatus.UNKNOWN: "submit the task again, or check that the task id and the connection's API key belong to "
    "the same account",
    TaskStatus.CANCELED: "submit the task again if it is still wanted",
}


def failure_sentence(result: TaskResult) -> str:
    text = f"DashScope task {result.task_id} {_WHY.get(result.status, f'ended as {result.raw_status}')}"
    if result.code or result.message:
        text += f": {result.code or 'no code'}: {(result.message or 'no message').rstrip('. ')}"
    if result.request_id:
        text += f" [request_id {result.request_id}]"
    fix = FIXES.get(result.code or "") or _FIX_BY_STATUS.get(result.status)
    if fix:
        text += f"; {fix}"
    return text + "."


def default_deferrable() -> bool:
    """``[operators] default_deferrable`` when the deployment sets it; True when it does not.

    Official providers default ``deferrable`` to that option. Airflow's own built-in default for
    it is false, which would make every wait hold a worker slot for minutes, so only a value the
    deployment chose (airflow.cfg, or ``AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE``) counts here.
    Note that ``airflow`` writes ``default_deferrable = false`` into a new airflow.cfg: delete the
    line, or set it to true, to keep these operators deferrable.
    """
    conf = _airflow_conf()
    env = "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"
    chosen = any(os.environ.get(name) for name in (env, env + "_CMD", env + "_SECRET"))
    # The plain ConfigParser lookup sees only what was read from the deployment's airflow.cfg,
    # never Airflow's built-in defaults.
    chosen = chosen or configparser.RawConfigParser.has_option(conf, "operators", "default_deferrable")
    if not chosen:
        return True
    return conf.getboolean("operators", "default_deferrable", fallback=True)


def _airflow_conf() -> Any:
    try:
        from airflow.sdk.configuration import conf  # the Task SDK's view (Airflow 3.2+)
    except ImportError:
        from airflow.configuration import conf
    return conf


def resolve_deferrable(deferrable: bool | None) -> bool:
    """An operator's ``deferrable`` argument: as given, or `default_deferrable` when None."""
    return default_deferrable() if deferrable is None else bool(deferrable)


class DashScopeWaitMixin:
    """For operators that wait on a DashScope task: in place (poke) or deferred to the triggerer.

    Expects `dashscope_conn_id` and `cancel_on_timeout` attributes and BaseOperator's `log` and
    `defer`.
    """

    dashscope_conn_id: str
    cancel_on_timeout: bool
    cancel_on_kill: bool = True
    log: Any
    defer: Callable[..., Any]
    # The DashScope task this worker process is waiting on right now; on_kill cancels it. It stays
    # set when the wait ends with an exception, because Airflow calls on_kill after an
    # execution_timeout too.
    _waiting_on: str | None = None

    def on_kill(self) -> None:
        """Killed while waiting in the worker: cancel the DashScope task if it is still PENDING.

        A PENDING task is never charged once canceled; DashScope refuses to cancel a task that has
        started, which is then paid for, and a rerun of this Airflow task reuses it. Deferred waits
        are handled by the trigger's own ``on_kill``.
        """
        task_id, self._waiting_on = self._waiting_on, None
        if task_id and self.cancel_on_kill:
            self.log.warning("Killed while waiting for DashScope task %s; canceling it if still PENDING.", task_id)
            self.cancel_quietly(task_id)

    def _hook(self) -> DashScopeHook:
        """One hook per operator instance, so its connection is read once per task process.

        on_kill depends on it: by the time Airflow sends SIGTERM the supervisor no longer answers
        a connection lookup, so a hook made then would wait until the SIGKILL.
        """
        hook = self.__dict__.get("_dashscope_hook")
        if hook is None or hook.dashscope_conn_id != self.dashscope_conn_id:
            hook = self.__dict__["_dashscope_hook"] = DashScopeHook(dashscope_conn_id=self.dashscope_conn_id)
        return hook

    def finish(self, result: TaskResult) -> dict[str, Any] | None:
        """The XCom payload of a SUCCEEDED task, AirflowFailException for a failed one, None if running."""
        if result.outcome is Outcome.SUCCESS:
            self.log.info("DashScope task %s SUCCEEDED: %s", result.task_id, result.image_url)
            payload = result.to_xcom()
            remember_result(self, payload)  # for the "Try-on result" link
            return payload
        if result.outcome is Outcome.FAILURE:
            raise AirflowFailException(failure_sentence(result))
        return None

    def wait_until_done(
        self,
        task_id: str,
        *,
        deferrable: bool,
        poll_interval: float,
        timeout: float,
        model: str | None = None,
        submitted_at: float | None = None,
    ) -> dict[str, Any]:
        """Wait for the task through the account's engine: in the triggerer (deferred) or in this worker.

        Either way the same routine (`engine.wait_for_task`) watches the task and ends the wait
        with the same event, which `resume_from_event` turns into the result or the failure.

        :param task_id: the DashScope task id.
        :param deferrable: hand the wait to the triggerer (no worker slot held) instead of waiting here.
        :param poll_interval: the longest gap between two queries while the end cannot be predicted.
        :param timeout: seconds to wait before the wait times out.
        :param model: the task's model, when known (latencies are learned per model).
        :param submitted_at: epoch seconds of the submit, when known.
        """
        end_time = time.time() + timeout  # absolute: a resumed trigger keeps the same deadline
        if deferrable:
            self.defer(
                trigger=DashScopeTaskTrigger(
                    dashscope_task_id=task_id,
                    dashscope_conn_id=self.dashscope_conn_id,
                    poll_interval=poll_interval,
                    end_time=end_time,
                    model=model,
                    submitted_at=submitted_at,
                    cancel_on_kill=self.cancel_on_kill,
                ),
                method_name="execute_complete",
            )
        self._waiting_on = task_id
        event = asyncio.run(
            wait_for_task(
                self.dashscope_conn_id,
                task_id,
                # A fresh hook each time the engine re-reads the connection (a rotated key).
                connect=lambda: DashScopeHook(dashscope_conn_id=self.dashscope_conn_id),
                model=model,
                submitted_at=submitted_at,
                end_time=end_time,
                poll_interval=poll_interval,
                logger=self.log,
            )
        )
        self._waiting_on = None  # the wait is over; a kill from here on has nothing to cancel
        return self.resume_from_event(event)

    def resume_from_event(self, event: Any) -> dict[str, Any]:
        """Turn the trigger's event into the task's result or its failure."""
        handler = _EVENT_HANDLERS.get(str(event.get("status"))) if isinstance(event, dict) else None
        if handler is None:
            raise AirflowFailException(f"The DashScope trigger sent an unexpected event {event!r}.")
        task = event.get("task")
        return handler(self, event, TaskResult.from_dict(task) if task else None)

    def _on_result(self, event: dict[str, Any], result: TaskResult | None) -> dict[str, Any]:
        payload = self.finish(result) if result else None
        if payload is None:  # a terminal event always carries its task; anything else is a bug
            raise AirflowFailException(f"DashScope task {event.get('dashscope_task_id')}: the event had no result.")
        return payload

    def _on_timeout(self, event: dict[str, Any], result: TaskResult | None) -> dict[str, Any]:
        task_id = event.get("dashscope_task_id")
        if self.cancel_on_timeout and task_id and (result is None or result.status is TaskStatus.PENDING):
            self.cancel_quietly(task_id)
        raise AirflowSensorTimeout(event.get("message") or f"DashScope task {task_id} did not finish in time.")

    def _on_error(self, event: dict[str, Any], result: TaskResult | None) -> dict[str, Any]:
        message = event.get("message") or "Polling the DashScope task failed."
        if event.get("retryable"):
            # Polling kept failing on a transient error: a retry of this Airflow task waits again
            # (it never submits), so let Airflow's retries have it.
            raise AirflowException(message)
        raise AirflowFailException(message)

    def cancel_quietly(self, task_id: str) -> bool:
        """Cancel a task nobody will wait for, so it is never charged; once it runs DashScope refuses.

        :param task_id: the DashScope task id.
        :return: whether DashScope canceled it.
        """
        try:
            self._hook().cancel_task(task_id)
        except DashScopeAPIError as exc:
            self.log.info("DashScope task %s was not canceled: %s", task_id, exc)
            return False
        return True


_EVENT_HANDLERS: dict[str, Callable[..., dict[str, Any]]] = {
    Outcome.SUCCESS.value: DashScopeWaitMixin._on_result,
    Outcome.FAILURE.value: DashScopeWaitMixin._on_result,
    EVENT_TIMEOUT: DashScopeWaitMixin._on_timeout,
    EVENT_ERROR: DashScopeWaitMixin._on_error,
}
