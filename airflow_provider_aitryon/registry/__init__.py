"""The submission registry: one record of what was paid for, one set of rules, for every path.

Every path that pays for a DashScope image — the submit operators (plain and submit-and-wait) and
the catalog backfill — records its submission here *before* sending it (the intent) and again the
moment its task id is known, and asks `rules.decide` before it sends anything. The entry outlives
success: it is kept while DashScope can still hand the task back (24 h), so a clear, a rerun or a
retry finds the task and reuses it instead of paying again.

Where entries live (`stores`):

* submit operators: Airflow Variables ``aitryon_submission_<digest of dag, run, task, map index>``;
* catalog backfill: ``<output>/registry/items/<stage>-<sku file name>.json``, next to the images;
* claims (every path): Airflow Variables ``aitryon_claim_<task id>`` (`claims`);
* the partition lease of a backfill: ``<output>/registry/lease/`` (`lease`).

Inspect and purge them with ``python -m airflow_provider_aitryon.registry`` (``list`` / ``purge``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from airflow_provider_aitryon.registry.claims import CLAIMS, ClaimIndex
from airflow_provider_aitryon.registry.rules import (
    INTENT_WINDOW_SECONDS,
    RETENTION_SECONDS,
    Decision,
    Submission,
    after_status,
    decide,
)
from airflow_provider_aitryon.registry.stores import (
    FileStore,
    MemoryStore,
    RegistryUnavailable,
    Store,
    VariableStore,
)

log = logging.getLogger(__name__)

OPERATOR_PREFIX = "aitryon_submission_"

__all__ = [
    "CLAIMS",
    "INTENT_WINDOW_SECONDS",
    "OPERATOR_PREFIX",
    "RETENTION_SECONDS",
    "ClaimIndex",
    "Decision",
    "FileStore",
    "MemoryStore",
    "RegistryUnavailable",
    "Store",
    "Submission",
    "SubmissionRegistry",
    "VariableStore",
    "after_status",
    "decide",
    "operator_scope",
    "partition_registry",
    "sku_file_stem",
]


class SubmissionRegistry:
    """Submissions by key in one store; every task id recorded is also claimed for the deployment.

    :param store: where the entries live.
    :param claims: the claim index a lost-reply lookup checks (default: the process's, backed by
        Airflow Variables).
    """

    def __init__(self, store: Store, claims: ClaimIndex | None = None) -> None:
        self.store = store
        self.claims = claims if claims is not None else CLAIMS

    @property
    def where(self) -> str:
        return self.store.where

    def get(self, key: str) -> Submission | None:
        entry = Submission.from_dict(self.store.get(key))
        if entry is not None and entry.task_id:
            self.claims.remember([entry.task_id, *entry.superseded])
        return entry

    def put(self, key: str, entry: Submission) -> None:
        self.store.put(key, entry.to_dict())

    def record_task(self, key: str, entry: Submission, task_id: str, request_id: str | None, *, adopted: bool) -> None:
        """The task id is known: write it down first, then claim it for the deployment."""
        entry.recorded(task_id, request_id, adopted=adopted)
        self.put(key, entry)
        self.claims.claim(task_id, entry.scope)

    def entries(self) -> dict[str, Submission]:
        """Every entry of the store; the task ids they record are remembered as this deployment's."""
        out = {}
        for key in self.store.list_keys():
            entry = Submission.from_dict(self.store.get(key))
            if entry is not None:
                out[key] = entry
                if entry.task_id:
                    self.claims.remember([entry.task_id, *entry.superseded])
        return out

    def purge_expired(self) -> list[str]:
        """Delete the entries DashScope can no longer hand back (older than 24 h); return their keys."""
        gone = [key for key, entry in self.entries().items() if entry.expired]
        for key in gone:
            self.store.delete(key)
        return gone


def operator_scope(context: Mapping[str, Any], task_id: str) -> tuple[str, str]:
    """The registry key and readable scope of a task instance: all its tries and clears share them."""
    ti = context.get("ti")
    parts = [
        str(getattr(ti, "dag_id", "")),
        str(getattr(ti, "run_id", "")),
        str(getattr(ti, "task_id", task_id)),
        str(getattr(ti, "map_index", -1)),
    ]
    key = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]
    scope = f"{parts[0]}/{parts[1]}/{parts[2]}" + (f"[{parts[3]}]" if parts[3] not in ("-1", "None") else "")
    return key, scope


def operator_registry() -> SubmissionRegistry:
    return SubmissionRegistry(VariableStore(OPERATOR_PREFIX))


def partition_registry(output: str, *, conn_id: str | None = None) -> SubmissionRegistry:
    """The registry of one catalog output partition, in ``<output>/registry/items``."""
    return SubmissionRegistry(FileStore(f"{output.rstrip('/')}/registry/items", conn_id=conn_id))


def sku_file_stem(sku: str) -> str:
    """A file name for a sku that no other sku shares: a readable part and a digest of the whole sku.

    ``a/b``, ``a b``, ``a:b``, ``a\\b`` and ``a_b`` read alike once made safe for every file system, and two
    long skus can share their first 150 characters: the digest tells them apart, so no paid image
    overwrites another. The manifest maps each sku to its file.
    """
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in sku)[:60].strip(".") or "item"
    return f"{readable}-{hashlib.sha256(sku.encode()).hexdigest()[:12]}"


def item_key(sku: str, stage: str) -> str:
    """The registry key of one stage of one catalog item."""
    return f"{stage}-{sku_file_stem(sku)}"
