"""What every DashScope submit operator shares: check, submit once, optionally wait.

Subclasses only say how to build their request (`build_call`). Submitting goes through the
submission ledger so a retry never pays twice; waiting reuses the sensor's trigger and outcome table.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_provider_aitryon import api
from airflow_provider_aitryon.connection import DEFAULT_CONN_ID
from airflow_provider_aitryon.errors import DashScopeAPIError
from airflow_provider_aitryon.failures import AirflowSensorTimeout, airflow_errors
from airflow_provider_aitryon.hooks.dashscope import DashScopeHook
from airflow_provider_aitryon.ledger import Ledger, VariableLedger, ledger_key, new_entry, usable
from airflow_provider_aitryon.links import TryOnResultLink
from airflow_provider_aitryon.models import Outcome, TaskStatus
from airflow_provider_aitryon.preflight import InputInspector
from airflow_provider_aitryon.waiting import DashScopeWaitMixin

if TYPE_CHECKING:
    from airflow.sdk import Context

# Images submitted by this worker process, per model: the running count each submit logs.
SUBMITTED_IMAGES: Counter[str] = Counter()


class DashScopeSubmitOperator(DashScopeWaitMixin, BaseOperator):
    """Submit one DashScope task; return its task id, or with ``wait_for_completion`` its result.

    A retry of this task first looks up the task its earlier try submitted (the submission ledger):
    a PENDING, RUNNING or SUCCEEDED task is reused, only a FAILED, CANCELED or UNKNOWN one is
    submitted again. Both cases are logged.

    :param dashscope_conn_id: connection of type ``dashscope``.
    :param wait_for_completion: also wait for the task and return its result dict (the sensor's).
    :param deferrable: wait in the triggerer rather than in the worker (with wait_for_completion).
    :param poll_interval: seconds between status queries while waiting.
    :param wait_timeout: seconds to wait before failing; a task still PENDING then is canceled.
    :param validate_inputs: before submitting, fetch every input image (HEAD, then a GET capped at
        5 MB + 1 byte) and check the service's input rules (5 KB to 5 MB; JPEG, PNG or BMP by
        content; shortest side over 150 px, longest at most 4096 px; for the refiner, the coarse
        image at the person image's size). A failure fails the task at once, naming the field, and
        nothing is submitted. Default True; set False when the worker cannot reach the image URLs
        (DashScope still checks them, as a FAILED task). A retry that reuses the task its earlier
        try submitted does not fetch the images again.
    """

    ledger: ClassVar[Ledger] = VariableLedger()
    operator_extra_links = (TryOnResultLink(),)  # filled when wait_for_completion returns a result

    def __init__(
        self,
        *,
        dashscope_conn_id: str = DEFAULT_CONN_ID,
        wait_for_completion: bool = False,
        deferrable: bool = True,
        poll_interval: float = 5.0,
        wait_timeout: float = 60 * 60,
        cancel_on_timeout: bool = True,
        validate_inputs: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dashscope_conn_id = dashscope_conn_id
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.cancel_on_timeout = cancel_on_timeout
        self.validate_inputs = validate_inputs

    def build_call(self) -> api.ApiCall:
        raise NotImplementedError

    def execute(self, context: Context) -> Any:
        with airflow_errors():
            call = self.build_call()
            hook = self._hook()
            task_id = self.submit_once(context, hook, call)
        if not self.wait_for_completion:
            self.ledger.forget(ledger_key(context, self.task_id))
            return task_id
        if self.deferrable:
            self.defer_until_done(task_id, poll_interval=self.poll_interval, timeout=self.wait_timeout)
        with airflow_errors():
            return self._finished(context, self._wait_here(hook, task_id))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        return self._finished(context, self.resume_from_event(event))

    def _finished(self, context: Context, result: dict[str, Any]) -> dict[str, Any]:
        self.ledger.forget(ledger_key(context, self.task_id))
        return result

    def submit_once(self, context: Context, hook: DashScopeHook, call: api.ApiCall) -> str:
        """Submit, unless an earlier try of this task instance already paid for the same request."""
        key = ledger_key(context, self.task_id)
        fingerprint = call.fingerprint()
        previous = self.ledger.lookup(key)
        ti = context.get("ti")
        if previous and usable(previous, fingerprint):
            # A failed status check raises (and Airflow retries) rather than risk a second charge.
            result = hook.get_task(previous["task_id"])
            if result.outcome is not Outcome.FAILURE:
                self.log.info(
                    "Reusing DashScope task %s submitted by try %s (now %s); not submitting again.",
                    result.task_id or previous["task_id"], previous.get("try_number"), result.raw_status,
                )  # fmt: skip
                self._push_task_id(ti, previous["task_id"], previous.get("request_id"))
                return str(previous["task_id"])
            self.log.info(
                "The DashScope task %s of try %s ended %s; submitting a new one.",
                previous["task_id"], previous.get("try_number"), result.raw_status,
            )  # fmt: skip
        if self.validate_inputs:
            # Only when about to pay: a reused task's images are not fetched again (signed URLs
            # may have expired since, and the task does not need them any more). The connection
            # is read first: a missing API key is a clearer error than four image downloads.
            _ = hook.settings
            with InputInspector(logger=self.log) as inspector:
                inspector.check_call(call)
        submitted = hook.submit(call)
        self.ledger.record(
            key, new_entry(submitted.task_id, submitted.request_id, fingerprint, getattr(ti, "try_number", None))
        )
        self._push_task_id(ti, submitted.task_id, submitted.request_id)
        model = str((call.body or {}).get("model"))
        SUBMITTED_IMAGES[model] += 1
        self.log.info(
            "Submitted %s task %s; images submitted by this worker so far: %s.",
            model, submitted.task_id, dict(SUBMITTED_IMAGES),
        )  # fmt: skip
        return submitted.task_id

    @staticmethod
    def _push_task_id(ti: Any, task_id: str, request_id: str | None) -> None:
        """Make the task id visible the moment it is known, before anything else can fail."""
        if ti is not None:
            ti.xcom_push(key="dashscope_task_id", value=task_id)
            ti.xcom_push(key="request_id", value=request_id)

    def _wait_here(self, hook: DashScopeHook, task_id: str) -> dict[str, Any]:
        """Wait in the worker (deferrable=False): the same outcomes as the trigger, in a plain loop."""
        deadline = time.monotonic() + self.wait_timeout
        last_status: TaskStatus | None = None
        while True:
            try:
                result = hook.get_task(task_id)
            except DashScopeAPIError as exc:
                if not exc.retryable:
                    raise
                self.log.warning("Could not read DashScope task %s yet: %s", task_id, exc)
            else:
                last_status = result.status
                payload = self.finish(result)
                if payload is not None:
                    return payload
            if time.monotonic() >= deadline:
                if self.cancel_on_timeout and last_status in (None, TaskStatus.PENDING):
                    self.cancel_quietly(task_id)
                raise AirflowSensorTimeout(
                    f"DashScope task {task_id} did not finish within {self.wait_timeout:g}s "
                    f"(last status {last_status.value if last_status else 'not yet known'})."
                )
            time.sleep(self.poll_interval)
