"""What every DashScope submit operator shares: check, submit once, optionally wait.

Subclasses only say how to build their request (`build_call`). Submitting goes through the
submission registry so a retry, a clear or a rerun never pays twice; waiting reuses the sensor's
trigger and outcome table.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_provider_aitryon import api
from airflow_provider_aitryon.connection import DEFAULT_CONN_ID
from airflow_provider_aitryon.errors import DashScopeAPIError
from airflow_provider_aitryon.failures import airflow_errors
from airflow_provider_aitryon.hooks.dashscope import DashScopeHook
from airflow_provider_aitryon.links import TryOnResultLink
from airflow_provider_aitryon.operators.waiting import DashScopeWaitMixin
from airflow_provider_aitryon.preflight import InputInspector
from airflow_provider_aitryon.registry import (
    INTENT_WINDOW_SECONDS,
    Decision,
    Submission,
    SubmissionRegistry,
    after_status,
    decide,
    operator_registry,
    operator_scope,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

# Images submitted by this worker process, per model: the running count each submit logs.
SUBMITTED_IMAGES: Counter[str] = Counter()


class DashScopeSubmitOperator(DashScopeWaitMixin, BaseOperator):
    """Submit one DashScope task; return its task id, or with ``wait_for_completion`` its result.

    A retry, a clear or a rerun of this task instance first looks up what an earlier try paid for
    (the submission registry, kept 24 h): for the same request, a PENDING, RUNNING or SUCCEEDED
    task is reused, only a FAILED, CANCELED or UNKNOWN one is submitted again; a submit whose task
    id was never recorded (the worker died mid-request) is looked up in the task list, never sent
    blindly again. Each case is logged. ``resubmit=True`` asks for a new generation on purpose.

    :param dashscope_conn_id: connection of type ``dashscope``.
    :param wait_for_completion: also wait for the task and return its result dict (the sensor's).
    :param deferrable: wait in the triggerer rather than in the worker (with wait_for_completion).
    :param poll_interval: the longest gap between two status queries while the account's engine
        cannot yet predict the task's end; once it can (a task of the model has ended in this
        process), it asks just after the predicted end instead.
    :param wait_timeout: seconds to wait before failing; a task still PENDING then is canceled.
    :param validate_inputs: before submitting, fetch every input image (HEAD, then a GET capped at
        5 MB + 1 byte) and check the service's input rules (5 KB to 5 MB; JPEG, PNG or BMP by
        content; shortest side over 150 px, longest at most 4096 px; for the refiner, the coarse
        image at the person image's size). A failure fails the task at once, naming the field, and
        nothing is submitted. Default True; set False when the worker cannot reach the image URLs
        (DashScope still checks them, as a FAILED task). A retry that reuses the task its earlier
        try submitted does not fetch the images again.
    :param resubmit: submit a new task even if this task instance already paid for the same request
        (a deliberate new generation, logged). Default False: reuse it.
    """

    registry: ClassVar[SubmissionRegistry] = operator_registry()
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
        resubmit: bool = False,
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
        self.resubmit = resubmit

    def build_call(self) -> api.ApiCall:
        raise NotImplementedError

    def execute(self, context: Context) -> Any:
        with airflow_errors():
            call = self.build_call()
            hook = self._hook()
            entry = self.submit_once(context, hook, call)
        assert entry.task_id is not None
        if not self.wait_for_completion:
            return entry.task_id
        with airflow_errors():
            result = self.wait_until_done(entry.task_id, deferrable=self.deferrable, poll_interval=self.poll_interval,
                                          timeout=self.wait_timeout, model=entry.model,
                                          submitted_at=entry.submitted_at)  # fmt: skip
            return self._finished(context, result)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        return self._finished(context, self.resume_from_event(event))

    def _finished(self, context: Context, result: dict[str, Any]) -> dict[str, Any]:
        # The registry entry stays (24 h): a clear of this task after success reuses the task. It
        # also says whether the task was adopted after a lost reply.
        entry = self.registry.get(operator_scope(context, self.task_id)[0])
        adopted = entry is not None and entry.adopted and entry.task_id == result.get("task_id")
        return {**result, "adopted": adopted}

    def submit_once(self, context: Context, hook: DashScopeHook, call: api.ApiCall) -> Submission:
        """Submit, unless this task instance already paid for the same request (see the registry's rules)."""
        key, scope = operator_scope(context, self.task_id)
        fingerprint = call.fingerprint()
        model = str((call.body or {}).get("model"))
        ti = context.get("ti")
        owner = f"{scope}#{getattr(ti, 'try_number', '?')}"
        entry = self.registry.get(key)
        decision, why = decide(entry, fingerprint, resubmit=self.resubmit)
        if entry is not None and decision is Decision.CHECK:
            assert entry.task_id is not None
            # A failed status check raises (and Airflow retries) rather than risk a second charge.
            result = hook.get_task(entry.task_id)
            if after_status(result.status) is Decision.REUSE:
                self.log.info(
                    "Reusing DashScope task %s, submitted earlier by %s (now %s); not submitting again.",
                    entry.task_id, entry.owner, result.raw_status,
                )  # fmt: skip
                self._push_task_id(ti, entry)
                return entry
            why = f"the earlier task {entry.task_id} ended {result.raw_status}"
        elif entry is not None and decision is Decision.LOOKUP:
            found = hook.find_submitted(call, entry.intent_at, entry.intent_at + INTENT_WINDOW_SECONDS,
                                        claimed=self.registry.claims)  # fmt: skip
            if found is not None:
                self.registry.record_task(key, entry, found.task_id, found.request_id, adopted=True)
                self.log.warning("Adopted DashScope task %s, which the interrupted try %s had submitted.",
                                 found.task_id, entry.owner)  # fmt: skip
                self._push_task_id(ti, entry)
                return entry
            why = "the interrupted earlier submit created no task"
        if self.resubmit and entry is not None:
            self.log.warning("resubmit=True: submitting a new generation; earlier task %s stays paid for.",
                             entry.task_id)  # fmt: skip
        else:
            self.log.info("Submitting a %s task: %s.", model, why)
        if self.validate_inputs:
            # Only when about to pay: a reused task's images are not fetched again (signed URLs
            # may have expired since, and the task does not need them any more). The connection
            # is read first: a missing API key is a clearer error than four image downloads.
            _ = hook.settings
            with InputInspector(logger=self.log) as inspector:
                inspector.check_call(call)
        if entry is None:
            entry = Submission(scope=scope, fingerprint=fingerprint, model=model, owner=owner)
        else:
            entry.new_generation(fingerprint, model, owner)
        self.registry.put(key, entry)  # the intent, before anything is sent
        try:
            submitted = hook.submit(call, claimed=self.registry.claims)
        except DashScopeAPIError as exc:
            if not exc.ambiguous:  # the service answered: it created nothing
                entry.failed(exc.code or f"HTTP{exc.http_status}", str(exc), retryable=exc.retryable)
                self.registry.put(key, entry)
            raise
        self.registry.record_task(key, entry, submitted.task_id, submitted.request_id, adopted=submitted.adopted)
        self._push_task_id(ti, entry)
        SUBMITTED_IMAGES[model] += 1
        self.log.info(
            "Submitted %s task %s; images submitted by this worker so far: %s.",
            model, submitted.task_id, dict(SUBMITTED_IMAGES),
        )  # fmt: skip
        return entry

    @staticmethod
    def _push_task_id(ti: Any, entry: Submission) -> None:
        """Make the task id visible the moment it is known, before anything else can fail."""
        if ti is not None:
            ti.xcom_push(key="dashscope_task_id", value=entry.task_id)
            ti.xcom_push(key="request_id", value=entry.request_id)
            ti.xcom_push(key="adopted", value=entry.adopted)
