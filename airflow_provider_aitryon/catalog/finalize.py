"""The end of a partition's run: the manifest merged, the cost charged, the summary and the review gallery.

``finalize`` of the backfill DAG (`operators.batch.FinalizeCatalogOperator`) calls
`finalize_partition` once the chunks are done (or skipped, when a person rejected the spend).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any

from airflow_provider_aitryon import api, lineage, spend
from airflow_provider_aitryon.catalog import (
    STAGE_COARSE,
    SUCCEEDED,
    CatalogItem,
    manifest_uri,
    merge_manifest,
    partition_lease,
    read_catalog,
    read_summary,
    summary_uri,
    write_summary,
)
from airflow_provider_aitryon.errors import DashScopeConfigError
from airflow_provider_aitryon.gallery import GalleryItem, write_gallery
from airflow_provider_aitryon.registry import item_key, partition_registry

log = logging.getLogger(__name__)

UNDONE = "undone"
# The run's outcome, as the summary's ``status`` says it.
FINISHED, REJECTED, UNFINISHED = "finished", "rejected", "unfinished"
OVER_LIMIT = "over_limit"  # written by plan: the estimate was above max_cost, nothing submitted


class PartitionHeldElsewhere(DashScopeConfigError):
    """Another run holds the partition: its own finalize writes the manifest."""


def finalize_partition(
    catalog: str,
    output: str,
    *,
    holder: str | None = None,
    approval: Mapping[str, Any] | None = None,
    conn_id: str | None = None,
    fetch: Callable[[str], bytes] | None = None,
    review: bool = True,
    page_size: int = 500,
) -> dict[str, Any]:
    """Merge the chunks' rows into the manifest, give the partition back, price and report the run.

    :param catalog: the partition's catalog JSONL (path or URI).
    :param output: the partition's output folder (path or URI).
    :param holder: this run (``<dag_id>/<run_id>``): its lease is given back, and the images its
        tasks were charged for are this run's cost.
    :param approval: what the spend approval returned (``{"approved": false, ...}`` after a reject).
    :param conn_id: connection of the object store holding catalog and output.
    :param fetch: reads an image reference for the gallery's thumbnails (default: the gallery's).
    :param review: write the review gallery (``<output>/report.html`` and its pages).
    :param page_size: items per gallery page (at most 500).
    :returns: the summary (also written to ``<output>/summary.json``): counts, ``undone`` skus (the
        first 20), ``charged`` (this run's successful images by model and their cost),
        ``partition_charged`` (every run's), the approval, ``status`` and the gallery's ``report``.
    :raises PartitionHeldElsewhere: another run holds the partition's lease.
    """
    earlier = read_summary(output, conn_id=conn_id)
    if holder is not None and earlier.get("run") == holder and earlier.get("status") == OVER_LIMIT:
        return earlier
    lease = partition_lease(output, holder, conn_id=conn_id) if holder is not None else None
    current = lease.current() if lease is not None else None
    if lease is not None and current is not None and current.live and current.holder != lease.holder:
        raise PartitionHeldElsewhere(
            f"This run did not refine {output}: {current.holder} holds it; its own finalize writes the manifest."
        )
    items, bad = read_catalog(catalog, conn_id=conn_id)
    rows = merge_manifest(output, conn_id=conn_id)
    if lease is not None:
        lease.release()

    skus = [item.sku for item in items] + [row.sku for row in bad]
    undone = [sku for sku in skus if sku not in rows]
    statuses = Counter(rows[sku]["status"] if sku in rows else UNDONE for sku in skus)
    run_images: Counter[str] = Counter()
    partition_images: Counter[str] = Counter()
    for sku in skus:
        for model, owner in (rows.get(sku, {}).get("charged") or {}).items():
            partition_images[model] += 1
            run_images[model] += owner == holder
    rejected = approval is not None and approval.get("approved") is False
    counts = {
        "items": len(skus),
        "succeeded": statuses[SUCCEEDED],
        "failed": len(skus) - len(undone) - statuses[SUCCEEDED],
        "undone": len(undone),
        "adopted": sum(bool(rows[sku].get("adopted")) for sku in skus if sku in rows),
    }
    summary: dict[str, Any] = {
        "run": holder,
        "status": REJECTED if rejected else UNFINISHED if undone else FINISHED,
        **counts,
        "undone_skus": undone[:20],
        "manifest": manifest_uri(output),
        "summary": summary_uri(output),
        "charged": spend.charged(run_images),
        "partition_charged": spend.charged(partition_images),
        "approval": dict(approval) if approval is not None else None,
    }
    plan = earlier.get("plan") if earlier.get("run") == holder else None
    if review:
        by_sku = {item.sku: item for item in items}
        gallery = write_gallery(
            _gallery_items(skus, by_sku, rows, output, conn_id, spend.unit_costs(summary["partition_charged"])),
            output,
            count=len(skus),
            title=f"Catalog review: {output}",
            totals=_totals(summary, plan),
            fetch=fetch,
            page_size=page_size,
            conn_id=conn_id,
        )
        summary["report"] = gallery.index
        summary["report_pages"] = len(gallery.pages)
    write_summary(output, summary, conn_id=conn_id)
    # Per partition, like the rest of the catalog's lineage: the summary and the gallery's first page.
    lineage.report_hook_lineage(outputs=[summary_uri(output), *([summary["report"]] if review else [])])
    return {**summary, "plan": plan}


def _totals(summary: Mapping[str, Any], plan: Mapping[str, Any] | None) -> dict[str, Any]:
    """The gallery's headline: counts, what this run was charged, the estimate it was approved on."""
    charged = summary["charged"]
    totals: dict[str, Any] = {
        "items": summary["items"],
        "succeeded": summary["succeeded"],
        "failed": summary["failed"],
        "undone": summary["undone"],
        "run": summary["run"] or "",
        "status": summary["status"],
        "charged this run": f"{charged['currency']} {Decimal(charged['total']):,.2f}",
        "images charged this run": ", ".join(f"{n:,} {m}" for m, n in charged["images"].items()) or "none",
        "charged in all runs": f"{charged['currency']} {Decimal(summary['partition_charged']['total']):,.2f}",
    }
    if plan:
        totals["estimate"] = f"{plan.get('currency', 'CNY')} {Decimal(plan.get('total', '0')):,.2f}"
    totals["manifest"] = summary["manifest"]
    return totals


def _gallery_items(
    skus: list[str],
    by_sku: Mapping[str, CatalogItem],
    rows: Mapping[str, Mapping[str, Any]],
    output: str,
    conn_id: str | None,
    unit: Mapping[str, Decimal],
) -> Iterator[GalleryItem]:
    """One gallery card per sku, in catalog order, made as the gallery asks for them (never all at once)."""
    registry = partition_registry(output, conn_id=conn_id)
    for sku in skus:
        row = rows.get(sku, {})
        item = by_sku.get(sku)
        images: dict[str, str | None] = {}
        if item is not None:
            images["person"] = item.person_image_url
            if item.top_garment_url:
                images["top garment"] = item.top_garment_url
            if item.bottom_garment_url:
                images["bottom garment"] = item.bottom_garment_url
            images["coarse"] = item.coarse_image_url or _coarse_url(registry, item, row)
            images["refined"] = row.get("image")
        charged = row.get("charged") or {}
        cost = sum((unit.get(model, Decimal("0")) for model in charged), Decimal("0"))
        yield GalleryItem(
            sku=sku,
            status=row.get("status", UNDONE),
            images=images,
            code=row.get("code"),
            message=row.get("message"),
            cost=f"{cost:.2f}" if charged else None,
            task_ids=row.get("task_ids") or {},
        )


def _coarse_url(registry: Any, item: CatalogItem, row: Mapping[str, Any]) -> str | None:
    """The coarse stage's result URL (DashScope keeps it 24 hours), when the item had one."""
    if STAGE_COARSE not in (row.get("task_ids") or {}):
        return None
    try:
        entry = registry.get(item_key(item.sku, STAGE_COARSE))
    except Exception as exc:  # a thumbnail is not worth failing the run's report over
        log.warning("The coarse image of %s is not in the registry (%s); the gallery shows none.", item.sku, exc)
        return None
    return entry.image_url if entry is not None and entry.model != api.MODEL_REFINER else None
