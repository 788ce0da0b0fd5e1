"""The catalog backfill's operators.

`RefineCatalogChunkOperator`: one mapped task instance carries a chunk of a catalog backfill. The
worker only hands the chunk to a DashScopeBatchTrigger and, when it is done, writes the chunk's
manifest rows: the waiting, pacing, polling and saving happen in the triggerer, so a chunk of
hundreds of items holds a worker slot for about a second.

`FinalizeCatalogOperator`: the run's last task: the manifest, the cost charged, the summary and the
review gallery (an extra link opens it; Asset outlets carry the cost in their event's extra).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_aitryon import api, lineage
from airflow_provider_aitryon.catalog import parts_dir, read_chunk, rows_from_registry, write_rows
from airflow_provider_aitryon.connection import DEFAULT_CONN_ID
from airflow_provider_aitryon.failures import AirflowException, AirflowFailException, airflow_errors
from airflow_provider_aitryon.links import ReviewGalleryLink, remember_result
from airflow_provider_aitryon.operators.report import emit_asset_extra, gallery_fetcher
from airflow_provider_aitryon.registry import partition_registry
from airflow_provider_aitryon.sources import DEFAULT_EXPIRES, DEFAULT_OSS_CONN_ID
from airflow_provider_aitryon.triggers.catalog import CatalogChunkTrigger as DashScopeBatchTrigger

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context


class RefineCatalogChunkOperator(BaseOperator):
    """Refine (and, where the catalog has no coarse image, first try on) one chunk of a catalog.

    :param chunk: URI of the chunk's JSONL file, as written by ``catalog.plan_chunks`` (templated).
    :param output_dir: the backfill's output directory or URI (templated).
    :param dashscope_conn_id: connection; all chunks of one connection in a triggerer share its
        rate budget.
    :param coarse_model: model for items without ``coarse_image_url`` (templated).
    :param expected_latency: first guess of a task's run time in seconds (then learned).
    :param max_outstanding: tasks submitted and not ended, per account and triggerer.
    :param submit_rate: submits per second, the account's limit (10 by default).
    :param query_rate: task queries per second, the account's limit (20 by default).
    :param max_running: tasks the account runs at once (5 by default).
    :param chunk_timeout: seconds the trigger may take before the task fails (and retries, resuming).
    :param progress_interval: seconds between two progress lines in the triggerer's log.
    :param storage_conn_id: Airflow connection of the object store that holds the chunk and the
        output, e.g. ``aws_default``; None for local paths or the scheme's default connection.
    :param oss_conn_id: the Alibaba Cloud ``oss`` connection that signs ``oss://`` images of the
        catalog (needs the ``oss`` extra); read once per chunk, only when an item has one.
    :param oss_url_expiry: seconds a signed image URL stays valid (default 6 hours).
    """

    template_fields: Sequence[str] = ("chunk", "output_dir", "dashscope_conn_id", "coarse_model", "expected_latency")
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
        oss_conn_id: str = DEFAULT_OSS_CONN_ID,
        oss_url_expiry: float = DEFAULT_EXPIRES.total_seconds(),
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
        self.oss_conn_id = oss_conn_id
        self.oss_url_expiry = oss_url_expiry

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
            oss_conn_id=self.oss_conn_id,
            oss_url_expiry=self.oss_url_expiry,
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
        self._lineage_counts = counts  # for get_openlineage_facets_on_complete
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

    def get_openlineage_facets_on_start(self) -> OperatorLineage | None:
        """OpenLineage, per partition (never per item): ``<output>/chunks`` in; ``<output>/images`` and
        ``<output>/manifest.d`` out. None when the openlineage provider is not installed."""
        return lineage.chunk_lineage(self.output_dir, self.chunk_key)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage | None:
        """As on start, with the images saved and manifest rows written as output statistics and the
        chunk's counts as the ``dashscopeCatalogChunk`` run facet."""
        return lineage.chunk_lineage(self.output_dir, self.chunk_key, getattr(self, "_lineage_counts", None))


def _lease_holder(context: Context) -> str | None:
    """The run that takes the partition's lease: ``<dag_id>/<run_id>``, shared by all its chunks."""
    ti = context.get("ti")
    if ti is None or not getattr(ti, "run_id", None):
        return None
    return f"{ti.dag_id}/{ti.run_id}"


# What a partition's asset event says: the outcome, the cost and where to look.
ASSET_KEYS = ("status", "items", "succeeded", "failed", "undone", "charged", "manifest", "summary", "report")


class FinalizeCatalogOperator(BaseOperator):
    """Close a partition's run: merge the manifest, give the lease back, price and report the run.

    Writes ``<output>/manifest.jsonl``, the manifest's summary ``<output>/summary.json`` (the
    estimate ``plan`` made, the approval, the images this run was charged for by model and their
    cost at the price tier, the counts) and the review gallery ``<output>/report.html`` (pages of at
    most 500 items). Returns the summary (XCom); each Asset outlet's event carries the cost and the
    gallery in its ``extra``; the "Review gallery" extra link opens the gallery.

    Fails when items are left undone (clear the failed chunks or rerun the partition), unless a
    person rejected the spend: then nothing was submitted and the run ends quietly. Fails too when
    ``plan`` refused the run for ``max_cost``, so the run ends failed.

    :param catalog: the partition's catalog JSONL path or URI (templated).
    :param output_dir: the partition's output folder or URI (templated).
    :param approval_task_id: the task whose return value is the spend approval
        (`SpendApprovalOperator`); None without an approval step. Read at run time, so a run whose
        plan failed finalizes without one.
    :param dashscope_conn_id: connection whose address rules (``allow_private_inputs``, its own
        host) the gallery's image downloads follow.
    :param storage_conn_id: connection of the object store holding catalog and output.
    :param oss_conn_id: the ``oss`` connection that reads ``oss://`` images for the gallery.
    :param review: write the review gallery (default True).
    :param page_size: items per gallery page (at most 500).
    """

    template_fields: Sequence[str] = ("catalog", "output_dir")
    operator_extra_links = (ReviewGalleryLink(),)
    ui_color = "#e8f5e9"

    def __init__(
        self,
        *,
        catalog: Any,
        output_dir: Any,
        approval_task_id: str | None = None,
        dashscope_conn_id: str = DEFAULT_CONN_ID,
        storage_conn_id: str | None = None,
        oss_conn_id: str = DEFAULT_OSS_CONN_ID,
        review: bool = True,
        page_size: int = 500,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.catalog = catalog
        self.output_dir = output_dir
        self.approval_task_id = approval_task_id
        self.dashscope_conn_id = dashscope_conn_id
        self.storage_conn_id = storage_conn_id
        self.oss_conn_id = oss_conn_id
        self.review = review
        self.page_size = page_size

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_aitryon.catalog.finalize import OVER_LIMIT, REJECTED, finalize_partition

        approval = None
        if self.approval_task_id and (ti := context.get("ti")) is not None:
            pulled = ti.xcom_pull(task_ids=self.approval_task_id)
            approval = pulled if isinstance(pulled, dict) else None
        with airflow_errors():
            summary = finalize_partition(
                str(self.catalog),
                str(self.output_dir),
                holder=_lease_holder(context),
                approval=approval,
                conn_id=self.storage_conn_id,
                fetch=gallery_fetcher(self.dashscope_conn_id, self.storage_conn_id, self.oss_conn_id, self.log)
                if self.review
                else None,
                review=self.review,
                page_size=self.page_size,
            )
        if summary["status"] == OVER_LIMIT:
            # plan refused the spend before anything was paid; fail too, so the run ends failed
            # (finalize is its leaf) with the same sentence.
            raise AirflowFailException(f"Nothing was refined: {summary.get('reason') or 'the run was over max_cost'}")
        remember_result(self, summary)
        charged = summary["charged"]
        self.log.info(
            "Partition %s: %s succeeded, %s failed, %s undone of %s items; this run was charged %s %s for %s; "
            "review: %s",
            self.output_dir, summary["succeeded"], summary["failed"], summary["undone"], summary["items"],
            charged["currency"], charged["total"], charged["images"] or "nothing", summary.get("report"),
        )  # fmt: skip
        emit_asset_extra(context, self.outlets, summary, ASSET_KEYS)
        if summary["undone"] and summary["status"] != REJECTED:
            first = ", ".join(summary["undone_skus"][:5])
            raise AirflowException(
                f"{summary['undone']} catalog items are left undone (first: {first}); clear the failed refine_chunk "
                "tasks or rerun the partition to finish them."
            )
        return summary
