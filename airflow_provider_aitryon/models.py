"""Typed, normalised views of what DashScope returns, shared by hook, trigger, operators and sensor."""

from __future__ import annotations

import enum
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class Outcome(str, enum.Enum):
    """What a task status means to a waiter: keep polling, or stop with success or failure."""

    RUNNING = "running"
    SUCCESS = "success"
    FAILURE = "failure"


class TaskStatus(str, enum.Enum):
    """The nine task states of the spec; each knows its outcome, so waiters need no branch per state."""

    PENDING = "PENDING"
    PRE_PROCESSING = "PRE-PROCESSING"
    RUNNING = "RUNNING"
    POST_PROCESSING = "POST-PROCESSING"
    SUSPENDED = "SUSPENDED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    UNKNOWN = "UNKNOWN"

    @property
    def outcome(self) -> Outcome:
        return _OUTCOMES.get(self, Outcome.RUNNING)

    @property
    def is_terminal(self) -> bool:
        return self.outcome is not Outcome.RUNNING

    @classmethod
    def parse(cls, raw: object) -> TaskStatus:
        """Map a status string to a member; a string the spec does not list counts as RUNNING.

        The vendor may add states; treating them as "still running" keeps a waiter polling until a
        known terminal state arrives, instead of failing a paid task. Each new string is logged once.
        """
        try:
            return cls(str(raw).upper())
        except ValueError:
            if raw not in _UNKNOWN_SEEN:
                _UNKNOWN_SEEN.add(str(raw))
                log.warning(
                    "DashScope returned task status %r, which the spec does not list; treating it as still running.",
                    raw,
                )
            return cls.RUNNING


_OUTCOMES = {
    TaskStatus.SUCCEEDED: Outcome.SUCCESS,
    TaskStatus.FAILED: Outcome.FAILURE,
    TaskStatus.CANCELED: Outcome.FAILURE,
    TaskStatus.UNKNOWN: Outcome.FAILURE,
}
_UNKNOWN_SEEN: set[str] = set()


@dataclass(frozen=True)
class SubmittedTask:
    """The answer to a submit: the task id to wait on and the request id for support tickets."""

    task_id: str
    status: TaskStatus
    request_id: str | None = None
    # Found in the task list after the reply to the submit was lost, not returned by the submit.
    adopted: bool = False


@dataclass(frozen=True)
class TaskResult:
    """One query of a task, normalised from any of the response shapes the docs describe."""

    task_id: str
    status: TaskStatus
    raw_status: str
    image_url: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    code: str | None = None
    message: str | None = None
    request_id: str | None = None
    submit_time: str | None = None
    scheduled_time: str | None = None
    end_time: str | None = None

    @property
    def outcome(self) -> Outcome:
        return self.status.outcome

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, used for trigger events and XCom."""
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskResult:
        values = dict(data)
        values["status"] = TaskStatus.parse(values.get("status"))
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})

    def to_xcom(self) -> dict[str, Any]:
        """What a sensor returns on success: small, JSON-safe, stable keys."""
        return {
            "task_id": self.task_id,
            "task_status": self.status.value,
            "image_url": self.image_url,
            "usage": dict(self.usage),
            "request_id": self.request_id,
            "submit_time": self.submit_time,
            "end_time": self.end_time,
        }
