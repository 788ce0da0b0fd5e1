"""TryOnReportOperator: a try-on run's cost and review gallery, with a link to it in the UI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator

from airflow_provider_aitryon.connection import DEFAULT_CONN_ID
from airflow_provider_aitryon.failures import airflow_errors
from airflow_provider_aitryon.links import ReviewGalleryLink, remember_result
from airflow_provider_aitryon.sources import DEFAULT_OSS_CONN_ID

if TYPE_CHECKING:
    from airflow.sdk import Context


class TryOnReportOperator(BaseOperator):
    """Report a try-on run: the images it was charged for by model and their cost, and its gallery.

    Writes ``<output_dir>/report.html`` (the person, garments, coarse and refined thumbnails, the
    status and the cost), opened by the "Review gallery" extra link. Returns ``charged`` (images by
    model, total and tier lines, as the catalog backfill reports them), ``images``, ``total_cny``
    and ``report``, plus ``extra``; each Asset outlet's event carries the same in its ``extra``.

    :param output_dir: the run's output folder or URI (templated).
    :param images: label → image reference for the gallery card, e.g. the person URL and the saved
        coarse and refined copies (templated; XComArgs resolve); empty ones are left out.
    :param results: model → the DashScope result of the run's task of that model, as
        `RefinerTaskSensor` returns it (templated; XComArgs resolve). Successful tasks are charged.
    :param name: the card's title (templated; default the run id).
    :param extra: more keys for the return value, e.g. the contact sheet's URI (templated).
    :param dashscope_conn_id: connection whose address rules the gallery's downloads follow.
    :param storage_conn_id: connection of the object store holding ``output_dir``.
    :param oss_conn_id: the ``oss`` connection that reads ``oss://`` images.
    :param review: write the gallery (default True).
    """

    template_fields: Sequence[str] = ("output_dir", "images", "results", "name", "extra")
    operator_extra_links = (ReviewGalleryLink(),)
    ui_color = "#e8f5e9"

    def __init__(
        self,
        *,
        output_dir: Any,
        images: Any,
        results: Any,
        name: str = "{{ run_id }}",
        extra: Any = None,
        dashscope_conn_id: str = DEFAULT_CONN_ID,
        storage_conn_id: str | None = None,
        oss_conn_id: str = DEFAULT_OSS_CONN_ID,
        review: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.output_dir = output_dir
        self.images = images
        self.results = results
        self.name = name
        self.extra = extra
        self.dashscope_conn_id = dashscope_conn_id
        self.storage_conn_id = storage_conn_id
        self.oss_conn_id = oss_conn_id
        self.review = review

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_aitryon.reports import run_report

        with airflow_errors():
            report = run_report(
                str(self.output_dir),
                name=str(self.name),
                # An empty reference (no bottom garment) is no card cell at all.
                images={str(k): str(v) for k, v in dict(self.images or {}).items() if v},
                results=dict(self.results or {}),
                fetch=gallery_fetcher(self.dashscope_conn_id, self.storage_conn_id, self.oss_conn_id, self.log)
                if self.review
                else None,
                conn_id=self.storage_conn_id,
                review=self.review,
            )
        report.update(dict(self.extra or {}))
        remember_result(self, report)
        charged = report["charged"]
        self.log.info(
            "This run was charged %s %s for %s; review: %s",
            charged["currency"], charged["total"], charged["images"] or "nothing", report.get("report"),
        )  # fmt: skip
        emit_asset_extra(context, self.outlets, report)
        return report


def gallery_fetcher(dashscope_conn_id: str, storage_conn_id: str | None, oss_conn_id: str, log: Any) -> Any:
    """The gallery's image reader, under the connection's address rules (as pre-flight's).

    :param dashscope_conn_id: the connection whose base URL and ``allow_private_inputs`` decide
        which hosts images may come from.
    :param storage_conn_id: connection of the object store holding saved images.
    :param oss_conn_id: the ``oss`` connection that reads ``oss://`` images.
    :param log: where to say that the connection could not be read.
    """
    from airflow_provider_aitryon.gallery import default_fetcher
    from airflow_provider_aitryon.hooks.dashscope import DashScopeHook
    from airflow_provider_aitryon.preflight import input_policy

    try:
        policy = input_policy(DashScopeHook(dashscope_conn_id=dashscope_conn_id).settings)
    except Exception as exc:  # the report still gets written, with public images only
        log.warning("The gallery reads only public images: %s", exc)
        policy = None
    return default_fetcher(policy=policy, conn_id=storage_conn_id, oss_conn_id=oss_conn_id)


def emit_asset_extra(context: Context, outlets: Any, values: dict[str, Any], keys: Sequence[str] | None = None) -> None:
    """Put ``values`` (or only ``keys`` of them) into the event ``extra`` of each Asset outlet.

    A DAG scheduled on the Asset learns from the event what landed, what it cost and where to review it.

    :param context: the task's context (its ``outlet_events``).
    :param outlets: the operator's outlets; only Assets get events.
    :param values: JSON-safe values.
    :param keys: which of them to put (all by default).
    """
    events = context.get("outlet_events") if hasattr(context, "get") else None
    if events is None:
        return
    extra = {key: values.get(key) for key in keys} if keys is not None else dict(values)
    for outlet in outlets or []:
        if isinstance(outlet, Asset):
            events[outlet].extra.update(extra)
