"""Task ids this deployment has paid for: the index a lost-reply lookup checks before adopting.

When the reply to a submit is lost, the hook looks in the account's task list for the task the
submit may have created. A task that any path of this deployment already recorded (an operator in
another worker, a catalog chunk in a triggerer) is someone else's result and must never be adopted.
Every path therefore claims each task id the moment it is known:

* in this process's memory (every trigger of a triggerer, every operator of a worker process);
* as an Airflow Variable ``aitryon_claim_<task id>`` (the whole deployment), kept as long as the
  task can be collected (24 h) and purged with the registry (``python -m
  airflow_provider_aitryon.registry purge``).

A claim that cannot be written is logged, not fatal: the submission itself is already recorded in
its scope's registry. A claim that cannot be *read* counts as claimed: adoption is then refused,
which fails one item in one sentence instead of risking someone else's image.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from airflow_provider_aitryon.registry.stores import Store, VariableStore

log = logging.getLogger(__name__)

CLAIM_PREFIX = "aitryon_claim_"


class ClaimIndex:
    """A set of task ids shared by the process and, through `store`, the deployment."""

    def __init__(self, store: Store | None = None) -> None:
        self.store: Store = store if store is not None else VariableStore(CLAIM_PREFIX)
        self.local: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, task_id: str, scope: str) -> None:
        with self._lock:
            self.local.add(task_id)
        try:
            self.store.put(task_id, {"scope": scope, "at": time.time()})
        except Exception as exc:
            log.warning("Could not record the claim on DashScope task %s (%s); recorded in its scope only.",
                        task_id, exc)  # fmt: skip

    def remember(self, task_ids: Any) -> None:
        """Task ids known to be ours already (read back from a registry): this process only."""
        with self._lock:
            self.local.update(t for t in task_ids if t)

    def is_claimed(self, task_id: str) -> bool:
        with self._lock:
            if task_id in self.local:
                return True
        try:
            return self.store.get(task_id) is not None
        except Exception as exc:
            log.warning("Could not read the claim index for task %s (%s); treating it as claimed.", task_id, exc)
            return True

    async def ais_claimed(self, task_id: str) -> bool:
        with self._lock:
            if task_id in self.local:
                return True
        return await asyncio.to_thread(self.is_claimed, task_id)

    def __contains__(self, task_id: object) -> bool:
        return isinstance(task_id, str) and self.is_claimed(task_id)


# One index per process: every path in it shares what it has claimed.
CLAIMS = ClaimIndex()
