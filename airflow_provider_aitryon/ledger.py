"""Deprecated: the submission ledger became the submission registry (`airflow_provider_aitryon.registry`).

The names below keep old imports working. The registry keeps an entry for 24 h (not only until
success), records the intent before a submit is sent, and serves the catalog backfill too.
"""

from __future__ import annotations

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
)

__all__ = ["KEY_PREFIX", "MAX_AGE_SECONDS", "Ledger", "MemoryLedger", "SubmissionRegistry", "VariableLedger"]


def VariableLedger() -> VariableStore:
    return VariableStore(KEY_PREFIX)
