"""The rules of the submission registry, written once for every path that pays for an image.

A *submission* is what one scope (a task instance of a submit operator, or one stage of one
catalog item in an output partition) paid for: the request's fingerprint, when the intent to send
it was recorded, the DashScope task id once known, and what became of it. Every submit path asks
`decide` before it sends anything and `after_status` once it has looked at the task it finds; the
table below is the whole policy:

=====================================  =========================================================
what the registry holds                what the path does
=====================================  =========================================================
nothing                                submit
``resubmit=True`` (explicit)           submit a new generation, logged
a different request (fingerprint)      submit (the old task belongs to another request)
an entry older than 24 h               submit (DashScope has forgotten the task)
a refused submit (no task id)          submit (the service created nothing)
an intent without a task id            look the task up in the task list; never a blind resend
a task id                              query it, then ``after_status``:
  PENDING / RUNNING / SUCCEEDED        reuse it (no second charge)
  FAILED / CANCELED / UNKNOWN          submit again (DashScope charges successful images only)
=====================================  =========================================================
"""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_provider_aitryon.models import Outcome, TaskStatus

# DashScope answers for a task id for 24 h, then reads UNKNOWN: an entry lives as long as its task
# can still be collected, not only until the first success.
RETENTION_SECONDS = 24 * 60 * 60
# How long a submit may have been in flight when its sender died before recording the task id: a
# lookup of an unrecorded intent covers this much time after it.
INTENT_WINDOW_SECONDS = 15 * 60


class Decision(str, enum.Enum):
    SUBMIT = "submit"  # nothing reusable: send the request
    CHECK = "check"  # a task id is known: query it, then apply after_status
    LOOKUP = "lookup"  # a submit was sent but its task id never recorded: find it in the task list
    REUSE = "reuse"  # the known task is still good


@dataclass
class Submission:
    """One scope's submission, as stored (JSON) by every registry backend.

    :param scope: what paid (human-readable: the DAG run and task, or the partition and sku).
    :param fingerprint: digest of the request (`api.ApiCall.fingerprint`); another request is
        another submission even in the same scope.
    :param model: the model the request asks for (the task-list lookup filters by it).
    :param intent_at: epoch seconds when the submit was about to be sent.
    :param task_id: the DashScope task id, the moment it is known.
    :param adopted: the task id was found in the task list after a lost reply, not returned by it.
    :param owner: who recorded it (``dag/run/task[map]#try`` or the partition's lease holder).
    :param status: the last status seen (terminal ones are recorded by the catalog path).
    :param superseded: task ids of earlier generations in this scope (failed, expired, or replaced
        by ``resubmit=True``): the audit trail of what this scope has paid for.
    """

    scope: str
    fingerprint: str
    model: str
    intent_at: float = field(default_factory=time.time)
    task_id: str | None = None
    request_id: str | None = None
    submitted_at: float | None = None
    adopted: bool = False
    owner: str | None = None
    status: str | None = None
    image_url: str | None = None
    code: str | None = None
    message: str | None = None
    saved_uri: str | None = None
    saved_sha256: str | None = None
    # A failure that is not the task's own status: the submit was refused, or saving the image
    # failed. ``{"code", "message", "retryable"}``.
    failure: dict[str, Any] | None = None
    superseded: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, [])}

    @classmethod
    def from_dict(cls, data: Any) -> Submission | None:
        """An entry read back from a store; None for anything that is not one (a foreign value)."""
        if not isinstance(data, dict) or not data.get("fingerprint") or not data.get("scope"):
            return None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            entry = cls(**known)
        except TypeError:
            return None
        entry.superseded = list(entry.superseded or [])
        return entry

    def recorded(self, task_id: str, request_id: str | None, *, adopted: bool = False) -> None:
        """The task id is known: from now on a rerun checks this task instead of submitting."""
        self.task_id, self.request_id, self.adopted = task_id, request_id, adopted
        self.submitted_at = time.time()
        self.status = TaskStatus.PENDING.value
        self.image_url = self.code = self.message = self.saved_uri = self.saved_sha256 = None
        self.failure = None

    def new_generation(self, fingerprint: str, model: str, owner: str | None) -> None:
        """A new submit replaces this one: keep the old task id in the audit trail."""
        if self.task_id:
            self.superseded = [*self.superseded, self.task_id][-20:]
        self.fingerprint, self.model, self.owner = fingerprint, model, owner
        self.intent_at = time.time()
        self.task_id = self.request_id = self.submitted_at = None
        self.adopted = False
        self.status = self.image_url = self.code = self.message = self.saved_uri = self.saved_sha256 = None
        self.failure = None

    def failed(self, code: str, message: str, *, retryable: bool) -> None:
        self.failure = {"code": code, "message": message, "retryable": retryable}

    @property
    def age(self) -> float:
        return time.time() - float(self.submitted_at or self.intent_at or 0)

    @property
    def expired(self) -> bool:
        return self.age >= RETENTION_SECONDS


def decide(entry: Submission | None, fingerprint: str, *, resubmit: bool = False) -> tuple[Decision, str]:
    """What to do before sending a request, and why (the reason is logged as is)."""
    if entry is None:
        return Decision.SUBMIT, "no earlier submission in this scope"
    if resubmit:
        return Decision.SUBMIT, "resubmit=True asks for a new generation"
    if entry.fingerprint != fingerprint:
        return Decision.SUBMIT, "the request changed since the earlier submission"
    if entry.expired:
        return Decision.SUBMIT, "the earlier submission is older than 24 h, so DashScope no longer has it"
    if not entry.task_id and entry.failure:
        return Decision.SUBMIT, f"the earlier submit was refused ({entry.failure.get('code')})"
    if not entry.task_id:
        return Decision.LOOKUP, "an earlier submit was sent but its task id was never recorded"
    return Decision.CHECK, f"task {entry.task_id} was submitted earlier"


def after_status(status: TaskStatus) -> Decision:
    """A known task, once queried: reuse it unless it ended without an image."""
    return Decision.SUBMIT if status.outcome is Outcome.FAILURE else Decision.REUSE
