"""A single try-on run's report: what it was charged and its review gallery.

The pipeline DAG's ``report_cost`` (`operators.report.TryOnReportOperator`) calls `run_report`; a
catalog partition's report is `catalog.finalize`. Both price with `spend.charged` and draw with
`gallery.write_gallery`, so a run and a partition read alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from airflow_provider_aitryon import spend
from airflow_provider_aitryon.gallery import GalleryItem, write_gallery
from airflow_provider_aitryon.models import TaskStatus


def charged_images(results: Mapping[str, Mapping[str, Any] | None]) -> dict[str, int]:
    """Successful images by model, from the DashScope results of a run's tasks.

    :param results: model → the task's result as a sensor returns it (``task_status``, ``usage``);
        None for a task that did not run.
    """
    images: dict[str, int] = {}
    for model, result in results.items():
        if not isinstance(result, Mapping):
            continue
        status = result.get("task_status") or result.get("status") or TaskStatus.SUCCEEDED.value
        if status != TaskStatus.SUCCEEDED.value:
            continue  # DashScope charges successful tasks only
        usage = result.get("usage") or {}
        images[model] = images.get(model, 0) + int(usage.get("image_count", 1) or 0)
    return images


def run_report(
    folder: str,
    *,
    name: str,
    images: Mapping[str, str | None],
    results: Mapping[str, Mapping[str, Any] | None],
    fetch: Callable[[str], bytes] | None = None,
    conn_id: str | None = None,
    review: bool = True,
) -> dict[str, Any]:
    """Price a run's successful tasks and write its one-card gallery ``<folder>/report.html``.

    :param folder: the run's output folder (path or URI).
    :param name: what the card is called (the run id).
    :param images: label → image reference, in the card's order (person, garments, coarse, refined).
    :param results: model → the DashScope result of the run's task of that model.
    :param fetch: reads an image reference for the thumbnails (default: the gallery's).
    :param conn_id: connection of the object store holding ``folder``.
    :param review: write the gallery.
    :returns: ``charged`` (images by model and their cost), ``images`` and ``total_cny`` (the same,
        short) and ``report`` (the gallery's URI, when written).
    """
    cost = spend.charged(charged_images(results))
    report: dict[str, Any] = {"images": cost["images"], "total_cny": cost["total"], "charged": cost}
    if review:
        ok = all(isinstance(r, Mapping) for r in results.values())
        status = "succeeded" if ok and images.get("refined") else "failed"
        total = Decimal(cost["total"])
        gallery = write_gallery(
            [GalleryItem(sku=name, status=status, images=dict(images), cost=f"{total:.2f}",
                         task_ids={m: str(r.get("task_id")) for m, r in results.items() if isinstance(r, Mapping)})],
            folder,
            count=1,
            title=f"Try-on review: {name}",
            totals={
                "items": 1,
                "succeeded": int(status == "succeeded"),
                "failed": int(status != "succeeded"),
                "undone": 0,
                "charged": f"{cost['currency']} {total:,.2f}",
                "images charged": ", ".join(f"{n:,} {m}" for m, n in cost["images"].items()) or "none",
            },
            fetch=fetch,
            conn_id=conn_id,
        )  # fmt: skip
        report["report"] = gallery.index
    return report
