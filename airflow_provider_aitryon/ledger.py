"""The submission ledger: remembers which DashScope task a task instance already paid for.

Airflow 3 deletes a task instance's XComs when a new try starts, so an XCom cannot tell a retry
that the previous try already submitted (and will be charged for) a task. The ledger keeps that
fact in an Airflow Variable keyed by dag id, run id, task id and map index, written the moment the
task id is known and removed once the task instance has finished well. A retry finds it and reuses
the task instead of paying twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

log = logging.getLogger(__name__)

KEY_PREFIX = "aitryon_submission_"
# DashScope forgets task ids after 24 h: an older entry cannot be reused, whatever it says.
MAX_AGE_SECONDS = 24 * 60 * 60


class Ledger(Protocol):
    def lookup(self, key: str) -> dict[str, Any] | None: ...
    def record(self, key: str, entry: Mapping[str, Any]) -> None: ...
    def forget(self, key: str) -> None: ...


def ledger_key(context: Mapping[str, Any], task_id: str) -> str:
    """One key per task instance (all tries share it); hashed because run ids hold any character."""
    ti = context.get("ti")
    parts = [
        str(getattr(ti, "dag_id", "")),
        str(getattr(ti, "run_id", "")),
        str(getattr(ti, "task_id", task_id)),
        str(getattr(ti, "map_index", -1)),
    ]
    return KEY_PREFIX + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


def new_entry(task_id: str, request_id: str | None, fingerprint: str, try_number: int | None) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "request_id": request_id,
        "fingerprint": fingerprint,
        "submitted_at": time.time(),
        "try_number": try_number,
    }


def usable(entry: Mapping[str, Any] | None, fingerprint: str) -> bool:
    """An entry is reusable only for the same request body and while DashScope still knows the task."""
    return bool(
        entry
        and entry.get("task_id")
        and entry.get("fingerprint") == fingerprint
        and time.time() - float(entry.get("submitted_at") or 0) < MAX_AGE_SECONDS
    )


class VariableLedger:
    """The ledger in Airflow Variables, reachable from every worker through the task SDK.

    A ledger that cannot be reached never fails the task: it logs that a retry may submit again.
    """

    def lookup(self, key: str) -> dict[str, Any] | None:
        from airflow.sdk import Variable

        try:
            raw = Variable.get(key, default=None)
        except Exception as exc:
            log.warning("Could not read the submission ledger (%s); a retry may submit again.", exc)
            return None
        if not raw:
            return None
        try:
            entry = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            return None
        return entry if isinstance(entry, dict) else None

    def record(self, key: str, entry: Mapping[str, Any]) -> None:
        from airflow.sdk import Variable

        try:
            Variable.set(
                key, json.dumps(dict(entry)), description="DashScope task already submitted by this task instance"
            )
        except Exception as exc:
            log.warning("Could not write the submission ledger (%s); a retry may submit again.", exc)

    def forget(self, key: str) -> None:
        from airflow.sdk import Variable

        try:
            Variable.delete(key)
        except Exception as exc:
            log.info("Could not remove submission ledger entry %s (%s); it is harmless.", key, exc)


class MemoryLedger:
    """The ledger in a dict, for code that runs outside Airflow (scripts, benchmarks, tests)."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}

    def lookup(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def record(self, key: str, entry: Mapping[str, Any]) -> None:
        self.entries[key] = dict(entry)

    def forget(self, key: str) -> None:
        self.entries.pop(key, None)
