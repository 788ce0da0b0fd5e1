"""What every DashScope submit operator shares: check, submit once, optionally wait.

Subclasses only say how to build their request (`build_call`). Submitting goes through the
submission registry so a retry, a clear or a rerun never pays twice; waiting reuses the sensor's
trigger and outcome table.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_provider_aitryon import api, lineage
from airflow_provider_aitryon.connection import DEFAULT_CONN_ID
from airflow_provider_aitryon.errors import DashScopeAPIError
from airflow_provider_aitryon.failures import airflow_errors
from airflow_provider_aitryon.hooks.dashscope import DashScopeHook
from airflow_provider_aitryon.links import TryOnResultLink
from airflow_provider_aitryon.operators.waiting import DashScopeWaitMixin, resolve_deferrable
from airflow_provider_aitryon.preflight import InputInspector, input_policy
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
from airflow_provider_aitryon.sources import DEFAULT_EXPIRES, DEFAULT_OSS_CONN_ID, Sendable, sendable

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

class DashScopeSubmitOperator(DashScopeWaitMixin, BaseOperator):
    """Submit one DashScope task; return its task id, or with ``wait_for_completion`` its result.

    A retry, a clear or a rerun of this task instance first looks up what an earlier try paid for
    (the submission registry, kept 24 h): for the same request, a PENDING, RUNNING or SUCCEEDED
    task is reused, only a FAILED, CANCELED or UNKNOWN one is submitted again; a submit whose task
    id was never recorded (the worker died mid-request) is looked up in the task list, never sent
    blindly again. Each case is logged. ``resubmit=True`` asks for a new generation on purpose.

    :param dashscope_conn_id: connection of type ``dashscope``.
    :param wait_for_completion: also wait for the task and return its result dict (the sensor's).
    :param deferrable: wait in the triggerer rather than in the worker (with wait_for_completion);
        default from ``[operators] default_deferrable`` when the deployment sets it, else True.
    :param poll_interval: the longest gap between two status queries while the account's engine
        cannot yet predict the task's end; once it can (a task of the model has ended in this
        process), it asks just after the predicted end instead.
    :param wait_timeout: seconds to wait before failing; a task still PENDING then is canceled.
    :param cancel_on_timeout: cancel the task when the wait times out while it is still PENDING.
    :param cancel_on_kill: cancel the task when a user kills this Airflow task while it waits (in the
        worker or deferred) and the DashScope task is still PENDING.
    :param validate_inputs: before submitting, fetch every input image (HEAD, then a GET capped at
        5 MB + 1 byte) and check the service's input rules (5 KB to 5 MB; JPEG, PNG or BMP by
        content; shortest side over 150 px, longest at most 4096 px; for the refiner, the coarse
        image at the person image's size). A failure fails the task at once, naming the field, and
        nothing is submitted. Default True; set False when the worker cannot reach the image URLs
        (DashScope still checks them, as a FAILED task). A retry that reuses the task its earlier
        try submitted does not fetch the images again. Only public addresses are fetched, and the
        connection's own base URL (the emulator); the connection extra ``allow_private_inputs``
        allows hosts on your network; link-local addresses (cloud metadata) never.
    :param resubmit: submit a new task even if this task instance already paid for the same request
        (a deliberate new generation, logged). Default False: reuse it.
    :param oss_conn_id: the Alibaba Cloud ``oss`` connection that signs ``oss://bucket/key`` inputs
        (needs the ``oss`` extra). Each is signed just before pre-flight and the submit; only the
        ``oss://`` URI is ever logged or stored.
    :param oss_url_expiry: seconds a signed input URL stays valid: the queue wait, the run and the
        retries must fit in it (default 6 hours; at most 7 days).
    :param upload_local_files: accept a local path or ``file://`` input and upload it to DashScope's
        temporary storage (valid 48 hours, for development only; keep production images in OSS).
    """

    registry: ClassVar[SubmissionRegistry] = operator_registry()
    operator_extra_links = (TryOnResultLink(),)  # filled when wait_for_completion returns a result

    def __init__(
        self,
        *,
        dashscope_conn_id: str = DEFAULT_CONN_ID,
        wait_for_completion: bool = False,
        deferrable: bool | None = None,
        poll_interval: float = 5.0,
        wait_timeout: float = 60 * 60,
        cancel_on_timeout: bool = True,
        cancel_on_kill: bool = True,
        validate_inputs: bool = True,
        resubmit: bool = False,
        oss_conn_id: str = DEFAULT_OSS_CONN_ID,
        oss_url_expiry: float = DEFAULT_EXPIRES.total_seconds(),
        upload_local_files: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dashscope_conn_id = dashscope_conn_id
        self.wait_for_completion = wait_for_completion
        self.deferrable = resolve_deferrable(deferrable)
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.cancel_on_timeout = cancel_on_timeout
        self.cancel_on_kill = cancel_on_kill
        self.validate_inputs = validate_inputs
        self.resubmit = resubmit
        self.oss_conn_id = oss_conn_id
        self.oss_url_expiry = oss_url_expiry
        self.upload_local_files = upload_local_files

    def build_call(self) -> api.ApiCall:
        raise NotImplementedError

    def execute(self, context: Context) -> Any:
        with airflow_errors():
            call = self.build_call()
            hook = self._hook()
            entry = self.submit_once(context, hook, call)
        self._remember_for_lineage(entry)
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
        self._remember_for_lineage(entry, result)
        return {**result, "adopted": adopted}

    # ------------------------------------------------------------------ OpenLineage

    def get_openlineage_facets_on_start(self) -> OperatorLineage | None:
        """OpenLineage: the input images (person, garments, coarse image) as input datasets.

        Named by `airflow_provider_aitryon.lineage`: ``https://host`` and the path, never the query
        string of a signed URL. None when the openlineage provider is not installed.
        """
        return lineage.submit_lineage(self._lineage_call())

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage | None:
        """OpenLineage: the input images, the result image URL (with ``wait_for_completion``) as
        output, and the DashScope task as run facets (``externalQuery`` and ``dashscopeTask``: task
        id, model, request id, status; never the API key). None without the openlineage provider.
        """
        call = self._lineage_call()
        entry: Submission | None = getattr(self, "_lineage_entry", None)
        result: dict[str, Any] = getattr(self, "_lineage_result", None) or {}
        task_id = result.get("task_id") or (entry.task_id if entry is not None else None)
        task = None
        if task_id:
            model = (call.body or {}).get("model") if call is not None else None
            task = lineage.DashScopeTask(
                task_id=str(task_id),
                model=str(model or (entry.model if entry is not None else "")) or None,
                request_id=(entry.request_id if entry is not None else None) or result.get("request_id"),
                # Without a result, a wait that failed knows no status; a plain submit's is its entry's.
                status=result.get("task_status")
                or (entry.status if entry is not None and not self.wait_for_completion else None),
                adopted=bool(entry is not None and entry.adopted and entry.task_id == task_id),
                service_url=self._lineage_service_url(),
            )
        return lineage.submit_lineage(call, task=task, result_url=result.get("image_url"))

    def _remember_for_lineage(self, entry: Submission | None, result: dict[str, Any] | None = None) -> None:
        """Keep what this try submitted (and its result) for the OpenLineage facets on completion."""
        if entry is not None:
            self._lineage_entry = entry
        if result is not None:
            self._lineage_result = result

    def _lineage_call(self) -> api.ApiCall | None:
        try:
            return self.build_call()
        except Exception:  # a bad argument fails execute, not the lineage of the failure
            return None

    def _lineage_service_url(self) -> str | None:
        try:
            return self._hook().settings.base_url
        except Exception:
            return None

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
        # The call as sent: oss:// inputs signed, local files uploaded. Only now, when about to
        # pay: the fingerprint above is the unsigned call's, so a re-signed URL is the same request.
        sent = self._sendable(hook, call)
        if self.validate_inputs:
            # A reused task's images are not fetched again (signed URLs may have expired since, and
            # the task does not need them any more). The connection is read first: a missing API
            # key is a clearer error than four image downloads.
            settings = hook.settings
            with InputInspector(logger=self.log, policy=input_policy(settings)) as inspector:
                inspector.check_call(sent.call, shown=sent.shown, get_only=sent.get_only, skip=sent.checked)
        if entry is None:
            entry = Submission(scope=scope, fingerprint=fingerprint, model=model, owner=owner)
        else:
            entry.new_generation(fingerprint, model, owner)
        self.registry.put(key, entry)  # the intent, before anything is sent
        try:
            submitted = hook.submit(sent.call, claimed=self.registry.claims)
        except DashScopeAPIError as exc:
            if not exc.ambiguous:  # the service answered: it created nothing
                entry.failed(exc.code or f"HTTP{exc.http_status}", str(exc), retryable=exc.retryable)
                self.registry.put(key, entry)
            raise
        self.registry.record_task(key, entry, submitted.task_id, submitted.request_id, adopted=submitted.adopted)
        self._push_task_id(ti, entry)
        # What a run costs is reported per run (the pipeline's report_cost), not per worker
        # process: Airflow 3 runs every task in a process of its own.
        self.log.info("Submitted %s task %s; it is charged once it succeeds.", model, submitted.task_id)
        return entry

    def _sendable(self, hook: DashScopeHook, call: api.ApiCall) -> Sendable:
        uploader = hook.upload_local_image if self.upload_local_files else None
        return sendable(call, oss_conn_id=self.oss_conn_id, expires=timedelta(seconds=self.oss_url_expiry),
                        uploader=uploader)  # fmt: skip

    @staticmethod
    def _push_task_id(ti: Any, entry: Submission) -> None:
        """Make the task id visible the moment it is known, before anything else can fail."""
        if ti is not None:
            ti.xcom_push(key="dashscope_task_id", value=entry.task_id)
            ti.xcom_push(key="request_id", value=entry.request_id)
            ti.xcom_push(key="adopted", value=entry.adopted)
