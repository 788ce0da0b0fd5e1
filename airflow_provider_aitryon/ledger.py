"""Deprecated: the submission ledger became the submission registry (`airflow_provider_aitryon.registry`).

The names below keep old imports working. The registry keeps an entry for 24 h (not only until
success), records the intent before a submit is sent, and serves the catalog backfill too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_provider_aitryon.registry import (
    OPERATOR_PREFIX as KEY_PREFIX,
)
from airflow_provider_aitryon.registry import (
    RETENTION_SECONDS as MAX_AGE_SECONDS,
)
from airflow_provider_aitryon.registry import (
    MemoryStore as MemoryLedger,
)
from airflow_provider_aitryon.registry import (
    Store as Ledger,
)
from airflow_provider_aitryon.registry import (
    SubmissionRegistry,
    VariableStore,
    operator_scope,
)

__all__ = [
    "KEY_PREFIX",
    "MAX_AGE_SECONDS",
    "Ledger",
    "MemoryLedger",
    "SubmissionRegistry",
    "VariableLedger",
    "ledger_key",
]


def VariableLedger() -> VariableStore:
    return VariableStore(KEY_PREFIX)


def ledger_key(context: Mapping[str, Any], task_id: str) -> str:
    """The Variable name of a task instance's entry (the registry keeps the ledger's names)."""
    return KEY_PREFIX + operator_scope(context, task_id)[0]
