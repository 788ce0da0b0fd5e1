"""RefineCatalogChunkOperator: one mapped task instance carries a chunk of a catalog backfill.

The worker only hands the chunk to a DashScopeBatchTrigger and, when it is done, writes the
chunk's manifest rows: the waiting, pacing, polling and saving happen in the triggerer, so a
chunk of hundreds of items holds a worker slot for about a second.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_aitryon import api
from airflow_provider_aitryon.catalog import parts_dir, read_chunk, rows_from_registry, write_rows
from airflow_provider_aitryon.connection import DEFAULT_CONN_ID
from airflow_provider_aitryon.failures import AirflowException, AirflowFailException
from airflow_provider_aitryon.registry import partition_registry
from airflow_provider_aitryon.triggers.catalog import CatalogChunkTrigger as DashScopeBatchTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class RefineCatalogChunkOperator(BaseOperator):
    """Refine (and, where the catalog has no coarse image, first try on) one chunk of a catalog.

    :param chunk: URI of the chunk's JSONL file, as written by ``catalog.plan_chunks`` (templated).
    :param output_dir: the backfill's output directory or URI (templated).
    :param dashscope_conn_id: connection; all chunks of one connection in a triggerer share its
        rate budget.
    :param coarse_model: model for items without ``coarse_image_url``.
    :param expected_latency: first guess of a task's run time in seconds (then learned).
    :param max_outstanding: tasks submitted and not ended, per account and triggerer.
    :param submit_rate, query_rate, max_running: the account's limits (10/s, 20/s and 5 by default).
    :param chunk_timeout: seconds the trigger may take before the task fails (and retries, resuming).
    """

    template_fields: Sequence[str] = ("chunk", "output_dir", "dashscope_conn_id", "expected_latency")
    ui_color = "#ede7f6"

    def __init__(
        self,
        *,
        chunk: Any,
        output_dir: Any,
        dashscope_conn_id: str = DEFAULT_CONN_ID,
        coarse_model: str = api.MODEL_TRYON,
        expected_latency: float = 10.0,
        max_outstanding: int = 20,
        submit_rate: float = 10.0,
        query_rate: float = 20.0,
        max_running: int = 5,
        chunk_timeout: float = 6 * 60 * 60,
        progress_interval: float = 30.0,
        storage_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.chunk = chunk
        self.output_dir = output_dir
        self.dashscope_conn_id = dashscope_conn_id
        self.coarse_model = coarse_model
        self.expected_latency = expected_latency
        self.max_outstanding = max_outstanding
        self.submit_rate = submit_rate
        self.query_rate = query_rate
        self.max_running = max_running
        self.chunk_timeout = chunk_timeout
        self.progress_interval = progress_interval
        self.storage_conn_id = storage_conn_id

    @property
    def chunk_key(self) -> str:
        return PurePosixPath(str(self.chunk)).stem

    def execute(self, context: Context) -> None:
        self.defer(trigger=self.make_trigger(_lease_holder(context)), method_name="execute_complete")

    def make_trigger(self, lease_holder: str | None = None) -> DashScopeBatchTrigger:
        return DashScopeBatchTrigger(
            chunk_uri=str(self.chunk),
            output=str(self.output_dir),
            dashscope_conn_id=self.dashscope_conn_id,
            coarse_model=self.coarse_model,
            expected_latency=float(self.expected_latency),
            max_outstanding=self.max_outstanding,
            submit_rate=self.submit_rate,
            query_rate=self.query_rate,
            max_running=self.max_running,
            end_time=time.time() + self.chunk_timeout,
            progress_interval=self.progress_interval,
            storage_conn_id=self.storage_conn_id,
            lease_holder=lease_holder,
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        items = read_chunk(str(self.chunk), conn_id=self.storage_conn_id)
        registry = partition_registry(str(self.output_dir), conn_id=self.storage_conn_id)
        rows, undone = rows_from_registry(items, registry, coarse_model=self.coarse_model)
        write_rows(f"{parts_dir(str(self.output_dir))}/{self.chunk_key}.jsonl", rows, conn_id=self.storage_conn_id)
        counts = {
            "items": len(items),
            "succeeded": sum(r.status == "succeeded" for r in rows),
            "failed": sum(r.status == "failed" for r in rows),
            "adopted": sum(r.adopted for r in rows),
            "undone": len(undone),
            **{k: v for k, v in (event.get("counts") or {}).items() if k in ("submits", "queries")},
        }
        self.log.info("Chunk %s: %s", self.chunk_key, counts)
        if event.get("status") == "error":
            raise AirflowFailException(f"Chunk {self.chunk_key} stopped: {event.get('message')}")
        if undone:
            # A retry re-defers; the new trigger replays the registry and resumes, submitting nothing twice.
            raise AirflowException(
                f"Chunk {self.chunk_key}: {len(undone)} items are not finished ({event.get('message') or 'unknown'}); "
                "a retry resumes them from the partition's registry."
            )
        return counts


def _lease_holder(context: Context) -> str | None:
    """The run that takes the partition's lease: ``<dag_id>/<run_id>``, shared by all its chunks."""
    ti = context.get("ti")
    if ti is None or not getattr(ti, "run_id", None):
        return None
    return f"{ti.dag_id}/{ti.run_id}"
